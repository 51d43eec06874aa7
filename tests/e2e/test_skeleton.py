"""The walking skeleton end to end: one order from an outside client through gateway ->
controller -> order service (gRPC), followed as one trace in the API, the terminal and the
web viewer (headless Chromium)."""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest

from bench.peers import chromium_dom
from tests.conftest import Stack, set_stock, wait_for


def place_traced(stack: Stack, http, protocol: str) -> dict:
    """Place one order with a traceparent of our own, as a phone starting the trace would,
    and wait until its trace has reached the order service."""
    set_stock(stack, 11, 1000)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    r = http.post(
        stack.url("gateway", "/api/orders"),
        json={"user_id": "e2e", "lines": [{"item_id": 11, "quantity": 3}]},
        headers={
            "Idempotency-Key": secrets.token_hex(8),
            "traceparent": f"00-{trace_id}-{parent}-01",
            "X-Order-Protocol": protocol,
        },
    )
    assert r.status_code == 201, r.text

    def complete():
        t = http.get(stack.url("collector", f"/api/traces/{trace_id}"))
        if t.status_code != 200:
            return None
        spans = t.json()["spans"]
        # Instances count as their service: order-grpc-2 is an order-grpc, gateway-2 a gateway.
        services = {re.sub(r"-\d+$", "", s["service"]) for s in spans}
        # gateway, controller, order service, and the inventory call the saga makes
        wanted = {"gateway", f"order-{protocol}", "inventory"}
        return spans if len(spans) >= 7 and wanted <= services else None

    spans = wait_for(complete, what=f"the {protocol} order's trace")
    return {"trace_id": trace_id, "parent": parent, "spans": spans, "order": r.json()}


@pytest.fixture(scope="module")
def traced_order(stack: Stack, http) -> dict:
    return place_traced(stack, http, "grpc")


def test_up_was_healthy_within_ten_seconds(stack: Stack):
    # 23 hosts in 13 processes: the DNS servers and the CDN's nodes share one each.
    assert stack.up_seconds <= 10, f"./d11 up --detach took {stack.up_seconds:.1f}s"


def test_status_json_lists_every_service_healthy(stack: Stack):
    rows = json.loads(stack.d11("status", "--json").stdout)
    assert {r["name"] for r in rows} == {h.name for h in stack.topology.hosts}
    for row in rows:
        assert {"name", "role", "address", "port", "protocol", "pid", "healthy"} <= set(row)
        assert row["healthy"] is True and row["pid"] > 0, row
        assert row["rss_bytes"] > 0
        assert 0 < row["pss_bytes"] <= row["rss_bytes"]


@pytest.mark.parametrize(
    ("protocol", "rpc_system"),
    [("grpc", "grpc"), ("dubbo", "apache_dubbo"), ("soap", "soap"), ("oncrpc", "onc_rpc")],
)
def test_one_trace_covers_every_hop(stack: Stack, http, protocol: str, rpc_system: str):
    traced = place_traced(stack, http, protocol)
    spans = traced["spans"]
    by_id = {s["span_id"]: s for s in spans}
    (root,) = [s for s in spans if s["parent_span_id"] not in by_id]
    # The gateway continued the client's trace rather than starting its own.
    assert root["parent_span_id"] == traced["parent"]
    assert root["service"] == "gateway" and root["kind"] == "SERVER"

    def chain(span):
        while span is not None:
            yield span
            span = by_id.get(span["parent_span_id"])

    # The deepest hop: inventory's Reserve, called by the order service's saga.
    leaf = next(
        s
        for s in spans
        if s["service"] == "inventory"
        and s["kind"] == "SERVER"
        and s["attributes"].get("rpc.method") == "Reserve"
    )
    path = [(re.sub(r"-\d+$", "", s["service"]), s["kind"]) for s in reversed(list(chain(leaf)))]
    assert path == [
        ("gateway", "SERVER"),
        ("gateway", "CLIENT"),
        ("controller", "SERVER"),
        ("controller", "CLIENT"),
        (f"order-{protocol}", "SERVER"),
        (f"order-{protocol}", "CLIENT"),
        ("inventory", "SERVER"),
    ]
    order_span = next(
        s
        for s in spans
        if re.sub(r"-\d+$", "", s["service"]) == f"order-{protocol}" and s["kind"] == "SERVER"
    )
    assert order_span["attributes"]["rpc.system"] == rpc_system
    assert order_span["attributes"]["rpc.method"] in ("PlaceOrder", "placeOrder", "PLACE_ORDER")
    # The RPC's size on the wire: the controller's call span (gRPC, Dubbo) or the SOAP
    # server's span carries request and response bytes.
    rpc_spans = [s for s in spans if s["attributes"].get("rpc.system") == rpc_system
                 and s["attributes"].get("rpc.method")
                 in ("PlaceOrder", "placeOrder", "PLACE_ORDER")]  # fmt: skip
    sized = [s for s in rpc_spans if "rpc.request.size" in s["attributes"]]
    assert sized, rpc_spans
    assert all(s["attributes"]["rpc.request.size"] > 20 for s in sized)
    assert all(s["attributes"]["rpc.response.size"] > 20 for s in sized)
    if protocol == "grpc":  # the controller's traced channel records the call's status
        calls = [s for s in rpc_spans if s["kind"] == "CLIENT"]
        assert calls and all(s["attributes"]["rpc.grpc.status_code"] == "OK" for s in calls)

    # Children lie inside their parents, except work done after the answer (committing
    # the stock reservation), which only starts after its parent did.
    def after_response(span) -> bool:
        return any(s["attributes"].get("d11.after_response") for s in chain(span))

    for span in spans:
        parent = by_id.get(span["parent_span_id"])
        if parent:
            assert parent["start_ns"] <= span["start_ns"], span["name"]
            if not after_response(span):
                assert span["end_ns"] <= parent["end_ns"], span["name"]


def test_d11_trace_draws_the_waterfall(stack: Stack, traced_order):
    out = stack.d11("trace", traced_order["trace_id"]).stdout
    assert f"trace {traced_order['trace_id']}" in out
    for span in traced_order["spans"]:
        assert span["name"] in out
    assert "order-grpc" in out and "controller-" in out and "gateway" in out
    by_order = stack.d11("trace", traced_order["order"]["order_id"]).stdout
    assert f"trace {traced_order['trace_id']}" in by_order
    assert stack.d11("trace", "0" * 31 + "1", check=False).returncode == 1


def test_web_viewer_renders_the_trace_in_chromium(stack: Stack, traced_order, tmp_path):
    trace_id = traced_order["trace_id"]
    dom = chromium_dom(stack.url("collector", f"/traces/{trace_id}"), tmp_path)
    assert 'id="waterfall"' in dom
    for span in traced_order["spans"]:
        assert f'data-span-id="{span["span_id"]}"' in dom, span["name"]
    assert f"trace {trace_id} · {len(traced_order['spans'])} spans" in dom

    listing = chromium_dom(stack.url("collector", "/"), tmp_path)
    assert f'data-trace-id="{trace_id}"' in listing


def test_background_chatter_starts_no_trace(stack: Stack, http):
    """Registry heartbeats and discovery polls (every host, every second) say "not sampled",
    so the store and the viewer's list hold visits, not housekeeping."""
    since_ns = time.time_ns()
    time.sleep(2.5)  # two heartbeats and two polls from every host
    traces = http.get(
        stack.url("collector", "/api/traces"), params={"service": "registry", "limit": 1000},
        timeout=15,
    ).json()["traces"]  # fmt: skip
    assert [t for t in traces if t["start_ns"] >= since_ns] == []


def test_topology_page_draws_every_host_with_live_health(stack: Stack, http, tmp_path):
    """The viewer's topology page, rendered by headless Chromium: every host of the
    topology, in its network, with the health the collector just probed."""
    api = http.get(stack.url("collector", "/api/topology"), timeout=15).json()
    assert {h["name"] for h in api["hosts"]} == {h.name for h in stack.topology.hosts}
    assert all(h["healthy"] for h in api["hosts"]), [h for h in api["hosts"] if not h["healthy"]]
    dom = chromium_dom(stack.url("collector", "/topology"), tmp_path)
    for host in stack.topology.hosts:
        assert f'data-host="{host.name}" data-health="up"' in dom, host.name
    for network in stack.topology.networks:
        assert f'data-network="{network}"' in dom
    assert f"{len(stack.topology.hosts)}/{len(stack.topology.hosts)} healthy" in dom
