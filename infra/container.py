"""Docker mode's entry point: set up the container's network as the topology says, then
become the unprivileged ``d11`` user and run the host's module.

``python -m infra.container`` reads ``D11_SERVICE`` (the host, or ``phone``) and the Docker
view of the topology (``D11_MODE=docker``), and before the service starts:

* **VPC overlay.** A host with ``vpc:`` gets a kernel VXLAN device (VNI = the VPC's id,
  UDP 4789) over its underlay address, with its overlay address on it. Peers are known
  from the topology, so every entry is static (L2 population, no multicast): each peer's
  MAC → its underlay address in the FDB, its overlay IP → MAC in the neighbour table, and
  an all-zeros FDB entry per peer for what little is flooded.
* **Routes through the NAT.** A host on the underlay alone reaches the internet network
  through the NAT gateway's private leg (replies to DNATed clients, and VPC hosts going out).
* **Swarm** (``D11_FABRIC``): the lab's networks themselves are built first, over Swarm's
  overlay (infra/fabric.py), since Swarm cannot give a task a fixed address.
* **Phones.** The phone container holds one address block per ISP/region on its internet
  leg, so the GSLBs place each simulated phone by its own source address.

Only containers given ``NET_ADMIN`` start as root; the service itself never runs as root,
except the NAT gateway, whose job is the kernel's NAT table.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pwd
import runpy
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable

from infra import topology as topo
from infra.topology import Host, Topology, router_address
from infra.zygote import name_process

VXLAN_PORT = 4789
TUN = "/dev/net/tun"
RUN_AS = "d11"


def sh(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"container: {' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


async def serve_health(address: str, port: int,
                       check: Callable[[], Awaitable[tuple[bool, str]]]) -> None:  # fmt: skip
    """``GET /healthz`` for an appliance whose work a kernel device or a daemon does (the
    VPN, the BGP routers): ``check`` says whether it is up and what to say; HTTP/1.0, one
    request per connection, as the health check asks."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            up, text = await check()
            body = text.encode()
            ok = up and line.startswith(b"GET /healthz ")
            status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(
                b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, subprocess.SubprocessError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, address, port)
    async with server:
        await server.serve_forever()


def batch(tool: str, commands: Iterable[str]) -> None:
    """Run many ``ip`` or ``bridge`` commands in one process (``-batch``): a phone container
    adds ~120 addresses, a VPC member two FDB entries per peer."""
    script = "".join(f"{c}\n" for c in commands)
    if script:
        sh(tool, "-batch", "-", stdin=script)


def interface_of(address: str) -> tuple[str, int]:
    """The interface holding ``address`` (Docker names them eth0, eth1… in no set order),
    and the address's prefix length there."""
    for link in json.loads(sh("ip", "-j", "-4", "addr", "show")):
        for info in link.get("addr_info", []):
            if info.get("local") == address:
                return str(link["ifname"]), int(info["prefixlen"])
    raise SystemExit(f"container: no interface holds {address}")


def vxlan_mac(vni: int, overlay: str) -> str:
    """A stable, locally administered MAC for a VPC member: 02, the VNI's low byte, and the
    overlay address. Peers compute each other's without asking."""
    octets = [0x02, vni & 0xFF, *ipaddress.IPv4Address(overlay).packed]
    return ":".join(f"{o:02x}" for o in octets)


def segment_members(t: Topology, vpc: str, vni: int) -> list[tuple[Host, str]]:
    """Who is on one VXLAN segment of a VPC, with the address each has there (a VPC
    router is on every segment of its VPC, at the segment's first address)."""
    out = []
    for peer in t.hosts:
        if peer.vpc is None or peer.vpc[0] != vpc:
            continue
        if peer.role == "vpc-router":
            out += [(peer, router_address(net)) for v, net in t.segments(vpc).values()
                    if v == vni]  # fmt: skip
        elif t.segment(peer)[0] == vni:
            out.append((peer, peer.vpc[1]))
    return out


def vxlan_commands(t: Topology, host: Host) -> tuple[list[str], list[str]]:
    """``ip`` commands and ``bridge`` commands that put ``host`` on its VPC's overlay: the
    segment of its AZ (a VPC router: every segment, each on its own device)."""
    assert host.vpc is not None
    name, overlay = host.vpc
    if host.role == "vpc-router":
        mine = [(vni, net, router_address(net)) for vni, net in t.segments(name).values()]
    else:
        vni, net = t.segment(host)
        mine = [(vni, net, overlay)]
    local = host.addresses["underlay"]
    ip: list[str] = []
    bridge: list[str] = []
    for vni, net, address in mine:
        dev = f"vxlan{vni}"
        ip += [
            f"link add {dev} type vxlan id {vni} local {local} dev {interface_of(local)[0]} "
            f"dstport {VXLAN_PORT} nolearning",
            f"link set {dev} address {vxlan_mac(vni, address)}",
            f"addr add {address}/{net.prefixlen} dev {dev}",
            f"link set {dev} up",
        ]
        for peer, peer_address in segment_members(t, name, vni):
            if peer is host:
                continue
            mac, underlay = vxlan_mac(vni, peer_address), peer.addresses["underlay"]
            bridge.append(f"fdb append 00:00:00:00:00:00 dev {dev} dst {underlay}")
            bridge.append(f"fdb add {mac} dev {dev} dst {underlay} self permanent")
            ip.append(f"neigh add {peer_address} lladdr {mac} dev {dev} nud permanent")
    return ip, bridge


def next_hop(t: Topology, host: Host, target: Host) -> tuple[str, str]:
    """How a VPC member reaches another member of its VPC: directly on its own segment,
    else through the VPC's router (its address on the member's segment); (via, device)."""
    assert host.vpc is not None and target.vpc is not None
    if host.role == "vpc-router":  # on every segment: straight to the target's
        return target.vpc[1], f"vxlan{t.segment(target)[0]}"
    vni, net = t.segment(host)
    if t.segment(target)[0] == vni or t.vpc_router(host.vpc[0]) is None:
        return target.vpc[1], f"vxlan{vni}"
    return router_address(net), f"vxlan{vni}"


def segment_routes(t: Topology, host: Host) -> list[str]:
    """A member of a VPC with AZ subnets sends the other AZs' subnets to the VPC's router."""
    if host.vpc is None or host.role == "vpc-router" or t.vpc_router(host.vpc[0]) is None:
        return []
    vni, net = t.segment(host)
    router = router_address(net)
    return [f"route add {other} via {router} dev vxlan{vni}"
            for v, other in t.segments(host.vpc[0]).values() if v != vni]  # fmt: skip


def nat_route(t: Topology, host: Host) -> list[str]:
    """A route to the internet network through the NAT of the host's site (the first NAT
    for a host without one), for hosts on the underlay alone."""
    addresses = host.addresses
    if "internet" in addresses or "underlay" not in addresses or host.role == "nat":
        return []
    nats = t.by_role("nat")
    if not nats:
        return []
    nat = next((n for n in nats if n.site and n.site == host.site), nats[0])
    internet = t.networks["internet"]["subnet"]
    return [f"route add {internet} via {nat.addresses['underlay']}"]


def vpn_routes(t: Topology, host: Host) -> list[str]:
    """A VPC member sends the other sites' VPC subnets to its VPC's VPN gateway (through
    the VPC's router from another AZ's subnet)."""
    if host.vpc is None or host.role == "vpn":
        return []
    out = []
    for vpn in t.by_role("vpn"):
        if vpn.vpc is not None and vpn.vpc[0] == host.vpc[0]:
            via, dev = next_hop(t, host, vpn)
            for subnet in t.environment(vpn).get("D11_VPN_REMOTE", "").split(","):
                if subnet.strip():
                    out.append(f"route add {subnet.strip()} via {via} dev {dev}")
    return out


def border_routes(t: Topology, host: Host) -> list[str]:
    """Routes through the BGP routers (``docker.bgp``): a host of the access network sends
    what lies behind the routers (the sites' public prefixes) to its ISP's router; a host
    on a site's public edge (its NAT) sends the access network to the site's border."""
    bgp = t.docker.get("bgp")
    if not bgp or host.role == "router":
        return []
    if "internet" in host.addresses:
        uplink = t.host(bgp["uplink"]).addresses["internet"]
        return [f"route add {bgp['routed']} via {uplink}"]
    internet = t.networks["internet"]["subnet"]
    for net in host.addresses:
        for router in t.by_role("router"):
            if net != "underlay" and net in router.addresses:
                return [f"route add {internet} via {router.addresses[net]}"]
    return []


def phone_commands(t: Topology) -> list[str]:
    """The phones' addresses, one block per ISP/region; with BGP, each ISP's blocks send
    the sites' public prefixes to that ISP's router (policy routing by source), as each
    phone's traffic leaves through its own carrier."""
    phone = t.docker["phone"]
    dev, prefix = interface_of(phone["internet"])
    bgp = t.docker.get("bgp")
    out = []
    tables = {isp: 100 + i for i, isp in enumerate(sorted(bgp["isps"]))} if bgp else {}
    for place, block in phone["places"].items():
        for address in list(ipaddress.IPv4Network(block).hosts()):
            out.append(f"addr add {address}/{prefix} dev {dev}")
        if bgp:
            out.append(f"rule add from {block} table {tables[place.split('/')[0]]}")
    for isp, table in tables.items():
        router = t.host(bgp["isps"][isp]).addresses["internet"]
        out.append(f"route add {bgp['routed']} via {router} table {table}")
    if bgp:  # the container's own address (the operator's console) buys from the uplink
        out.append(f"route add {bgp['routed']} via {t.host(bgp['uplink']).addresses['internet']}")
    return out


def set_up(t: Topology, name: str) -> None:
    if name == "phone":
        batch("ip", phone_commands(t))
        return
    host = t.host(name)
    if host.role == "vpn" and not os.path.exists(TUN):
        # Swarm passes no devices to a service; the engine's default device rules allow
        # the TUN device (10:200), so wireguard-go's can be made here.
        os.makedirs(os.path.dirname(TUN), exist_ok=True)
        os.mknod(TUN, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    commands = nat_route(t, host) + border_routes(t, host)
    bridge: list[str] = []
    if host.vpc is not None:
        vx_ip, bridge = vxlan_commands(t, host)
        commands = vx_ip + commands + segment_routes(t, host) + vpn_routes(t, host)
    batch("ip", commands)
    batch("bridge", bridge)


def drop_privileges() -> None:
    if os.getuid() != 0:
        return
    user = pwd.getpwnam(RUN_AS)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)  # from root without keep-caps: every capability goes too
    os.environ["HOME"] = user.pw_dir


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name = os.environ.get("D11_SERVICE", "")
    t = topo.load(mode="docker")
    if os.getuid() == 0:
        if os.environ.get("D11_FABRIC"):  # Swarm: the lab's networks are ours to build
            from infra import fabric

            fabric.set_up(t, name)
        set_up(t, name)
    if name == "phone":
        command, role = argv or ["sleep", "infinity"], "phone"
    else:
        host = t.host(name)
        command, role = argv or [sys.executable, "-m", host.module], host.role
    if role not in topo.APPLIANCES:  # the NAT table, the WireGuard device, BIRD: root's
        drop_privileges()
    if name == "phone" and not argv:
        phone_demo(os.environ.get("D11_PHONE_DEMO", "off"))
    sys.stdout.flush()
    if argv or name == "phone":
        os.execvp(command[0], command)
    # The service runs in this interpreter, as `python -m` would run it: a restart pays
    # for one interpreter's start-up and one import of the libraries, not two.
    sys.argv = [host.module]
    name_process(f"d11 {name}", host.module)
    runpy.run_module(host.module, run_name="__main__", alter_sys=True)


def phone_demo(scenario: str) -> None:
    """What `docker compose up` shows in the phone's log once the stack is healthy: one
    bounded run of ./d11 load (D11_PHONE_DEMO names the scenario; "off" skips it). The
    container stays up afterwards for `docker compose exec phone python -m infra load`."""
    if scenario in ("", "off"):
        return
    print(f"phone: a {scenario} run of ./d11 load (D11_PHONE_DEMO=off skips it)", flush=True)
    bounds = ["--orders", "300", "--concurrency", "32", "--duration", "120"]
    subprocess.run([sys.executable, "-m", "infra", "load", "--scenario", scenario, *bounds],
                   check=False)  # fmt: skip


if __name__ == "__main__":
    main()
