# The one Double-11 image: every service of compose.yaml (and of k8s/base) runs from it.
#
#   docker compose build                         official Python base, packages from PyPI
#   docker build --build-arg BASE_IMAGE=d11-base:bookworm-slim .   a local base (./d11 docker)
#
# Two stages: `build` makes the venv from docker/requirements.lock (the run-time pins only,
# rendered by ./d11 compose; no test or dev tools), the final stage copies the venv alone,
# so neither the wheels nor pip end up in the image. With wheels in docker/wheels/ the
# build installs from them alone (offline); otherwise from PyPI.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
# iproute2 (VXLAN devices, routes), iptables and conntrack (the NAT gateway), wireguard-go
# and wireguard-tools (the VPN between the sites, userspace: no kernel module needed), bird2
# (BGP at the sites' borders and the ISPs' routers). A Debian
# base brings its own Python 3.11; the official image has one in /usr/local.
RUN set -eux; \
    need="iproute2 iptables conntrack wireguard-go wireguard-tools bird2"; \
    command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
      || need="$need python3 python3-venv"; \
    if ! dpkg -s $need >/dev/null 2>&1; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need; \
      apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/app \
    D11_MODE=docker D11_RUN_DIR=/var/lib/d11/run D11_PKI_DIR=/var/lib/d11/pki

FROM base AS build
COPY docker/requirements.lock /tmp/requirements.lock
COPY docker/wheels/ /tmp/wheels/
RUN set -eux; \
    python3 -m venv /opt/venv; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
      pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /tmp/wheels -r /tmp/requirements.lock; \
    else \
      pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.lock; \
    fi; \
    pip uninstall --yes --quiet pip setuptools; \
    # Some wheels ship extension modules with their symbol tables (uvloop's is 13 MB, 3 MB
    # stripped): strip them where binutils can be had; an offline build skips this.
    if command -v strip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq --no-install-recommends binutils >/dev/null; }; then \
      find /opt/venv -name '*.so' -exec strip --strip-unneeded {} +; \
    fi; \
    find /opt/venv -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
      -exec rm -rf {} +
# The project without the wheels, its bytecode compiled once here: the services cannot
# write bytecode (PYTHONDONTWRITEBYTECODE), so without it every restart compiles again.
COPY . /app
RUN rm -rf /app/docker/wheels && python -m compileall -q -j 0 /app

FROM base
# Services run as d11. Containers that set up networking (VXLAN, routes, NAT) start as
# root with NET_ADMIN and drop to d11 before the service starts (infra/container.py).
RUN useradd --system --uid 1111 --user-group --create-home d11 \
    && mkdir -p /var/lib/d11/run /var/lib/d11/pki /var/lib/d11/shared && chown -R d11:d11 /var/lib/d11
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=d11:d11 /app /app
WORKDIR /app
USER d11
ENTRYPOINT ["python", "-m", "infra.container"]
