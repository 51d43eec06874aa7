#!/usr/bin/env bash
# A Debian bookworm base image made without a registry: debootstrap into a folder, then
# `docker import` it. Used where `FROM python:3.11-slim` cannot be pulled (no registry);
# real users never need it. Usage: docker/base-image.sh [IMAGE]   (default d11-base:bookworm-slim)
set -euo pipefail
image="${1:-d11-base:bookworm-slim}"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image is there"; exit 0
fi
# The machine's own Debian mirror (deb822 or one-line sources), else deb.debian.org.
mirror="$(grep -hoE '^URIs: *http[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | head -1 | sed 's/^URIs: *//')"
mirror="${mirror:-http://deb.debian.org/debian}"
dir="$(mktemp -d /var/tmp/d11-base.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
debootstrap --variant=minbase \
  --include=python3,python3-venv,iproute2,iptables,conntrack,wireguard-go,wireguard-tools,bird2,ca-certificates \
  bookworm "$dir" "$mirror" >/dev/null
rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb
# As the official -slim images: no documentation, manual pages or translations (a third of
# a minimal Debian), and dpkg told not to bring them back.
rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
  "$dir"/usr/share/locale/* "$dir"/usr/share/lintian
# glibc's iconv modules: nothing here converts charsets through iconv (Python has its own).
rm -rf "$dir"/usr/lib/*-linux-gnu/gconv
cat > "$dir"/etc/dpkg/dpkg.cfg.d/d11-slim <<'CFG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
tar -C "$dir" -c . | docker import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "base image $image made from $mirror"
