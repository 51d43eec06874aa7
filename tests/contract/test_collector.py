"""The collector, driven by outside OTLP clients: the OpenTelemetry SDK's own exporter
(protobuf) and hand-written OTLP/JSON as the spec's examples show it."""

from __future__ import annotations

import secrets
import time

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tests.conftest import Stack, wait_for


def _trace(http: httpx.Client, stack: Stack, trace_id: str, count: int) -> list[dict]:
    def ready():
        r = http.get(stack.url("collector", f"/api/traces/{trace_id}"))
        return r.status_code == 200 and len(r.json()["spans"]) >= count and r.json()["spans"]

    return wait_for(ready, what=f"{count} spans of {trace_id}")


def test_sdk_exporter_spans_are_stored_with_parents_and_attributes(stack: Stack, http):
    exporter = OTLPSpanExporter(endpoint=stack.url("collector", "/v1/traces"))
    provider = TracerProvider(resource=Resource.create({"service.name": "contract-client"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("contract")
    with (
        tracer.start_as_current_span("parent", attributes={"order.id": "o-42"}) as parent,
        tracer.start_as_current_span("child") as child,
    ):
        child.set_status(Status(StatusCode.ERROR, "sold out"))
    provider.shutdown()
    trace_id = format(parent.get_span_context().trace_id, "032x")

    spans = {s["name"]: s for s in _trace(http, stack, trace_id, 2)}
    assert spans["child"]["parent_span_id"] == format(parent.get_span_context().span_id, "016x")
    assert spans["parent"]["parent_span_id"] is None
    assert spans["parent"]["service"] == "contract-client"
    assert spans["parent"]["attributes"] == {"order.id": "o-42"}
    assert spans["child"]["status"] == {"code": "ERROR", "message": "sold out"}
    assert spans["parent"]["duration_ns"] >= spans["child"]["duration_ns"] > 0

    listed = http.get(stack.url("collector", "/api/traces"), params={"service": "contract-client"})
    assert trace_id in [t["trace_id"] for t in listed.json()["traces"]]
    found = http.get(stack.url("collector", "/api/traces"), params={"attr": "order.id=o-42"})
    summary = next(t for t in found.json()["traces"] if t["trace_id"] == trace_id)
    assert summary["span_count"] == 2 and summary["error_count"] == 1
    assert summary["root_name"] == "parent"


def _json_export(trace_id: str, span_id: str, name: str = "json-span") -> dict:
    now = time.time_ns()
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": name,
                                "kind": 2,
                                "startTimeUnixNano": str(now - 5_000_000),
                                "endTimeUnixNano": str(now),
                                "attributes": [
                                    {
                                        "key": "http.response.status_code",
                                        "value": {"intValue": "201"},
                                    },
                                    {"key": "ok", "value": {"boolValue": True}},
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }


def test_otlp_json_with_hex_ids_is_accepted(stack: Stack, http):
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    r = http.post(stack.url("collector", "/v1/traces"), json=_json_export(trace_id, span_id))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    (span,) = _trace(http, stack, trace_id, 1)
    assert span["span_id"] == span_id
    assert span["kind"] == "SERVER"
    assert span["attributes"] == {"http.response.status_code": 201, "ok": True}
    assert span["duration_ns"] == 5_000_000


def test_invalid_span_ids_are_reported_as_partial_success(stack: Stack, http):
    good = _json_export(secrets.token_hex(16), secrets.token_hex(8))
    bad = _json_export("0" * 32, secrets.token_hex(8))["resourceSpans"][0]
    good["resourceSpans"].append(bad)
    r = http.post(stack.url("collector", "/v1/traces"), json=good)
    assert r.status_code == 200
    assert r.json()["partialSuccess"]["rejectedSpans"] == "1"


def test_protobuf_response_is_an_export_response(stack: Stack, http):
    request = trace_service_pb2.ExportTraceServiceRequest()
    r = http.post(
        stack.url("collector", "/v1/traces"),
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert r.status_code == 200
    reply = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert reply.partial_success.rejected_spans == 0


def test_malformed_bodies_get_400_and_the_collector_keeps_serving(stack: Stack, http):
    url = stack.url("collector", "/v1/traces")
    cases = [
        (b"\xff\xff\xff\xff garbage", "application/x-protobuf"),
        (b"\x0a\x05\x0a\x03", "application/x-protobuf"),  # truncated nested message
        (b"{not json", "application/json"),
        (b'{"resourceSpans": 7}', "application/json"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
            "application/json",
        ),
    ]
    for body, content_type in cases:
        r = http.post(url, content=body, headers={"Content-Type": content_type})
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert "error" in r.json()
    r = http.post(url, content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = http.post(
        url, content=b"\0" * (17 * 1024 * 1024), headers={"Content-Type": "application/x-protobuf"}
    )
    assert r.status_code == 413
    # Still serving, and still storing.
    assert http.get(stack.url("collector", "/healthz")).status_code == 200
    trace_id = secrets.token_hex(16)
    r = http.post(url, json=_json_export(trace_id, secrets.token_hex(8)))
    assert r.status_code == 200
    assert _trace(http, stack, trace_id, 1)


def test_unknown_trace_is_404_and_malformed_id_is_400(stack: Stack, http):
    r = http.get(stack.url("collector", f"/api/traces/{secrets.token_hex(16)}"))
    assert r.status_code == 404
    assert http.get(stack.url("collector", "/api/traces/not-a-trace")).status_code == 400
    assert http.get(stack.url("collector", "/api/traces?limit=x")).status_code == 400
    assert http.get(stack.url("collector", "/api/traces?attr=novalue")).status_code == 400


def test_metrics_endpoint_counts_exports(stack: Stack, http):
    text = http.get(stack.url("collector", "/metrics")).text
    assert 'd11_requests_total{operation="POST /v1/traces",outcome="200",protocol="http"}' in text


def test_a_trace_past_retention_is_gone_and_said_to_have_aged_out(tmp_path):
    """A private collector keeping traces one second: a trace it stored is pruned, and then
    both the API (410 Gone) and ./d11 trace say it aged out, rather than 'unknown'."""
    from bench.peers import our_service
    from tests.conftest import d11, stack_env

    with our_service("infra.collector", "127.10.8.50", 4318, run_dir=tmp_path / "run",
                     D11_TRACE_MAX_AGE="1", D11_TRACE_PRUNE_EVERY="0.3"):  # fmt: skip
        base = "http://127.10.8.50:4318"
        trace_id = secrets.token_hex(16)
        with httpx.Client(timeout=5, trust_env=False) as client:
            assert client.post(f"{base}/v1/traces", json=_json_export(trace_id, "00f067aa0ba902b7"),
                               ).status_code == 200  # fmt: skip
            assert client.get(f"{base}/api/traces/{trace_id}").status_code == 200
            gone = wait_for(lambda: (r := client.get(f"{base}/api/traces/{trace_id}")).status_code
                            == 410 and r, timeout=10, what="the trace to age out")  # fmt: skip
            assert "aged out" in gone.json()["error"] and "kept 1 s" in gone.json()["error"]
            assert client.get(f"{base}/api/traces/{secrets.token_hex(16)}").status_code == 404
        out = d11("trace", trace_id, "--collector", base, env=stack_env(tmp_path / "run"),
                  check=False)  # fmt: skip
        assert out.returncode == 1 and "410" in out.stderr and "aged out" in out.stderr
