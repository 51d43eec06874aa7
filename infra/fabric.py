"""The lab's networks over a Docker Swarm overlay (``./d11 swarm``): each container builds
its own L2 segments, one kernel VXLAN device per lab network it is on, with the fixed
addresses of the topology on them.

Swarm gives a service's task an address of its own choosing on an overlay network, and no
way to fix it (``ipv4_address`` is a Compose-only setting). The lab's hosts live by fixed
addresses: zone files, GSLB policies, routes and the VPCs' VXLAN peers name them. So in
Swarm mode the overlay (``fabric``) is only the underlay of the lab's own networks:

* a host on lab network N gets device ``f-N`` (VXLAN, VNI 1000 + N's index, UDP 4790) over
  its fabric interface, holding its address of the topology (as Compose's bridge would);
* its MAC is computed from the address (``vxlan_mac``), so every peer's neighbour entry is
  static, for the host's address and the others it holds there (the phones' blocks, a
  NAT's public addresses): no ARP crosses the fabric;
* what little is broadcast goes to every peer's fabric address (an all-zeros FDB entry
  each), learnt from the directory (below);
* the device learns (``learning``) where each peer's MAC is; when the directory shows a
  peer's task started again (a new fabric address, on another node or not), what was
  learnt of it is dropped, so frames to it are flooded until its answer teaches anew.

The directory (``python -m infra.fabric``, the stack's ``fabric-directory``) is the
fabric's control plane, as etcd is Flannel's: each host's watcher (a child process, as
root) sends it a datagram with its name every 0.5 s until it knows all its peers, then
every 5 s, and gets back every host's fabric address (the datagram's source) as JSON.
Swarm's own DNS could not do it: it lists a task only once its health check passes, and
a BGP router's health is its sessions, over this very fabric. A host that does not hear
from the directory keeps what it knows.

Packets of a VPC then cross three VXLANs: the VPC's (4789, over the lab underlay), the
lab network's (4790, over the fabric) and Swarm's own (4789, between the nodes).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import time
from typing import Any, cast

from dnslib import QTYPE, DNSRecord

from infra.container import batch, sh, vxlan_mac
from infra.topology import Topology

PORT = 4790
VNI_BASE = 1000
FABRIC = os.environ.get("D11_FABRIC_SUBNET", "203.0.113.0/24")
DIRECTORY = "fabric-directory"
DIRECTORY_PORT = 4791
EAGER_EVERY_S, EVERY_S, FORGET_S = 0.5, 5.0, 60.0


def members(t: Topology) -> dict[str, dict[str, str]]:
    """Lab network → {host (a Swarm service name) → its address there}, the phone too."""
    out: dict[str, dict[str, str]] = {net: {} for net in t.networks}
    for host in t.hosts:
        for net, address in host.addresses.items():
            out.setdefault(net, {})[host.name] = address
    for net, address in t.docker["phone"].items():
        if net in t.networks:
            out[net]["phone"] = address
    return out


def extra_addresses(t: Topology) -> dict[str, dict[str, list[str]]]:
    """Lab network → {host → the addresses it holds there besides its own}: the phones'
    blocks, a NAT's public addresses, a host's aliases. Every peer gets static neighbours
    for them too, so no ARP crosses the fabric even for these (a first flash sale after
    the deploy otherwise starts with a broadcast for each of 128 phones at every server)."""
    out: dict[str, dict[str, list[str]]] = {net: {} for net in t.networks}
    nets = {net: ipaddress.IPv4Network(spec["subnet"]) for net, spec in t.networks.items()}

    def place(host: str, held: list[str], addresses: list[str]) -> None:
        for a in addresses:
            for net in held:
                if ipaddress.IPv4Address(a) in nets[net]:
                    out[net].setdefault(host, []).append(a)

    phone = t.docker["phone"]
    blocks = [str(a) for b in phone["places"].values() for a in ipaddress.IPv4Network(b).hosts()]
    place("phone", [n for n in phone if n in nets], blocks)
    for host in t.hosts:
        env = t.environment(host)
        listed = f"{env.get('D11_NAT_PUBLIC', '')},{env.get('D11_ADDRESS_ALIASES', '')}"
        own = set(host.addresses.values())
        held = [a.strip() for a in listed.split(",") if a.strip() and a.strip() not in own]
        place(host.name, list(host.addresses), held)
    return out


def vni(t: Topology, net: str) -> int:
    return VNI_BASE + list(t.networks).index(net)


def device(net: str) -> str:
    return f"f-{net}"[:15]


def fabric_interface() -> tuple[str, str]:
    """The interface on Swarm's overlay (the one address in the fabric subnet) and that address."""
    subnet = ipaddress.IPv4Network(FABRIC)
    for line in sh("ip", "-o", "-4", "addr", "show").splitlines():
        fields = line.split()
        address = fields[3].split("/")[0]
        if ipaddress.IPv4Address(address) in subnet:
            return fields[1], address
    raise SystemExit(f"fabric: no interface on the Swarm overlay {FABRIC}")


def resolve(name: str, server: str = "127.0.0.11", timeout: float = 1.0) -> str | None:
    """A service's task address (``tasks.<name>``) from Swarm's DNS in the container, or
    None; never waited on longer than ``timeout`` (the engine forwards names it does not
    know upstream)."""
    try:
        raw = DNSRecord.question(f"tasks.{name}").send(server, 53, timeout=timeout)
        reply = DNSRecord.parse(raw)
    except Exception:  # no answer in time, or none that parses: not found this round
        return None
    return next((str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A), None)


def build(t: Topology, me: str, peers: dict[str, dict[str, str]]) -> dict[str, str]:
    """This host's lab devices, with static neighbours for every peer (``peers``: what
    ``members`` gives); returns the devices by network."""
    dev_fabric, local = fabric_interface()
    mine = {net: on[me] for net, on in peers.items() if me in on}
    extras = extra_addresses(t)
    commands = []
    for net, address in mine.items():
        dev, prefix = device(net), ipaddress.IPv4Network(t.networks[net]["subnet"]).prefixlen
        commands += [
            f"link add {dev} type vxlan id {vni(t, net)} local {local} dev {dev_fabric} "
            f"dstport {PORT} learning",
            f"link set {dev} address {vxlan_mac(vni(t, net), address)}",
            f"addr add {address}/{prefix} dev {dev}",
            f"link set {dev} up",
        ]
        for peer, peer_address in peers[net].items():
            if peer != me:
                mac = vxlan_mac(vni(t, net), peer_address)
                for a in [peer_address, *extras[net].get(peer, [])]:
                    commands.append(f"neigh replace {a} lladdr {mac} dev {dev} nud permanent")
    batch("ip", commands)
    return {net: device(net) for net in mine}


def ask(me: str, timeout: float = 1.0) -> dict[str, str]:
    """Tell the directory this host is here; its answer: host → fabric address."""
    where = resolve(DIRECTORY)
    if where is None:
        return {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(me.encode(), (where, DIRECTORY_PORT))
            table = json.loads(sock.recv(65535))
        except (OSError, ValueError):
            return {}
    return {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}


def flood(t: Topology, me: str, peers: dict[str, dict[str, str]], devices: dict[str, str],
          known: dict[str, str], table: dict[str, str]) -> bool:  # fmt: skip
    """Bring each device's flood list up to date with the peers' fabric addresses in
    ``table``; ``known`` (peer → address in the flood lists) is updated in place. True
    when every peer is known."""
    wanted = sorted({p for net in devices for p in peers[net] if p != me})
    commands = []
    for peer in wanted:
        now, before = table.get(peer), known.get(peer)
        if now is None or now == before:
            continue
        for net, dev in devices.items():
            if peer not in peers[net]:
                continue
            if before:  # moved: and what was learnt of its MAC points at the old task
                commands.append(f"fdb del 00:00:00:00:00:00 dev {dev} dst {before}")
                mac = vxlan_mac(vni(t, net), peers[net][peer])
                commands.append(f"fdb del {mac} dev {dev}")
            commands.append(f"fdb append 00:00:00:00:00:00 dev {dev} dst {now}")
        known[peer] = now
    if commands:
        sh("bridge", "-force", "-batch", "-", stdin="".join(f"{c}\n" for c in commands))
    return all(p in known for p in wanted)


def set_up(t: Topology, me: str) -> None:
    """The lab devices now, and a watcher (a child process, as root) for the flood lists
    for as long as the container runs."""
    peers = members(t)  # the topology does not change: worked out once, not every round
    devices = build(t, me, peers)
    if os.fork() != 0:
        return
    os.setsid()
    known: dict[str, str] = {}
    while True:
        complete = False
        try:
            complete = flood(t, me, peers, devices, known, ask(me))
        except SystemExit as exc:  # a failed bridge command: try again next round
            print(f"fabric: {exc}", flush=True)
        time.sleep(EVERY_S if complete else EAGER_EVERY_S)


class Directory(asyncio.DatagramProtocol):
    """Host name in, every host's fabric address out (entries not heard from for a minute
    are dropped: their task is gone)."""

    def __init__(self) -> None:
        self.hosts: dict[str, tuple[str, float]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        name = data.decode(errors="replace").strip()
        if not name or len(name) > 64 or not name.isprintable() or self.transport is None:
            return
        now = time.monotonic()
        self.hosts[name] = (str(addr[0]), now)
        self.hosts = {k: v for k, v in self.hosts.items() if now - v[1] < FORGET_S}
        table = {k: v[0] for k, v in self.hosts.items()}
        self.transport.sendto(json.dumps(table).encode(), addr)


async def serve_directory(port: int = DIRECTORY_PORT) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Directory, local_addr=("0.0.0.0", port))
    print(f"fabric: directory on UDP {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()


if __name__ == "__main__":
    asyncio.run(serve_directory())
