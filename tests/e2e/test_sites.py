"""Two sites, as a user meets them: `./d11 status` gives every data-centre host its site
and AZ, each site answers its own region's phones through its own gateways, a north order
crosses to the east in its trace, and a whole site going down moves its phones to the
other site and back."""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import httpx
import pytest

from bench.peers import chromium_dom
from services.phone import order_body
from tests.conftest import Stack, d11, set_stock, wait_for

ITEM = 29


def test_status_gives_site_and_az_and_each_site_has_its_own_entry(stack: Stack):
    rows = json.loads(stack.d11("status", "--json").stdout)
    by_site: dict[str, set[str]] = {}
    for row in rows:
        host = stack.topology.host(row["name"])
        assert (row["site"], row["az"]) == (host.site, host.az), row
        if row["site"]:
            assert row["az"].startswith(row["site"]), row
            by_site.setdefault(row["site"], set()).add(row["role"])
    assert {"gateway", "controller"} <= by_site["north"], by_site
    assert {"gateway", "controller", "inventory", "coupon"} <= by_site["east"], by_site
    assert "inventory" not in by_site["north"], "the stores are the main site's only"
    # The north gateways' addresses have names too (dig -x).
    address = stack.topology.host("gateway-north").address
    resolver = stack.topology.host("resolver-telecom").address
    ptr = subprocess.run(["dig", "+short", f"@{resolver}", "-x", address], capture_output=True,
                         text=True, timeout=20, check=True).stdout  # fmt: skip
    assert ptr.strip() == "gateway-north.lab.example."


def test_a_north_order_is_written_in_the_east_and_its_trace_shows_the_crossing(stack: Stack):
    set_stock(stack, ITEM, 1000)
    trace_id = secrets.token_hex(16)
    gateway = stack.topology.host("gateway-north")
    with httpx.Client(trust_env=False, timeout=15) as client:
        r = client.post(
            f"http://{gateway.endpoint}/api/orders",
            json=order_body("north-user", ITEM),
            headers={"Idempotency-Key": secrets.token_hex(8), "X-Order-Protocol": "grpc",
                     "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        )  # fmt: skip
        assert r.status_code in (200, 201), r.text
        assert r.headers["X-Served-By"] == "gateway-north"

        def spans() -> list[dict]:
            got = client.get(stack.url("collector", f"/api/traces/{trace_id}"))
            return got.json()["spans"] if got.status_code == 200 else []

        def crossed() -> bool:
            found = spans()
            regions = {s["span_id"]: s["resource"].get("cloud.region") for s in found}
            return any(regions.get(s["parent_span_id"]) == "north"
                       and s["resource"].get("cloud.region") == "east" for s in found)

        wait_for(crossed, timeout=15, what="a north span with an east child")
        found = spans()
    north = {s["service"] for s in found if s["resource"].get("cloud.region") == "north"}
    east = {s["service"] for s in found if s["resource"].get("cloud.region") == "east"}
    assert {"gateway-north"} <= north and any(n.startswith("controller-north") for n in north)
    assert any(n.startswith("order-grpc") for n in east) and "inventory" in east, east
    assert all(s["resource"].get("cloud.availability_zone", "").startswith(
        s["resource"]["cloud.region"]) for s in found if "cloud.region" in s["resource"])
    # The terminal waterfall marks the hop between the sites.
    assert "[north → east]" in stack.d11("trace", trace_id).stdout


def test_the_topology_page_draws_the_sites_with_health_and_traffic(stack: Stack, tmp_path):
    """The sites as a diagram (SVG) in headless Chromium: each site with its AZs and hosts
    and their health, each region's phones over their own site, and the inter-site link
    with the requests/s the north's controllers took since the page's last look."""
    api = stack.url("collector", "/api/topology")
    gateway = stack.topology.host("gateway-north")
    with httpx.Client(trust_env=False, timeout=15) as client:
        assert client.get(api).status_code == 200  # the scraper's first look
        for _ in range(30):
            assert client.get(f"http://{gateway.endpoint}/api/items/1").status_code == 200
        data = client.get(api).json()
    assert data["links"]["inter-site:north>east"] > 0, data["links"]
    sites = {h["name"]: (h["site"], h["az"]) for h in data["hosts"]}
    assert sites["controller-north-2"] == ("north", "north-b")
    dom = chromium_dom(stack.url("collector", "/topology"), tmp_path)
    assert '<svg id="sites-map"' in dom
    for site in ("east", "north"):
        assert f'data-site="{site}" data-health="up"' in dom, site
        assert f'data-phones="{site}"' in dom
    for host in stack.topology.hosts:
        if host.site:
            assert f'data-node="{host.name}" data-health="up"' in dom, host.name
    # (Chromium's dump escapes the ">" inside the attribute.)
    assert any(f'data-link="inter-site:north{gt}east"' in dom for gt in (">", "&gt;"))
    assert "req/s" in dom


def test_a_site_down_sends_its_phones_to_the_other_and_they_come_back(stack: Stack):
    """./d11 chaos --fault site: the north site goes down (./d11 down --site north) during
    a load and comes back 20 s later. Within 10 s every north visit is served by the east,
    at most 1 % of visits fail, and once the answers the resolvers cached have expired the
    north's phones are the north's again. The outage as measured holds the site's `down`
    and `up` too (20 + 3 s on one machine, 28.6 s on another), hence 80 s of load: the
    home-again windows start 25 s after the site is back."""
    env = {**stack.env, "LIBC_FATAL_STDERR_": "1"}  # glibc's fatal messages to stderr
    try:
        out = d11(
            "chaos", "--fault", "site", "--targets", "north", "--outage", "20", "--every", "8",
            "--max-faults", "1", "--duration", "80", "--no-quiet", "--concurrency", "32",
            "--json", env=env, timeout=240, check=False,
        )  # fmt: skip
    finally:  # whatever became of the run, the north comes back for the tests after it
        stack.d11("up", "--site", "north", "--detach", timeout=120, check=False)
    if not out.stdout.strip():  # pytest.fail keeps the whole message (a native crash's stacks)
        pytest.fail(f"chaos exited {out.returncode} with no report; stderr:\n{out.stderr[-12000:]}")
    report = json.loads(out.stdout)
    assert out.returncode == 0, (report["audit"], report["faults"])
    (fault,) = report["faults"]
    assert fault["kind"] == "site" and fault["host"].startswith("site north"), fault
    assert "skipped" not in fault and fault["healthy_after_s"] is not None, fault
    assert report["failed_share"] <= 0.01, (report["outcomes"], report["errors"])
    assert set(report["sites_by_region"]["north"]) == {"north", "east"}, report["sites_by_region"]
    assert set(report["sites_by_region"]["east"]) == {"east"}, report["sites_by_region"]
    down_at, up_at = fault["at_s"], fault["at_s"] + fault["outage_s"]
    windows = report["windows"]
    during = [w for w in windows if w["from_s"] >= down_at + 10 and w["from_s"] + 5 <= up_at]
    assert during, windows
    for w in during:
        assert w["served"].get("north>north", 0) == 0 and w["served"].get("north>east"), w
    # The resolvers cache the GSLB's answers for their TTL (20 s): after that, home again.
    after = [w for w in windows if w["from_s"] >= up_at + 25 and w["visits"] > 20]
    assert after, windows
    for w in after:
        assert w["served"].get("north>north", 0) > w["served"].get("north>east", 0), w
    assert all(json.loads(stack.d11("status", "--json", check=False).stdout)[i]["healthy"]
               for i in range(len(stack.topology.hosts)))  # fmt: skip


def test_down_and_up_by_site_from_the_command_line(stack: Stack):
    bad = stack.d11("down", "--site", "south", check=False)
    assert bad.returncode == 1 and "no site 'south'" in bad.stderr + bad.stdout
    north = {h.name for h in stack.topology.in_site("north")}
    out = stack.d11("down", "--site", "north").stdout
    assert all(name in out for name in north), out
    try:
        rows = json.loads(stack.d11("status", "--json", check=False).stdout)
        down = {r["name"] for r in rows if not r["healthy"]}
        assert down == north, down  # the whole site, and nothing of the east's
        # Stopped on purpose: the supervisor leaves it down.
        time.sleep(1.5)
        rows = json.loads(stack.d11("status", "--json", check=False).stdout)
        assert {r["name"] for r in rows if not r["healthy"]} == north
    finally:
        stack.d11("up", "--detach", "--site", "north", timeout=60)
    rows = json.loads(stack.d11("status", "--json").stdout)
    assert all(r["healthy"] for r in rows), [r["name"] for r in rows if not r["healthy"]]
