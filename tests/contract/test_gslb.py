"""The GSLBs, asked with dig: the shop's two-layer GSLB for api.shop.example and the CDN's
edge GSLB, by client subnet (RFC 7871) or by the resolver's address, by health and by load;
the roaming phone HTTPDNS exists for; and the policy files against the topology.

A private GSLB on 127.20.9.40 balances over real cache nodes on 127.30.9.5x, so a test can
load one edge and stop another."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from bench.peers import our_service, stop
from dns.gslb import GSLB_DIR, IpDatabase
from tests.conftest import Stack
from tests.contract.test_dns_auth import dig, section, spray, status

GSLB = "127.20.9.40"
E1, E2, N1 = "127.30.9.51", "127.30.9.52", "127.30.9.53"
DEAD = "127.30.9.99"
EDGE_NAME = "img.shop.example.gslb.cdn.example"
OPEN_NAME = "open.gslb.cdn.example"  # the same edges, answered all when all are down


def answers(out: str) -> list[str]:
    return [r[4] for r in section(out, "ANSWER") if r[3] == "A"]


def edge(address: str, run: Path, name: str, region: str, **env: str):
    return our_service(
        "cdn.cache", address, 8000, run_dir=run, D11_SERVICE=name, D11_CDN_TIER="edge",
        D11_CDN_REGION=region, D11_CDN_PARENT=f"{DEAD}:8000", **env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    run = tmp_path_factory.mktemp("gslb")
    edges = [
        {"name": n, "address": a, "region": r, "probe": f"http://{a}:8000/_cdn/load"}
        for n, a, r in (("e1", E1, "east"), ("e2", E2, "east"), ("n1", N1, "north"))
    ]
    policy = {
        "ipdb": str(GSLB_DIR / "ipdb.csv"),
        "ttl": 5,
        "default": {"isp": "telecom", "region": "east"},
        "nearest": {"east": ["east", "north"], "north": ["north", "east"]},
        "services": [
            {"name": f"{EDGE_NAME}.", "kind": "edges", "answers": 1, "overload": 0.9,
             "edges": edges},
            {"name": f"{OPEN_NAME}.", "kind": "edges", "answers": 1, "overload": 0.9,
             "edges": edges, "when_all_down": "answer-all"},
            {
                "name": "api.shop.example.", "kind": "two-layer",
                "layer2": "api.{isp}.gslb.shop.example.", "answers": 2, "probe": "tcp:8000",
                "entries": {"telecom": {"east": [{"address": E1}, {"address": DEAD}]},
                            "unicom": {"north": [{"address": N1}]}},
            },
        ],
    }  # fmt: skip
    (run / "policy.yaml").write_text(yaml.safe_dump(policy))
    procs = {}
    with (
        edge(E1, run, "e1", "east", D11_CDN_CAPACITY="20") as procs["e1"],
        edge(E2, run, "e2", "east") as procs["e2"],
        edge(N1, run, "n1", "north") as procs["n1"],
        our_service(
            "dns.auth",
            GSLB,
            53,
            run_dir=run,
            D11_SERVICE="gslb",
            D11_ZONES="shop.example.zone,cdn.example.zone",
            D11_GSLB_POLICY=str(run / "policy.yaml"),
        ),  # fmt: skip
    ):
        time.sleep(1.5)  # the first probes
        yield procs


def ask(subnet: str | None = None, source: str | None = None, name: str = EDGE_NAME) -> str:
    args = ["+norec", f"@{GSLB}", name, "A"]
    if subnet:
        args.insert(0, f"+subnet={subnet}")
    if source:
        args = ["-b", source, *args]
    return dig(*args)


def wait_answer(predicate, subnet: str, timeout: float = 6.0) -> str:
    deadline = time.monotonic() + timeout
    out = ask(subnet)
    while not predicate(answers(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
        out = ask(subnet)
    return out


def test_edges_by_client_subnet_or_resolver_address(private):
    east = ask("127.100.5.0/24")  # telecom, east
    assert status(east) == "NOERROR" and "aa" in east.split("flags:")[1].split(";")[0]
    assert answers(east) == [E1]
    assert "CLIENT-SUBNET: 127.100.5.0/24/16" in east  # scope: the database's /16
    assert section(east, "ANSWER")[0][1] == "5"  # the policy's short TTL
    assert answers(ask("127.101.5.0/24")) == [N1]  # telecom, north
    # No Client Subnet: placed by the resolver's own address (unicom's, in the north).
    by_resolver = ask(source="127.20.2.9")
    assert answers(by_resolver) == [N1] and "CLIENT-SUBNET" not in by_resolver
    # An address the database does not know: the policy's default region, for that /24
    # only (SCOPE 0 would make a resolver give the default to everyone).
    unknown = ask("100.64.0.0/24")
    assert answers(unknown) == [E1] and "CLIENT-SUBNET: 100.64.0.0/24/24" in unknown


def test_api_two_layers_and_dead_entries(private):
    out = ask("127.100.9.0/24", name="api.shop.example")
    rows = section(out, "ANSWER")
    assert rows[0][3:] == ["CNAME", "api.telecom.gslb.shop.example."]
    # Two answers asked for, one entry alive: the dead one (nothing on its port) never comes.
    for _ in range(20):
        assert answers(ask("127.100.9.0/24", name="api.shop.example")) == [E1]
    unicom = ask("127.103.9.0/24", name="api.shop.example")
    assert section(unicom, "ANSWER")[0][4] == "api.unicom.gslb.shop.example."
    assert answers(unicom) == [N1]
    # Layer 2 asked directly, and a type the entries do not have (NODATA with the SOA).
    assert answers(ask("127.100.9.0/24", name="api.telecom.gslb.shop.example")) == [E1]
    aaaa = dig("+norec", f"@{GSLB}", "api.telecom.gslb.shop.example", "AAAA")
    assert status(aaaa) == "NOERROR" and section(aaaa, "ANSWER") == []
    assert section(aaaa, "AUTHORITY")[0][3] == "SOA"


def test_load_then_death_moves_the_answer(private):
    assert answers(ask("127.100.5.0/24")) == [E1]

    async def load(seconds: float) -> None:  # ~80 requests/s on an edge of capacity 20
        async with aiohttp.ClientSession() as session:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                async with session.get(f"http://{E1}:8000/img/x") as r:
                    await r.read()
                await asyncio.sleep(0.0125)

    asyncio.run(load(2.5))
    moved = wait_answer(lambda a: a == [E2], "127.100.5.0/24")
    assert answers(moved) == [E2], "the loaded edge was still answered"
    stop(private["e2"])
    # Once the probe has seen it, a dead edge is never answered: E1 while its load lasts
    # is passed over too, so the answer goes to the north, then back to E1 as it cools.
    seen = Counter()
    time.sleep(2.5)  # a probe round every second, each probe at most 0.8 s
    for _ in range(15):
        seen.update(answers(ask("127.100.5.0/24")))
        time.sleep(0.1)
    assert E2 not in seen and set(seen) <= {E1, N1}
    stop(private["e1"])
    stop(private["n1"])
    dead = wait_answer(lambda a: not a, "127.100.5.0/24")
    assert status(dead) == "SERVFAIL"  # nothing alive: no answer rather than a dead edge
    # ... unless the policy says to answer them all then (Route 53's rule): by region.
    east, north = ask("127.100.5.0/24", name=OPEN_NAME), ask("127.101.5.0/24", name=OPEN_NAME)
    assert status(east) == "NOERROR" and answers(east) in ([E1], [E2]), east
    assert status(north) == "NOERROR" and answers(north) == [N1], north


EAST = {"127.10.0.10", "127.10.0.11", "127.10.0.14", "127.10.0.15"}  # on both gateways
NORTH = {"127.11.0.10", "127.11.0.14"}  # telecom's north entries: the north site's gateways


def test_weighted_entries_in_the_stack(stack: Stack):
    auth = stack.topology.host("dns-auth").address
    first = Counter()
    for _ in range(200):
        out = dig("+norec", "+subnet=127.100.1.0/24", f"@{auth}", "api.shop.example")
        got = answers(out)
        # Two of the region's own site, then one of the other site's as the backup.
        assert len(got) == 3 and len(set(got[:2])) == 2 and set(got[:2]) <= EAST, got
        assert got[2] in NORTH, got
        first[got[0]] += 1
    # Weights 3:1:3:1 drawn without replacement: a heavy entry (one per gateway) comes
    # first 75 % of the time, each gateway's about half of that.
    heavy = first["127.10.0.10"] + first["127.10.0.14"]
    assert 0.62 < heavy / 200 < 0.88, first
    assert first["127.10.0.10"] > 30 and first["127.10.0.14"] > 30, first
    north = dig("+norec", "+subnet=127.101.1.0/24", f"@{auth}", "api.shop.example")
    assert sorted(answers(north)[:2]) == sorted(NORTH) and answers(north)[2] in EAST
    assert "api.telecom.gslb.shop.example." in north


def test_roaming_phone_gets_the_far_edge_by_localdns_and_the_near_one_by_httpdns(stack: Stack):
    """The classic failure HTTPDNS fixes: a telecom phone roaming in the north (127.101.x)
    still uses its home resolver in the east, which sends no Client Subnet: the CDN's GSLB
    sees the resolver and answers the east edge. HTTPDNS resolves with the phone's own
    address and answers the north edge."""
    phone = "127.101.0.5"
    east = stack.topology.host("cdn-edge-east").address
    north = stack.topology.host("cdn-edge-north").address
    telecom = stack.topology.host("resolver-telecom").address
    local = dig("-b", phone, f"@{telecom}", "img.shop.example", "A")
    assert answers(local) == [east], local
    httpdns = stack.topology.host("httpdns").address
    via_http = subprocess.run(
        ["curl", "-sS", "--interface", phone, f"http://{httpdns}/d?dn=img.shop.example"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert via_http.stdout == north, via_http.stderr
    # A resolver that forwards the client's subnet (unicom's) gets it right too.
    unicom = stack.topology.host("resolver-unicom").address
    assert answers(dig("-b", phone, f"@{unicom}", "img.shop.example", "A")) == [north]
    # And a phone at home in the east gets the east edge either way.
    assert answers(dig("-b", "127.100.0.5", f"@{telecom}", "img.shop.example", "A")) == [east]


def test_random_packets_crash_no_gslb(stack: Stack):
    servers = [stack.topology.host(h).address for h in ("dns-auth", "dns-gslb")]
    spray(servers, 2000, seed=4789)
    out = dig("+norec", f"@{servers[1]}", EDGE_NAME, "A")
    assert status(out) == "NOERROR" and len(answers(out)) == 1


def test_policies_agree_with_the_topology(stack: Stack):
    topo = stack.topology
    ipdb = IpDatabase.load(GSLB_DIR / "ipdb.csv")
    for resolver in topo.by_role("resolver"):
        assert ipdb.lookup(resolver.address) is not None, resolver.name
    cdn = yaml.safe_load((GSLB_DIR / "cdn.yaml").read_text())
    edges = {
        h.address: topo.environment(h)["D11_CDN_REGION"]
        for h in topo.by_role("cdn-cache")
        if topo.environment(h)["D11_CDN_TIER"] == "edge"
    }
    (service,) = cdn["services"]
    assert {e["address"]: e["region"] for e in service["edges"]} == edges
    api = yaml.safe_load((GSLB_DIR / "api.yaml").read_text())
    listening = {
        address
        for gateway in topo.by_role("gateway")
        for address in [
            gateway.address,
            *topo.environment(gateway)["D11_ADDRESS_ALIASES"].split(","),
        ]
    }
    entries = {
        e["address"]
        for s in api["services"]
        for regions in s["entries"].values()
        for targets in regions.values()
        for e in targets
    }
    assert entries == listening
    # Each region's entries are its own site's gateways (the north's phones, the north's).
    site_of = {address: gateway.site for gateway in topo.by_role("gateway")
               for address in [gateway.address,
                               *topo.environment(gateway)["D11_ADDRESS_ALIASES"].split(",")]}
    for s in api["services"]:
        for regions in s["entries"].values():
            for region, targets in regions.items():
                assert {site_of[e["address"]] for e in targets} == {region}, (region, targets)
    assert topo.host("dns-auth").env["D11_GSLB_POLICY"] == "api.yaml"
    assert topo.host("dns-gslb").env["D11_GSLB_POLICY"] == "cdn.yaml"
