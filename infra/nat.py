"""The NAT gateway (role ``nat``, Docker mode): the region's public entry in front of the
data centre, done by the kernel (iptables + conntrack), as a cloud NAT gateway or SLB does.

* **DNAT**: every public address in ``D11_NAT_PUBLIC`` forwards the ports of
  ``D11_NAT_FORWARD`` (``443=198.18.0.10:8443``) to the private address behind it; an
  entry naming its public address (``198.19.0.14:443=198.18.0.14:8443``) applies to that
  one alone, so several gateways each get their own entry addresses. The
  client's address is kept, so the API gateway sees the phone (its span records client,
  public and private addresses), and the gateway's replies route back through here.
* **SNAT**: hosts of the ``D11_NAT_MASQUERADE`` subnets going out to the internet leave
  with the NAT's public address (MASQUERADE).

``conntrack -L`` in this container shows every translation. ``python -m infra.nat --check``
is the container's health check: each rule must be in place.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

from infra.container import batch, interface_of, sh


def rules(env: Mapping[str, str], internet_dev: str) -> list[list[str]]:
    """The iptables rules (``-t nat`` arguments without the -A/-C verb)."""
    out = []
    for public in filter(None, (a.strip() for a in env.get("D11_NAT_PUBLIC", "").split(","))):
        for forward in filter(None, env.get("D11_NAT_FORWARD", "").split(",")):
            entry, _, target = forward.strip().partition("=")
            only, _, port = entry.rpartition(":")
            if only and only != public:
                continue
            out.append(["PREROUTING", "-d", public, "-p", "tcp", "--dport", port,
                        "-j", "DNAT", "--to-destination", target.strip()])  # fmt: skip
    for subnet in filter(None, env.get("D11_NAT_MASQUERADE", "").split(",")):
        out.append(["POSTROUTING", "-s", subnet.strip(), "-o", internet_dev, "-j", "MASQUERADE"])
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own = os.environ["D11_ADDRESS"]
    dev, prefix = interface_of(own)
    wanted = rules(os.environ, dev)
    if argv == ["--check"]:
        for rule in wanted:
            sh("iptables", "-t", "nat", "-C", rule[0], *rule[1:])
        return
    aliases = [a.strip() for a in os.environ.get("D11_NAT_PUBLIC", "").split(",") if a.strip()]
    batch("ip", (f"addr add {a}/{prefix} dev {dev}" for a in aliases if a != own))
    for rule in wanted:
        sh("iptables", "-t", "nat", "-A", rule[0], *rule[1:])
    print(f"nat: {len(wanted)} rules on {dev} ({own})", flush=True)
    # The kernel does the work; this process only holds the container open until stopped.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)


if __name__ == "__main__":
    main()
