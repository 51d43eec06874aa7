#!/usr/bin/env bash
# The Debian packages the tests drive as outside peers, installed when missing (a warm
# machine skips apt). Run by `./d11 test` (and so by .ci/run) before pytest:
#   a browser for the trace viewer; DNS tools (dig, named-checkzone; BIND and dnsperf);
#   Caucho's Hessian (the Java oracle for our Hessian 2 codec) and a JDK to run it;
#   PostgreSQL (the DATABASE_URL option); nginx (`nginx -t` and side-by-side comparisons
#   for the gateway) and wrk (its benchmark); Docker mode's engine, Compose v1, debootstrap
#   (a base image without a registry), tshark (the overlay on the wire) and conntrack;
#   BIRD 2 (`bird -p` checks the BGP routers' rendered configurations).
set -euo pipefail
packages=(chromium dnsutils bind9-utils bind9 dnsperf libhessian-java postgresql nginx wrk
          docker.io docker-compose debootstrap tshark conntrack iptables rpcbind bird2)
command -v javac >/dev/null 2>&1 || packages+=(default-jdk-headless)
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)  # `kubectl kustomize`
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo)
else
  echo "d11: the tests need these Debian packages: ${missing[*]}" >&2
  echo "d11: install them with: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 0  # the tests that need them will say what is missing
fi
echo "d11: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Install servers without starting them: tests start their own on loopback.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  "${as_root[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  trap '"${as_root[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
