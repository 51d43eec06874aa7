"""The VPN gateway between two sites' VPCs (role ``vpn``, Docker mode): WireGuard over the
underlay, as a cloud's VPN gateway joins VPCs in different regions.

Each site's gateway is a member of its site's VPC (VXLAN) and holds a WireGuard interface
``wg0`` whose peer is the other site's gateway, at its underlay address; the other site's
VPC subnets are routed into the tunnel, and the VPC's members route them to this gateway
(``infra/container.py``). On the underlay between the sites only WireGuard's encrypted UDP
datagrams pass, never a VPC address.

* **Kernel or userspace.** ``ip link add wg0 type wireguard`` where the kernel has the
  module; otherwise ``wireguard-go`` (userspace, over ``/dev/net/tun``, the same protocol).
  The log and ``/healthz`` say which ran.
* **Keys.** The lab derives each gateway's private key from ``D11_VPN_SECRET`` and its
  name (SHA-256, which WireGuard clamps into a Curve25519 key), so each side knows its
  peer's public key without an exchange; a real deployment would generate and swap them.
* **Health.** ``GET /healthz`` on ``D11_ADDRESS:D11_PORT`` answers 200 once a handshake
  with the peer is under three minutes old (``wg show wg0 latest-handshakes``); the peer is
  kept warm with a keepalive every 5 s.

Settings: ``D11_VPN_PEER`` (the peer gateway's name, underlay address), ``D11_VPN_REMOTE``
(the subnets behind it), ``D11_VPN_TUNNEL`` (this end's tunnel address, a /30).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from infra.container import serve_health, sh

LISTEN_PORT = 51820
KEEPALIVE_S = 5
FRESH_S = 180  # WireGuard re-keys every two minutes: an older handshake is a dead tunnel


def private_key(secret: str, name: str) -> str:
    return base64.b64encode(hashlib.sha256(f"{secret}:{name}".encode()).digest()).decode()


def public_key(private: str) -> str:
    return sh("wg", "pubkey", stdin=private + "\n").strip()


def make_interface() -> str:
    """wg0, from the kernel's module if it has one, else from wireguard-go; which one."""
    kernel = subprocess.run(["ip", "link", "add", "wg0", "type", "wireguard"],
                            capture_output=True, text=True)  # fmt: skip
    if kernel.returncode == 0:
        return "kernel"
    if shutil.which("wireguard-go") is None:
        raise SystemExit(f"vpn: no WireGuard: {kernel.stderr.strip()}; wireguard-go missing")
    sh("wireguard-go", "wg0")  # creates the TUN device and runs on in the background
    return "wireguard-go (userspace)"


def set_up(env: dict[str, str]) -> str:
    name = env["D11_SERVICE"]
    peer_name, _, peer_address = env["D11_VPN_PEER"].partition(",")
    remote = [s.strip() for s in env["D11_VPN_REMOTE"].split(",") if s.strip()]
    tunnel = env["D11_VPN_TUNNEL"]
    secret = env.get("D11_VPN_SECRET", "double-11-lab-vpn")
    kind = make_interface()
    key_file = "/run/wg0.key"
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(private_key(secret, name) + "\n")
    own = ipaddress.ip_interface(tunnel)
    peer_ip = next(str(h) for h in own.network.hosts() if h != own.ip)  # the /30's other end
    sh("wg", "set", "wg0", "listen-port", str(LISTEN_PORT), "private-key", key_file,
       "peer", public_key(private_key(secret, peer_name)),
       "endpoint", f"{peer_address}:{LISTEN_PORT}",
       "allowed-ips", ",".join([*remote, f"{peer_ip}/32"]),
       "persistent-keepalive", str(KEEPALIVE_S))  # fmt: skip
    sh("ip", "addr", "add", tunnel, "dev", "wg0")
    sh("ip", "link", "set", "wg0", "up")
    for subnet in remote:
        sh("ip", "route", "replace", subnet, "dev", "wg0")
    return kind


def handshake_age() -> float | None:
    out = subprocess.run(["wg", "show", "wg0", "latest-handshakes"], capture_output=True,
                         text=True).stdout.split()  # fmt: skip
    stamps = [int(x) for x in out[1::2] if x.isdigit() and int(x) > 0]
    return time.time() - max(stamps) if stamps else None


def health(kind: str) -> Callable[[], Awaitable[tuple[bool, str]]]:
    async def check() -> tuple[bool, str]:
        age = await asyncio.to_thread(handshake_age)
        if age is None:
            return False, f"wireguard {kind}, no handshake yet\n"
        return age < FRESH_S, f"wireguard {kind}, last handshake {age:.0f} s ago\n"

    return check


def main() -> None:
    env = dict(os.environ)
    kind = set_up(env)
    print(f"vpn: wg0 up ({kind}), peer {env['D11_VPN_PEER']}, routes {env['D11_VPN_REMOTE']}",
          flush=True)  # fmt: skip
    asyncio.run(serve_health(env["D11_ADDRESS"], int(env["D11_PORT"]), health(kind)))


if __name__ == "__main__":
    sys.exit(main())
