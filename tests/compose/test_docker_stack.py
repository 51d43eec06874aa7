"""The whole chain in containers, as `./d11 docker up` (docker compose up, with a base
image made here when no registry answers) brings it up, driven and inspected from outside:

* orders from the phone container over each order protocol: DNS → CDN → NAT → gateway →
  controller → VXLAN → order service → inventory/coupon, audited by ./d11 load;
* one trace per protocol holding every hop, with the NAT's addresses and the VNI on spans;
* the NAT's translations in `conntrack -L`; the VPCs' isolation; the overlay on the wire
  (tshark on the underlay bridge finds VXLAN VNI 100 carrying controller → order RPCs);
* services running as the unprivileged user.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.peers import chromium_dom
from infra import dockerlab
from infra import topology as topo
from services.wires import PROTOCOLS
from tests.conftest import d11

PROJECT = dockerlab.PROJECT
T = topo.load(mode="docker")


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


def container(service: str) -> str:
    """The service's container, found by Compose's labels: v1 names it double11_gateway_1,
    v2 double11-gateway-1."""
    found = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                   "--filter", f"label=com.docker.compose.service={service}").split()  # fmt: skip
    assert len(found) == 1, f"{service}: containers {found}"
    return found[0]


def in_container(service: str, *argv: str, user: str = "", timeout: float = 180) -> str:
    return docker("exec", *(["-u", user] if user else []), container(service), *argv,
                  timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    """The stack, up and healthy; torn down (volumes too) after this module."""
    try:
        dockerlab.ensure_engine()
        dockerlab.compose_command()
    except dockerlab.DockerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Docker mode: {exc}")
        pytest.skip(str(exc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D11_", "OTEL_"))}
    env["D11_PHONE_DEMO"] = "off"  # the tests drive the phone themselves
    d11("docker", "down", env=env, timeout=120, check=False)
    try:
        d11("docker", "up", env=env, timeout=900)
        yield
    finally:
        d11("docker", "down", env=env, timeout=120, check=False)


def hop_coupon(protocol: str) -> str:
    """A coupon of the hop test's own for this wire (each phone user may redeem a coupon
    three times: one run per wire would use up a shared one), created through the admin API
    from the phone container, as an operator would."""
    code = f"HOP-{protocol.upper()}"
    url = f"http://{T.host('controller-1').address}:8080/api/admin/coupons"
    body = json.dumps({"code": code, "kind": "PERCENT", "value": 10, "per_user_limit": 3})
    script = (
        "import urllib.request as u, urllib.error as e\n"
        f"r = u.Request({url!r}, data={body!r}.encode(), method='POST', headers="
        "{'X-Admin-Token': 'double-11-lab-admin', 'Content-Type': 'application/json'})\n"
        "try:\n    u.urlopen(r, timeout=10)\n"
        "except e.HTTPError as x:\n    assert x.code == 409, x.code  # made by an earlier run\n"
    )
    in_container("phone", "python", "-c", script)
    return code


def load(protocol: str, *extra: str, coupon: bool = True) -> dict:
    """A bounded flash sale from the phone container (every phone on HTTPDNS, so traces hold
    its resolution). The coupon allows three orders per phone user: the hop tests use it,
    the others do not, so they never run out of it."""
    with_coupon = ["--coupon", hop_coupon(protocol)] if coupon else []
    out = in_container(
        "phone", "python", "-m", "infra", "load", "--scenario", "flash-sale", "--json",
        "--orders", "24", "--concurrency", "24", "--stock", "12", "--protocol", protocol,
        "--httpdns-share", "1", *with_coupon, *extra,
    )  # fmt: skip
    return json.loads(out)


def collector(path: str) -> dict:
    return httpx.get(f"http://127.0.0.1:16686{path}", timeout=10, trust_env=False).json()


def spans_of(trace_id: str, wanted: set[str]) -> list[dict]:
    """The trace's spans once each wanted one has reported (services export in batches):
    "service-prefix" or "service-prefix:span-name-prefix"."""
    deadline = time.monotonic() + 20

    def present(want: str, spans: list[dict]) -> bool:
        service, _, name = want.partition(":")
        return any(s["service"].startswith(service) and s["name"].startswith(name)
                   for s in spans)  # fmt: skip

    while True:
        spans = collector(f"/api/traces/{trace_id}").get("spans", [])  # 404 until exported
        services = {s["service"] for s in spans}
        if all(present(w, spans) for w in wanted):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id} has only {sorted(services)}")
        time.sleep(0.5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_orders_cross_every_hop(lab: None, protocol: str) -> None:
    report = load(protocol)
    audit = report["audit"]
    assert audit["passed"], audit
    assert report["outcomes"].get("ok") == 12, report["outcomes"]  # 12 in stock, 12 sold out
    assert report["outcomes"].get("sold-out") == 12, report["outcomes"]
    trace_id = report["sample_order"]["trace_id"]
    spans = spans_of(trace_id, {"phone", "httpdns", "cdn-edge-", "gateway:POST", "controller-",
                                f"order-{protocol}", "inventory", "coupon"})  # fmt: skip
    by_name = {(s["service"], s["name"]): s for s in spans}
    # NAT: the gateway saw the phone itself, reached through a public address of the NAT.
    entry = next(
        s for s in spans if s["service"].startswith("gateway") and s["name"].startswith("POST")
    )
    attrs = entry["attributes"]
    public = [a for nat in T.by_role("nat") for a in nat.env["D11_NAT_PUBLIC"].split(",")]
    assert attrs["d11.net.public_address"] in public
    assert attrs["d11.net.private_address"] == T.host(entry["service"]).address  # either one
    phone_blocks = [b for b in T.docker["phone"]["places"].values()]
    assert any(attrs["client.address"].startswith(b.rsplit(".", 1)[0]) for b in phone_blocks)
    # VXLAN: the controller's call to the order service left on its own VPC's VNI (the
    # shop's; the north's, for a north controller, whose VPN gateway carries it over).
    rpc = [s for (svc, _), s in by_name.items()
           if svc.startswith("controller-") and s["attributes"].get("rpc.system")]  # fmt: skip
    assert rpc and all(s["attributes"]["d11.net.vni"] == T.segment(T.host(s["service"]))[0]
                       for s in rpc)  # fmt: skip
    # HTTPDNS did the resolution, walking root → TLD → zones on the phone's behalf.
    assert any(s["service"] == "httpdns" for s in spans)


def test_nat_translations_in_conntrack(lab: None) -> None:
    load("grpc", "--orders", "4", "--concurrency", "4", coupon=False)
    table = in_container("nat-east", "conntrack", "-L", "-p", "tcp", user="root")
    gateway = T.host("gateway").address
    dnat = [line for line in table.splitlines() if "dport=443" in line and f"src={gateway}" in line]
    assert dnat, table  # original: phone → public:443; reply: gateway:8443 → phone
    assert all("sport=8443" in line for line in dnat)


def test_vpc_hosts_go_out_through_the_nat(lab: None) -> None:
    """A VPC host calling out to the internet leaves with the NAT's public address
    (MASQUERADE): the CDN edge it asks sees the NAT, and conntrack shows the rewrite."""
    edge = T.host("cdn-edge-east")
    assert probe("controller-1", edge.address, edge.port) == "cdn-edge-east"
    table = in_container("nat-east", "conntrack", "-L", "-p", "tcp", "--orig-src",
                         T.host("controller-1").addresses["underlay"], "--orig-dst",
                         edge.address, user="root")  # fmt: skip
    public = T.host("nat-east").address
    assert f"dst={public}" in table, table  # the reply direction goes to the NAT's address


def test_phone_resolves_through_our_isp_resolver(lab: None) -> None:
    """The phone container's own resolver (compose `dns:`) is the ISP's LocalDNS: the
    system resolver gets the api GSLB's answer, a NAT public address."""
    script = "import socket; print(socket.gethostbyname('api.shop.example'))"
    answer = in_container("phone", "python", "-c", script).strip()
    assert answer in T.host("nat-east").env["D11_NAT_PUBLIC"].split(","), answer


def test_topology_page_sees_the_stack(lab: None) -> None:
    """The viewer's topology API, from the collector inside the stack: every host healthy,
    the VPCs with their VNIs, and tenant B's host isolated from the shop's monitoring."""
    data = collector("/api/topology")
    assert data["mode"] == "docker"
    assert {v["vni"] for v in data["vpcs"].values()} == {100, 200, 300}  # shop, B, north
    health = {h["name"]: h["healthy"] for h in data["hosts"]}
    assert health.pop("tenant-b-inventory") is None
    assert all(health.values()), [n for n, ok in health.items() if not ok]
    vnis = {h["name"]: h["vni"] for h in data["hosts"]}
    assert vnis["order-grpc"] == 100 and vnis["tenant-b-inventory"] == 200
    assert vnis["controller-north-1"] == 300 and {h["site"] for h in data["hosts"]} >= {
        "east", "north"}  # fmt: skip
    assert vnis["gateway"] is None and "nat-east" in health


def test_services_run_unprivileged(lab: None) -> None:
    """Containers with NET_ADMIN start as root for the network set-up; the service process
    runs as d11 (uid 1111) in them as in every other."""
    # The service runs in the entry point's interpreter, titled `d11 HOST (python -m
    # MODULE)`; docker-init (pid 1) and the health checks (`python -S
    # infra/healthcheck.py`, run as the container's user) are not services.
    script = ("for p in /proc/[0-9]*; do "
              "case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in "
              "d11\\ *\\(python\\ -m\\ *) grep ^Uid: $p/status;; esac; done")  # fmt: skip
    for service in ("gateway", "controller-1", "order-grpc", "dns-root", "cdn-edge-east"):
        uids = in_container(service, "sh", "-c", script).splitlines()
        assert uids and all(line.split()[1] == "1111" for line in uids), (service, uids)


def test_image_holds_the_services_not_the_tools(lab: None) -> None:
    """One image for Compose, Swarm and Kubernetes, small enough for many nodes to pull:
    the run-time pins (docker/requirements.lock) without pip or the test tools."""
    size = int(docker("image", "inspect", "-f", "{{.Size}}", "double-11:latest"))
    assert size <= 250_000_000, f"double-11:latest is {size / 1e6:.0f} MB"
    probe = "import importlib.util as u; print([m for m in {} if u.find_spec(m)])"
    assert in_container("gateway", "python", "-c", probe.format(["pytest", "locust", "pip",
                        "grpc_tools", "hypothesis"])).strip() == "[]"  # fmt: skip
    assert in_container("gateway", "python", "-c", probe.format(["grpc", "zeep", "uvloop",
                        "psycopg"])).strip() == "['grpc', 'zeep', 'uvloop', 'psycopg']"  # fmt: skip


def probe(service: str, address: str, port: int) -> str:
    """GET /healthz from inside ``service``; the answering service's name, or ''."""
    script = ("import json,sys,urllib.request\n"
              "try:\n"
              f"  r = urllib.request.urlopen('http://{address}:{port}/healthz', timeout=2)\n"
              "  print(json.load(r)['service'])\n"
              "except OSError:\n  print('')\n")  # fmt: skip
    return in_container(service, "python", "-c", script).strip()


def test_vpcs_are_isolated(lab: None) -> None:
    """Tenant B's inventory has the shop's inventory's overlay address, on VNI 200. Each
    VPC reaches its own, and tenant B reaches nothing of the shop's, even when its VTEP is
    told where the shop's hosts are."""
    inventory = T.host("inventory")
    metrics = inventory.metrics_port
    assert T.host("tenant-b-inventory").address == inventory.address
    assert probe("order-grpc", inventory.address, metrics) == "inventory"
    assert probe("tenant-b-inventory", inventory.address, metrics) == "tenant-b-inventory"
    order = T.host("order-grpc")
    assert probe("controller-1", order.address, order.metrics_port) == "order-grpc"
    for name in ("order-grpc", "coupon", "controller-1"):
        peer = T.host(name)
        underlay = peer.addresses["underlay"]
        in_container("tenant-b-inventory", "bridge", "fdb", "append", "00:00:00:00:00:00",
                     "dev", "vxlan200", "dst", underlay, user="root")  # fmt: skip
    assert probe("tenant-b-inventory", order.address, order.metrics_port) == ""
    assert probe("tenant-b-inventory", T.host("coupon").address, 9464) == ""


def test_overlay_on_the_wire(lab: None, tmp_path) -> None:
    """tshark on the underlay's bridge: UDP 4789 datagrams with VNI 100 whose inner packets
    run from a controller's overlay address to each order service's RPC port, and the
    Dubbo ones carry Dubbo frames (magic 0xdabb) inside."""
    if not shutil.which("tshark"):
        pytest.fail("tshark is missing: apt-get install tshark")
    net = json.loads(docker("network", "inspect", f"{PROJECT}_underlay"))[0]
    bridge = net["Options"].get("com.docker.network.bridge.name") or f"br-{net['Id'][:12]}"
    pcap = tmp_path / "underlay.pcap"
    capture = subprocess.Popen(
        ["tshark", "-q", "-i", bridge, "-f", "udp port 4789", "-a", "duration:240",
         "-a", "filesize:50000", "-w", str(pcap)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(2)  # tshark is capturing
        for protocol in PROTOCOLS:
            load(protocol, "--orders", "4", "--concurrency", "4", coupon=False)
        time.sleep(3)  # the last wire's packets reach the file before tshark is stopped
    finally:
        capture.terminate()  # tshark writes what it has on SIGTERM
        capture.wait(timeout=30)
    controllers = {T.host(n).vpc[1] for n in ("controller-1", "controller-2")}  # type: ignore[index]
    for name in [f"order-{p}" for p in PROTOCOLS]:
        service = T.host(name)
        # Either instance of the wire: the inner destination is one, the outer its VTEP.
        vteps = {h.address: h.addresses["underlay"] for h in T.by_role(name)}
        fields = subprocess.run(
            ["tshark", "-r", str(pcap), "-Y", f"vxlan && tcp.dstport == {service.port}",
             "-T", "fields", "-e", "vxlan.vni", "-e", "ip.src", "-e", "ip.dst",
             "-e", "tcp.payload"],
            capture_output=True, text=True, timeout=60,
        ).stdout.split("\n")  # fmt: skip
        rows = [line.split("\t") for line in fields if line]
        assert rows, f"no VXLAN datagrams carrying {name}'s port were captured"
        north_vpn = T.host("vpn-north").addresses["underlay"]
        routers = {h.addresses["underlay"] for h in T.by_role("vpc-router")}
        for vni, _, destinations, _ in rows:
            outer_dst, inner_dst = destinations.split(",")
            assert inner_dst in vteps
            if int(vni) in {v for v, _ in T.segments("north").values()}:
                # A north controller's call: on the north's VNIs to its VPN gateway (from
                # the other AZ through the VPC's router), then through the tunnel.
                assert outer_dst == north_vpn or outer_dst in routers
                continue
            assert int(vni) in {v for v, _ in T.segments("shop").values()}
            # VTEP to VTEP on the underlay, or to the VPC's router from the other AZ.
            assert outer_dst == vteps[inner_dst] or outer_dst in routers
        from_controllers = [r for r in rows if r[1].split(",")[1] in controllers]
        assert from_controllers, f"no controller → {name} packets on the overlay"
        if name == "order-dubbo":
            assert any(r[3].replace(":", "").startswith("dabb") for r in from_controllers)


def test_a_call_between_azs_crosses_the_vpc_router(lab: None, tmp_path) -> None:
    """Each AZ of the shop's VPC is its own subnet and VXLAN segment: controller-1 (east-a)
    connecting to the coupon service (east-b) sends on its segment's VNI to the VPC
    router's VTEP, and the router sends it on east-b's VNI to the coupon's VTEP with the
    inner TTL one less: a real L3 hop between the AZs."""
    if not shutil.which("tshark"):
        pytest.fail("tshark is missing: apt-get install tshark")
    a, b = T.host("controller-1"), T.host("coupon")
    assert a.vpc and b.vpc and a.az != b.az
    (vni_a, net_a), (vni_b, net_b) = T.segment(a), T.segment(b)
    assert vni_a != vni_b and not net_a.overlaps(net_b)
    router = T.vpc_router("shop")
    assert router is not None
    pcap = tmp_path / "azs.pcap"
    capture = subprocess.Popen(
        ["tshark", "-q", "-i", bridge_of("underlay"), "-f", "udp port 4789", "-a",
         "duration:60", "-a", "filesize:20000", "-w", str(pcap)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(2)
        connect = f"socket.create_connection(('{b.vpc[1]}', {b.port}), 3).close()"
        in_container("controller-1", "python", "-c", f"import socket\nfor _ in range(3): {connect}")
        time.sleep(2)
    finally:
        capture.terminate()
        capture.wait(timeout=30)
    rows = [line.split("\t") for line in subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", f"vxlan && ip.src == {a.vpc[1]} && ip.dst == {b.vpc[1]}",
         "-T", "fields", "-e", "vxlan.vni", "-e", "ip.dst", "-e", "ip.ttl"],
        capture_output=True, text=True, timeout=60,
    ).stdout.splitlines() if line]  # fmt: skip
    legs: dict[int, list[tuple[str, int]]] = {}
    for vni, destinations, ttls in rows:
        outer_dst, _inner = destinations.split(",")
        legs.setdefault(int(vni), []).append((outer_dst, int(ttls.split(",")[1])))
    assert set(legs) == {vni_a, vni_b}, legs
    assert {d for d, _ in legs[vni_a]} == {router.addresses["underlay"]}, legs
    assert {d for d, _ in legs[vni_b]} == {b.addresses["underlay"]}, legs
    assert {t for _, t in legs[vni_b]} == {t - 1 for _, t in legs[vni_a]}, legs


def bridge_of(network: str) -> str:
    net = json.loads(docker("network", "inspect", f"{PROJECT}_{network}"))[0]
    return net["Options"].get("com.docker.network.bridge.name") or f"br-{net['Id'][:12]}"


def test_the_sites_vpn_carries_north_orders_encrypted(lab: None, tmp_path) -> None:
    """The north site's VPC (VNI 300) reaches the east's order services through the two
    VPN gateways: WireGuard up (a fresh handshake), the north's orders served by the north's
    gateways and controllers and written in the east, their traces crossing between the
    sites; on the underlay between the gateways only WireGuard's UDP, never a VPC address."""
    if not shutil.which("tshark"):
        pytest.fail("tshark is missing: apt-get install tshark")
    east, north = T.host("vpn-east"), T.host("vpn-north")
    shown = in_container("vpn-east", "wg", "show", "wg0", user="root")
    assert "latest handshake" in shown and f"endpoint: {north.address}:51820" in shown, shown
    health = httpx.get(f"http://{east.address}:{east.port}/healthz", timeout=5,
                       trust_env=False)  # fmt: skip
    assert health.status_code == 200 and "wireguard" in health.text, health.text
    pcap = tmp_path / "wan.pcap"
    capture = subprocess.Popen(
        ["tshark", "-q", "-i", bridge_of("underlay"), "-f",
         # IP only: the gateways' ARP on the shared underlay is link-local, not a site's
         # traffic (an ARP frame once failed this check).
         f"ip and host {east.address} and host {north.address}", "-a", "duration:240",
         "-a", "filesize:20000", "-w", str(pcap)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(2)
        report = load("grpc", "--orders", "24", "--concurrency", "8", coupon=False)
        time.sleep(2)
    finally:
        capture.terminate()
        capture.wait(timeout=30)
    assert report["audit"]["passed"], report["audit"]
    assert report["sites_by_region"]["north"] == {"north": report["sites"]["north"]}, report
    rows = [line.split("\t") for line in subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "udp.srcport", "-e", "udp.dstport",
         "-e", "frame.protocols"],
        capture_output=True, text=True, timeout=60,
    ).stdout.splitlines() if line]  # fmt: skip
    assert len(rows) > 10, rows
    for src, dst, protocols in rows:
        assert "51820" in (src, dst) and "vxlan" not in protocols, (src, dst, protocols)
    vpc_prefixes = [v["subnet"].rsplit(".", 1)[0] + "." for v in T.vpcs.values()]
    addresses = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "ip.src",
                                "-e", "ip.dst"], capture_output=True, text=True,
                               timeout=60).stdout.split()  # fmt: skip
    assert not [a for a in addresses if a.startswith(tuple(vpc_prefixes))], addresses[:8]
    # A north order: the north's gateway and controller, the east's order service.
    trace_id = secrets.token_hex(16)
    script = (
        "import json, ssl, urllib.request, uuid\n"
        "ctx = ssl.create_default_context(cafile='/var/lib/d11/pki/ca.crt')\n"
        "ctx.check_hostname = False\n"
        "body = json.dumps({'user_id': 'north-user', 'lines': [{'item_id': 2, 'quantity': 1}]})\n"
        f"req = urllib.request.Request('https://{T.host('nat-north').address}/api/orders',"
        " body.encode(), {'Content-Type': 'application/json', 'Host': 'api.shop.example',"
        " 'Idempotency-Key': uuid.uuid4().hex, 'X-Order-Protocol': 'grpc',"
        f" 'traceparent': '00-{trace_id}-{secrets.token_hex(8)}-01'}})\n"
        "r = urllib.request.urlopen(req, context=ctx, timeout=15)\n"
        "print(r.status, r.headers['X-Served-By'])\n"
    )  # fmt: skip
    status, served = in_container("phone", "python", "-c", script).split()
    assert status in ("200", "201") and served.startswith("gateway-north"), (status, served)
    spans = spans_of(trace_id, {"gateway-north", "controller-north", "order-grpc", "inventory"})
    region = {s["span_id"]: s["resource"].get("cloud.region") for s in spans}
    crossings = [s for s in spans if region.get(s["parent_span_id"]) == "north"
                 and s["resource"].get("cloud.region") == "east"]  # fmt: skip
    assert crossings, [(s["service"], s["resource"].get("cloud.region")) for s in spans]


def bgp() -> dict:
    """./d11 bgp --json: each router's sessions and routes, as its BIRD reports them."""
    return json.loads(d11("bgp", "--json", timeout=120).stdout)


def best_routes(router: dict) -> dict[str, dict]:
    return {r["prefix"]: r for r in router["routes"] if r["best"]}


def test_bgp_carries_each_phone_through_its_own_isp(lab: None, tmp_path) -> None:
    """BGP at the border: every eBGP session established; both ISPs learn each site's
    public prefix from that site's border (AS path: the site's ASN); each border learns each
    phone block from that block's ISP; and on the peering LAN a phone's packets to a site
    arrive from its own ISP's router (its MAC), on the routes BGP chose."""
    if not shutil.which("tshark"):
        pytest.fail("tshark is missing: apt-get install tshark")
    report = bgp()
    routers = T.by_role("router")
    asn = {h.name: int(T.environment(h)["D11_BGP_ASN"]) for h in routers}
    borders = [h for h in routers if h.site]
    isps = T.docker["bgp"]["isps"]
    for h in routers:
        sessions = report[h.name]["sessions"]
        assert len(sessions) == 2 and {x["info"] for x in sessions} == {"Established"}, sessions
    for isp in isps.values():
        best = best_routes(report[isp])
        for border in borders:
            route = best[T.environment(border)["D11_BGP_ORIGINATE"]]
            assert route["as_path"] == [asn[border.name]], (isp, route)
            assert route["via"] == border.addresses["ix"], (isp, route)
    for border in borders:
        best = best_routes(report[border.name])
        for place, block in T.docker["phone"]["places"].items():
            isp = isps[place.split("/")[0]]
            assert best[block]["as_path"] == [asn[isp]], (border.name, block, best[block])
            assert best[block]["via"] == T.host(isp).addresses["ix"], best[block]
    mac = {isp: docker("inspect", "-f",
                       f'{{{{(index .NetworkSettings.Networks "{PROJECT}_ix").MacAddress}}}}',
                       container(isp)).strip() for isp in isps.values()}  # fmt: skip
    pcap = tmp_path / "ix.pcap"
    capture = subprocess.Popen(
        ["tshark", "-q", "-i", bridge_of("ix"), "-f", "tcp port 443", "-a", "duration:120",
         "-a", "filesize:20000", "-w", str(pcap)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(2)
        report_load = json.loads(in_container(
            "phone", "python", "-m", "infra", "load", "--scenario", "mixed", "--json",
            "--orders", "40", "--concurrency", "16", "--stock", "100000",
            "--protocol", "grpc"))  # fmt: skip
        time.sleep(1)
    finally:
        capture.terminate()
        capture.wait(timeout=30)
    assert report_load["failed_share"] == 0, report_load["outcomes"]
    rows = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "ip.src",
                           "-e", "eth.src"], capture_output=True, text=True,
                          timeout=60).stdout.split("\n")  # fmt: skip
    blocks = {place.split("/")[0]: [] for place in T.docker["phone"]["places"]}
    for place, block in T.docker["phone"]["places"].items():
        blocks[place.split("/")[0]].append(ipaddress.IPv4Network(block))
    seen: dict[str, int] = {}
    for row in filter(None, rows):
        src, eth = row.split("\t")
        for isp, nets in blocks.items():
            if any(ipaddress.IPv4Address(src) in n for n in nets):
                assert eth == mac[isps[isp]], (src, eth, isp, mac)
                seen[isp] = seen.get(isp, 0) + 1
    assert set(seen) == set(isps), seen


def test_the_topology_page_draws_the_isps_bgp_sessions_and_the_vpn(lab: None, tmp_path) -> None:
    """The collector's topology page in Docker mode, rendered by headless Chromium: the
    ISPs' routers, a BGP session line from each ISP to each site's border, the VPN
    between the sites' gateways and each VPC's router between its AZs, all healthy."""
    dom = ""
    for _ in range(3):  # the page probes every host; a first look may catch one mid-probe
        dom = chromium_dom("http://127.0.0.1:16686/topology", tmp_path).replace("&gt;", ">")
        if 'data-health="down"' not in dom.split('id="sites-map"')[1].split("</svg>")[0]:
            break
        time.sleep(3)
    routers = T.by_role("router")
    for isp in (h for h in routers if not h.site):
        assert f'data-node="{isp.name}"' in dom
        for border in (h for h in routers if h.site):
            assert f'data-link="bgp:{isp.name}>{border.name}" data-health="up"' in dom, dom
    east, north = (h.name for h in T.by_role("vpn"))
    assert f'data-link="vpn:{east}>{north}" data-health="up"' in dom
    # Each VPC's router into the AZ subnet it is not in; each AZ with its subnet and VNI.
    for router in T.by_role("vpc-router"):
        for az, (vni, net) in T.segments(router.vpc[0]).items():  # type: ignore[index]
            assert f"{net} · VNI {vni}" in dom
            if az != router.az:
                assert f'data-link="az:{router.name}>{az}" data-health="up"' in dom


def test_a_stopped_border_is_withdrawn_and_announced_again(lab: None) -> None:
    """The north's border router stops (BIRD closes its sessions): both ISPs withdraw the
    north's prefix within seconds and keep the east's; started again, the north is
    announced again."""
    north = next(h for h in T.by_role("router") if h.site == "north")
    prefix = T.environment(north)["D11_BGP_ORIGINATE"]
    isps = list(T.docker["bgp"]["isps"].values())

    def announced() -> dict[str, set[str]]:
        report = bgp()
        return {isp: set(best_routes(report[isp])) for isp in isps}

    def wait(predicate, limit: float) -> dict[str, set[str]]:
        deadline = time.monotonic() + limit
        while True:
            seen = announced()
            if predicate(seen) or time.monotonic() > deadline:
                return seen
            time.sleep(1)

    assert all(prefix in p for p in announced().values())
    cid = container(north.name)
    docker("stop", "-t", "10", cid)
    try:
        seen = wait(lambda s: all(prefix not in p for p in s.values()), 20)
        assert all(prefix not in p for p in seen.values()), seen
        assert all("198.19.128.0/24" in p for p in seen.values()), seen
    finally:
        docker("start", cid)
    seen = wait(lambda s: all(prefix in p for p in s.values()), 40)
    assert all(prefix in p for p in seen.values()), seen


def test_the_north_site_down_sends_its_phones_east_and_back(lab: None) -> None:
    """./d11 chaos --docker --fault site: the north's containers (its NAT, gateways,
    controllers, VPN gateway and border router) stopped for 20 s under a load and started again: the
    GSLB's probes leave the north out, the phones go east, none of them fails, and once
    the cached answers expire the north's phones are the north's again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D11_", "OTEL_"))}
    out = d11(
        "chaos", "--docker", "--fault", "site", "--targets", "north", "--outage", "20",
        "--every", "8", "--max-faults", "1", "--duration", "80", "--no-quiet",
        "--concurrency", "32", "--json", env=env, timeout=400, check=False,
    )  # fmt: skip
    assert out.stdout.strip(), out.stderr
    report = json.loads(out.stdout)
    (fault,) = report["faults"]
    back = fault.get("healthy_after_s")
    assert out.returncode == 0 and back is not None, (fault, report["audit"])
    assert report["failed_share"] <= 0.01, (report["outcomes"], report["errors"])
    down_at, up_at = fault["at_s"], fault["at_s"] + fault["outage_s"]
    windows = report["windows"]
    during = [w for w in windows if w["from_s"] >= down_at + 10 and w["from_s"] + 5 <= up_at]
    # Back: the border's BGP sessions (1-5 s), the GSLB's probes (1 s), the resolvers' and
    # HTTPDNS's cached answers (TTL 20 s).
    after = [w for w in windows if w["from_s"] >= up_at + 25 and w["visits"] > 20]
    assert during and after, windows
    for w in during:
        assert w["served"].get("north>north", 0) == 0 and w["served"].get("north>east"), w
    for w in after:
        assert w["served"].get("north>north", 0) > w["served"].get("north>east", 0), w


def cpu_weight(service: str) -> int:
    """The weight the kernel gives the container now (cgroup v1's cpu.shares, or v2's
    cpu.weight), -1 while it is down."""
    cid = docker("inspect", "-f", "{{.Id}}", container(service)).strip()
    for path in (f"/sys/fs/cgroup/cpu/docker/{cid}/cpu.shares",
                 f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.weight",
                 f"/sys/fs/cgroup/docker/{cid}/cpu.weight"):  # fmt: skip
        try:
            return int(Path(path).read_text())
        except OSError:
            continue
    return -1


def kernel_weight(shares: int) -> int:
    """Docker's shares as the kernel holds them: as they are on cgroup v1, mapped onto
    cpu.weight (1-10000) on v2 as runc maps them."""
    if Path("/sys/fs/cgroup/cpu").is_dir():
        return shares
    return 1 + ((shares - 2) * 9999) // 262142


def test_a_restarting_container_is_boosted_then_put_back(lab: None) -> None:
    """infra/boost.py: a container the engine restarts runs its start at 32 times the
    default CPU weight, and has its own weight back a few seconds after it started."""
    service = "cdn-edge-east"
    assert cpu_weight(service) == kernel_weight(1024)
    pid = docker("inspect", "-f", "{{.State.Pid}}", container(service)).strip()
    os.kill(int(pid), signal.SIGKILL)
    seen: list[int] = []
    deadline = time.monotonic() + 20
    boosted, own = kernel_weight(32768), kernel_weight(1024)
    while time.monotonic() < deadline and not (boosted in seen and seen[-1] == own):
        seen.append(cpu_weight(service))
        time.sleep(0.2)
    assert boosted in seen, seen
    assert seen[-1] == own, seen  # put back, within D11_BOOST_SECONDS of the start
    assert docker("inspect", "-f", "{{.State.Running}}", container(service)).strip() == "true"
    # The phones' own weight (128: they yield) is never raised.
    assert cpu_weight("phone") == kernel_weight(128)


def test_chaos_in_containers_fails_almost_no_visit(lab: None) -> None:
    """./d11 chaos in Docker mode: containers of the order path crash (SIGKILL to their
    init) every 4 s under a load from the phone container; the engine's restart policy
    brings each back, the second instances and the retries carry the visits meanwhile.
    The load is open loop at about half of what the stack serves here (~70 visits/s from
    24 phones): a closed loop keeps both cores busy, and a restarting container then gets
    a tenth of them (its restart took 2-4.6 s here and 5.2 s in one CI run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D11_", "OTEL_"))}
    out = d11(
        "chaos", "--docker", "--duration", "24", "--every", "4", "--fault", "kill",
        "--no-quiet", "--concurrency", "24", "--rate", "30", "--seed", "3", "--json",
        "--targets", "gateway,controller,order-grpc,order-dubbo,order-soap,inventory,coupon",
        env=env, timeout=400,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["mode"] == "docker"
    kills = [f for f in report["faults"] if "skipped" not in f]
    assert len(kills) >= 4, report["faults"]
    assert report["all_back"], report["faults"]
    # Back to healthy at half load: 0.8-2.2 s with the startup boost on a machine of this
    # kind on 2026-12-01 (1.2-2.5 s before it), but 2.2-5.5 s, and 7.4 s once, on another
    # on 2026-12-02, where the commit that set a 3.5 s ceiling failed it too. The ceiling is
    # what a restart must never take (a broken restart policy or boost), not one machine's.
    assert max(f["healthy_after_s"] for f in kills) <= 8.0, report["faults"]
    assert report["audit"]["passed"], report["audit"]
    assert report["visits"] > 500, report["visits"]  # the offered 30/s for 24 s, near enough
    assert report["failed_share"] <= 0.005, (report["outcomes"], report["windows"])
    # The engine brought every killed container back: all running again.
    for fault in kills:
        running = docker("inspect", "-f", "{{.State.Running}}", container(fault["host"]))
        assert running.strip() == "true", fault
