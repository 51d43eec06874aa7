"""A router (Docker mode): with ``D11_BGP_ASN`` a BGP router (role ``router``), BIRD 2
speaking eBGP as the border of a site or the edge of an ISP; without, a VPC's router
between its AZ subnets (role ``vpc-router``), where the kernel forwards between the VXLAN
devices ``infra/container.py`` gave it, one per AZ segment, and nothing else is needed.

* **Border routers** (one per site) sit on the site's public edge network, where its NAT
  holds the entry addresses, and on the peering LAN (``ix``). Each announces its site's
  public prefix to both ISPs and nothing else (no transit: a site never carries one ISP's
  traffic to the other).
* **ISP routers** sit on the access network, where the phones and the internet's other
  hosts are, and on the peering LAN. Each announces its customers' blocks (the phones of
  that ISP) and passes on what it learns (transit).

What the routers learn goes into the kernel's table (BIRD's ``kernel`` protocol), so the
packets follow the routes BGP chose; what a router announces of its own is announced only
(its hosts are on a connected network). Timers are short (keepalive 3 s, hold 9 s) so a
border that stops is withdrawn within seconds even when it dies without a word.

Settings: ``D11_BGP_ASN``, ``D11_BGP_NEIGHBORS`` (``name=address/asn,...``),
``D11_BGP_ORIGINATE`` (prefixes announced), ``D11_BGP_TRANSIT`` (``1``: re-announce what
is learned). ``GET /healthz`` on ``D11_ADDRESS:D11_PORT`` answers 200 while a BGP session
is established, with ``birdc show protocols`` as its body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

from infra.container import serve_health

CONFIG = "/run/bird.conf"
SOCKET = "/run/bird.ctl"
HOLD_S, KEEPALIVE_S = 9, 3


@dataclass(frozen=True)
class Neighbor:
    name: str
    address: str
    asn: int

    @property
    def protocol(self) -> str:  # BIRD names: letters, digits and underscores
        return re.sub(r"\W", "_", self.name)


def neighbors(spec: str) -> list[Neighbor]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition("=")
        address, _, asn = rest.partition("/")
        out.append(Neighbor(name, str(ipaddress.IPv4Address(address)), int(asn)))
    return out


def config(asn: int, router_id: str, peers: list[Neighbor], originate: list[str],
           transit: bool) -> str:  # fmt: skip
    """bird.conf for one router."""
    prefixes = [str(ipaddress.IPv4Network(p)) for p in originate]
    statics = "".join(f"  route {p} blackhole;\n" for p in prefixes)
    export = "all" if transit else 'where proto = "own_prefixes"'
    sessions = "".join(
        f"protocol bgp {p.protocol} from peers {{\n"
        f'  description "{p.name}";\n'
        f"  neighbor {p.address} as {p.asn};\n"
        f"}}\n"
        for p in peers
    )
    return (
        f"router id {router_id};\n"
        "log stderr all;\n"
        "protocol device { scan time 5; }\n"
        # Learned routes into the kernel; our own announcements stay in BIRD (blackhole
        # routes that only stand for the connected prefix they announce).
        "protocol kernel {\n"
        "  ipv4 { import none; export where source = RTS_BGP; };\n"
        "}\n"
        f"protocol static own_prefixes {{\n  ipv4;\n{statics}}}\n"
        "template bgp peers {\n"
        f"  local as {asn};\n"
        f"  hold time {HOLD_S}; keepalive time {KEEPALIVE_S};\n"
        "  connect retry time 2; error wait time 1, 10;\n"
        f"  ipv4 {{ import all; export {export}; }};\n"
        "}\n"
        f"{sessions}"
    )


def birdc(*command: str) -> str:
    result = subprocess.run(["birdc", "-s", SOCKET, *command], capture_output=True,
                            text=True, timeout=5)  # fmt: skip
    return result.stdout


def established(protocols: str) -> list[str]:
    """The BGP sessions ``show protocols`` lists as Established."""
    return [line.split()[0] for line in protocols.splitlines()
            if " BGP " in f" {line} " and line.rstrip().endswith("Established")]  # fmt: skip


async def sessions_up() -> tuple[bool, str]:
    shown = await asyncio.to_thread(birdc, "show", "protocols")
    return bool(established(shown)), shown or "bird: no answer\n"


def write_config(env: dict[str, str]) -> None:
    peers = neighbors(env["D11_BGP_NEIGHBORS"])
    originate = [p for p in env.get("D11_BGP_ORIGINATE", "").split(",") if p.strip()]
    text = config(int(env["D11_BGP_ASN"]), env["D11_ADDRESS"], peers, originate,
                  env.get("D11_BGP_TRANSIT", "") == "1")  # fmt: skip
    with open(CONFIG, "w") as f:
        f.write(text)
    print(f"router: AS{env['D11_BGP_ASN']}, peers {', '.join(p.name for p in peers)}, "
          f"announcing {', '.join(originate) or 'nothing of its own'}", flush=True)  # fmt: skip


async def run(env: dict[str, str]) -> int:
    bird = await asyncio.create_subprocess_exec("bird", "-f", "-c", CONFIG, "-s", SOCKET)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # BIRD closes its sessions with a Cease
        loop.add_signal_handler(sig, bird.send_signal, signal.SIGTERM)
    health = asyncio.create_task(serve_health(env["D11_ADDRESS"], int(env["D11_PORT"]),
                                              sessions_up))  # fmt: skip
    code = await bird.wait()  # a BIRD that dies takes the container down: the engine restarts it
    health.cancel()
    return code


def forwarding_state() -> tuple[bool, str]:
    """A VPC router is up while the kernel forwards and its segments' devices are up."""
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        on = f.read().strip() == "1"
    links = subprocess.run(["ip", "-br", "addr", "show", "type", "vxlan"],
                           capture_output=True, text=True).stdout  # fmt: skip
    up = on and bool(links) and all(" DOWN " not in f" {ln} " for ln in links.splitlines())
    return up, f"ip_forward {'on' if on else 'off'}\n{links}"


async def forwarding() -> tuple[bool, str]:
    return await asyncio.to_thread(forwarding_state)


def main() -> int:
    env = dict(os.environ)
    if "D11_BGP_ASN" not in env:
        print("router: forwarding between the VPC's AZ subnets", flush=True)
        asyncio.run(serve_health(env["D11_ADDRESS"], int(env["D11_PORT"]), forwarding))
        return 0
    write_config(env)
    return asyncio.run(run(env))


if __name__ == "__main__":
    sys.exit(main())


# -- ./d11 bgp: what each router says ----------------------------------------------------------
_ROUTE = re.compile(r"^(\S+)?\s+(unicast|blackhole|unreachable)\s+\[(\w+)[^\]]*\]\s*(\*)?")


def parse_protocols(text: str) -> list[dict[str, str]]:
    """``birdc show protocols``: the BGP sessions, each with its state and info."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[1] == "BGP":
            out.append({"name": parts[0], "state": parts[3],
                        "info": " ".join(parts[5:]) if len(parts) > 5 else ""})  # fmt: skip
    return out


def parse_routes(text: str) -> list[dict[str, object]]:
    """``birdc show route all``: each route with its prefix, source, whether BIRD chose it,
    next hop and AS path."""
    routes: list[dict[str, object]] = []
    prefix = ""
    for line in text.splitlines():
        if m := _ROUTE.match(line):
            prefix = m.group(1) or prefix
            routes.append({"prefix": prefix, "kind": m.group(2), "from": m.group(3),
                           "best": bool(m.group(4)), "via": "", "as_path": []})  # fmt: skip
        elif routes and line.strip().startswith("via "):
            routes[-1]["via"] = line.split()[1]
        elif routes and line.strip().startswith("BGP.as_path:"):
            routes[-1]["as_path"] = [int(a) for a in line.split(":", 1)[1].split()]
    return routes


def show(as_json: bool) -> int:
    """Each router's sessions and routes, asked of its BIRD in its container."""
    import json

    from infra import dockerlab
    from infra import topology as topo

    t = topo.load(mode="docker")
    running = dockerlab.containers({"COMPOSE_PROJECT_NAME": dockerlab.PROJECT})
    report: dict[str, dict[str, object]] = {}
    for host in t.by_role("router"):
        c = running.get(host.name)
        if c is None or not c["State"]["Running"]:
            report[host.name] = {"running": False, "sessions": [], "routes": []}
            continue

        def ask(*command: str, cid: str = c["Id"]) -> str:
            return subprocess.run(["docker", "exec", cid, "birdc", "-s", SOCKET, *command],
                                  capture_output=True, text=True, timeout=20).stdout  # fmt: skip

        env = t.environment(host)
        report[host.name] = {
            "running": True, "asn": int(env["D11_BGP_ASN"]), "site": host.site,
            "sessions": parse_protocols(ask("show", "protocols")),
            "routes": parse_routes(ask("show", "route", "all")),
        }  # fmt: skip
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    for name, r in report.items():
        if not r["running"]:
            print(f"{name}: not running\n")
            continue
        print(f"{name} (AS{r['asn']}{', site ' + str(r['site']) if r['site'] else ''})")
        for s in r["sessions"]:  # type: ignore[attr-defined]
            print(f"  session {s['name']:<14} {s['state']:<6} {s['info']}")
        for rt in r["routes"]:  # type: ignore[attr-defined]
            path = " ".join(map(str, rt["as_path"])) or "(own)"
            mark = "*" if rt["best"] else " "
            print(f"  {mark} {rt['prefix']:<18} {rt['kind']:<9} via {rt['via'] or '-':<15} "
                  f"AS path {path}")  # fmt: skip
        print()
    return 0
