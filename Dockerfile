# The one Double-11 image: every service of compose.yaml runs from it.
#
#   docker compose build                         official Python base, packages from PyPI
#   docker build --build-arg BASE_IMAGE=d11-base:bookworm .   a local base (./d11 docker)
#
# With wheels in docker/wheels/ (`pip wheel -r requirements.lock -w docker/wheels`) the
# build installs from them alone (offline); otherwise from PyPI.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# iproute2 (VXLAN devices, routes), iptables and conntrack (the NAT gateway). A Debian
# base brings its own Python 3.11; the official image has one in /usr/local.
RUN set -eux; \
    need="iproute2 iptables conntrack"; \
    command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
      || need="$need python3 python3-venv"; \
    if ! dpkg -s $need >/dev/null 2>&1; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need; \
      rm -rf /var/lib/apt/lists/*; \
    fi

ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/app \
    D11_MODE=docker D11_RUN_DIR=/var/lib/d11/run D11_PKI_DIR=/var/lib/d11/pki
COPY requirements.lock /tmp/requirements.lock
COPY docker/wheels/ /tmp/wheels/
RUN set -eux; \
    python3 -m venv /opt/venv; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
      pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /tmp/wheels -r /tmp/requirements.lock; \
    else \
      pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.lock; \
    fi; \
    rm -rf /tmp/wheels

# Services run as d11. Containers that set up networking (VXLAN, routes, NAT) start as
# root with NET_ADMIN and drop to d11 before the service starts (infra/container.py).
RUN useradd --system --uid 1111 --user-group --create-home d11 \
    && mkdir -p /var/lib/d11/run /var/lib/d11/pki /var/lib/d11/shared && chown -R d11:d11 /var/lib/d11
WORKDIR /app
COPY --chown=d11:d11 . /app
USER d11
ENTRYPOINT ["python", "-m", "infra.container"]
