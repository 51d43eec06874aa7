"""``./d11 load`` against the running stack, as a user runs it: phones resolve through both
LocalDNS and HTTPDNS, load images from the edges, order over HTTPS through the gateway; the
audit reads the results back from the services; the sample trace covers the chain."""

from __future__ import annotations

import json
import time

import httpx

from bench.peers import chromium_dom
from services.wires import PROTOCOLS
from tests.conftest import Stack, wait_for

HOT = 3  # not item 1: the flash-sale test owns that one


def test_flash_sale_load_sells_exactly_the_stock_and_audits(stack: Stack, tmp_path):
    out = stack.d11(
        "load", "--scenario", "flash-sale", "--orders", "240", "--concurrency", "48",
        "--hot-item", str(HOT), "--stock", "30", "--protocol", "mix", "--json",
        timeout=240,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["audit"]["passed"], report["audit"]
    assert report["visits"] == 240
    assert report["orders_ok"] == 30  # exactly the stock, nothing oversold
    assert report["outcomes"].get("sold-out", 0) == 210, report["outcomes"]
    item = report["audit"]["items"][str(HOT)]
    assert item["stock_before"] == 30 and item["available"] == 0
    assert item["confirmed_units"] == 30
    assert all(item["checks"].values()), item
    # Every visit either ordered or was told "sold out": nothing failed, retries or not.
    assert report["failed"] == 0, report["outcomes"]
    assert set(report["protocols"]) == set(PROTOCOLS)  # every registered wire
    # Both ways of resolving were used, from every ISP and region, and the edges answered.
    modes = {place.rsplit("/", 1)[1] for place in report["placement"]}
    assert modes == {"localdns", "httpdns"}
    assert len({place.rsplit("/", 1)[0] for place in report["placement"]}) == 4
    assert report["cdn"]["edge"]["hit"] > 0
    for step in ("dns", "item", "cdn", "order"):
        assert report["steps"][step]["count"] > 0 and report["steps"][step]["p99_ms"] > 0

    # The sample order's trace starts at the phone and crosses the chain.
    trace_id = report["sample_order"]["trace_id"]

    def spans():
        r = httpx.get(stack.url("collector", f"/api/traces/{trace_id}"), timeout=10)
        if r.status_code != 200:
            return None
        found = r.json()["spans"]
        services = {s["service"] for s in found}
        return found if len(found) >= 8 and len(services) >= 6 else None

    found = wait_for(spans, timeout=15, what="the sample order's trace")
    # By role: gateway-2 and gateway-north are gateways (the phone is no host).
    roles = {h.name: h.role for h in stack.topology.hosts}
    services = {roles.get(s["service"], s["service"]) for s in found}
    assert {"phone", "gateway", "inventory"} <= services, services
    assert any(s["service"].startswith("cdn-edge") for s in found), services
    # The same trace in the terminal and in the web page.
    terminal = stack.d11("trace", trace_id).stdout
    assert f"trace {trace_id}" in terminal and "phone purchase" in terminal
    dom = chromium_dom(stack.url("collector", f"/traces/{trace_id}"), tmp_path)
    for span in found:
        assert f'data-span-id="{span["span_id"]}"' in dom, span["name"]


def test_roaming_placement_in_the_report(stack: Stack):
    """Browsing phones: telecom phones in the north get the east edge through LocalDNS (their
    resolver is in the east and sends no subnet) and the north edge through HTTPDNS."""
    out = stack.d11(
        "load", "--scenario", "browse", "--orders", "80", "--concurrency", "16",
        "--httpdns-share", "0.5", "--json", timeout=120,
    )  # fmt: skip
    report = json.loads(out.stdout)
    placement = report["placement"]
    east = stack.topology.host("cdn-edge-east").address
    north = stack.topology.host("cdn-edge-north").address
    local = placement.get("telecom/north/localdns", {})
    http = placement.get("telecom/north/httpdns", {})
    assert local and all(k.startswith(f"edge {east},") for k in local), placement
    assert http and all(k.startswith(f"edge {north},") for k in http), placement
    assert report["outcomes"] == {"browse": 80}


def test_top_shows_rates_errors_and_latencies(stack: Stack):
    """While phones browse, ./d11 top (scraping every service's /metrics) sees the traffic
    at the edges, the gateway and the controllers, and every DNS server reports too."""
    import threading

    done = threading.Event()

    def browse() -> None:
        try:
            stack.d11("load", "--scenario", "browse", "--orders", "5000", "--duration", "8",
                      "--concurrency", "8", "--json", timeout=60)  # fmt: skip
        finally:
            done.set()

    worker = threading.Thread(target=browse)
    worker.start()
    try:
        time.sleep(2)
        rows = json.loads(stack.d11("top", "--json", "--interval", "3").stdout)
    finally:
        worker.join(60)
    assert done.is_set()
    assert set(rows) == {h.name for h in stack.topology.hosts}
    assert all(r["state"] == "up" for r in rows.values()), rows
    edges = rows["cdn-edge-east"]["rps"] + rows["cdn-edge-north"]["rps"]
    controllers = rows["controller-1"]["rps"] + rows["controller-2"]["rps"]
    assert edges > 1 and controllers > 1, rows
    assert rows["controller-1"]["errors_per_s"] == 0
    assert any(r["p99_ms"] for r in (rows["controller-1"], rows["controller-2"]))


def test_the_locustfile_drives_the_shop(stack: Stack, tmp_path):
    """Locust, headless, with the shipped locustfile: browsing, the edge's images and orders
    over HTTPS through the gateway, no failure in Locust's own statistics."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    from infra import ROOT

    locust = Path(sys.executable).with_name("locust")
    result = subprocess.run(
        [str(locust), "-f", "locustfile.py", "--headless", "-u", "8", "-r", "8", "-t", "6s",
         "--csv", str(tmp_path / "run"), "--only-summary", "--loglevel", "WARNING"],
        cwd=ROOT, env={**stack.env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=90,
    )  # fmt: skip
    errors = tmp_path / "run_failures.csv"
    assert result.returncode == 0, (result.stderr[-2000:],
                                    errors.read_text() if errors.exists() else "")  # fmt: skip
    with open(tmp_path / "run_stats.csv") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 20 and int(total["Failure Count"]) == 0, total
    assert int(rows["/api/orders"]["Request Count"]) > 0
    assert int(rows["CDN edge image"]["Request Count"]) > 0


def test_a_refused_order_says_why_in_the_report(stack: Stack):
    """An order the shop refuses is a failed visit whose problem+json detail reaches the
    report's errors, so a failure under load can be read, not guessed."""
    out = stack.d11(
        "load", "--scenario", "flash-sale", "--orders", "4", "--concurrency", "2",
        "--coupon", "NO-SUCH-COUPON", "--json", timeout=120, check=False,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["outcomes"] == {"http-422": 4}, report["outcomes"]
    assert report["errors"]["http-422"] == ["order: HTTP 422 no coupon 'NO-SUCH-COUPON'"]
