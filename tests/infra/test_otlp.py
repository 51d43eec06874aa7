"""The lean OTLP/HTTP span exporter (infra/otlp.py) against a recording HTTP server: the
body must parse as OpenTelemetry's own ExportTraceServiceRequest (the generated protobuf
classes of opentelemetry-proto), and the standard OTEL_EXPORTER_OTLP_* variables apply."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePath

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from infra.otlp import SpanExporterHTTP, dropped, endpoint


class Recorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answers to give, in order (then 200)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, dict(self.headers), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def spans(exporter: SpanExporterHTTP, *names: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "otlp-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for name in names:
        with tracer.start_as_current_span(name, attributes={"d11.n": len(name)}):
            pass
    provider.shutdown()


def decoded(body: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return message


def test_batches_parse_as_the_official_message(recorder: Recorder) -> None:
    base = f"http://127.0.0.1:{recorder.server_port}"
    headers = "x-tenant=shop,x-k=a%20b"
    exporter = SpanExporterHTTP(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_EXPORTER_OTLP_HEADERS": headers}
    )
    spans(exporter, "first", "second")
    assert len(recorder.requests) == 2  # SimpleSpanProcessor: one export per span
    path, sent, _ = recorder.requests[0]
    assert path == "/v1/traces"
    assert sent["Content-Type"] == "application/x-protobuf"
    assert sent["x-tenant"] == "shop" and sent["x-k"] == "a b"
    names = []
    for _, _, raw in recorder.requests:
        message = decoded(raw)
        rs = message.resource_spans[0]
        service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
        assert service == "otlp-test"
        names += [s.name for s in rs.scope_spans[0].spans]
    assert names == ["first", "second"]


def test_traces_endpoint_and_gzip(recorder: Recorder) -> None:
    url = f"http://127.0.0.1:{recorder.server_port}/custom/traces"
    exporter = SpanExporterHTTP({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url,
                                 "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"})  # fmt: skip
    spans(exporter, "zipped")
    path, headers, body = recorder.requests[0]
    assert path == "/custom/traces" and headers["Content-Encoding"] == "gzip"
    assert decoded(gzip.decompress(body)).resource_spans[0].scope_spans[0].spans[0].name == "zipped"


def test_retries_once_on_503_then_gives_up_on_errors(recorder: Recorder) -> None:
    base = f"http://127.0.0.1:{recorder.server_port}"
    exporter = SpanExporterHTTP({"OTEL_EXPORTER_OTLP_ENDPOINT": base})
    recorder.statuses = [503]
    spans(exporter, "retried")
    assert len(recorder.requests) == 2  # the 503, then the retry that was accepted
    recorder.statuses = [400]
    exporter = SpanExporterHTTP({"OTEL_EXPORTER_OTLP_ENDPOINT": base})  # the first is shut down
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("refused") as span:
        pass
    before = dropped()
    assert exporter.export([span]) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert dropped() == before + 1


def test_unreachable_collector_fails_softly() -> None:
    exporter = SpanExporterHTTP({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                 "OTEL_EXPORTER_OTLP_TIMEOUT": "500"})  # fmt: skip
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("lost") as span:
        pass
    before = dropped()
    assert exporter.export([span]) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert dropped() == before + 1


def test_a_hung_collector_never_holds_a_request_and_drops_are_counted(tmp_path) -> None:
    """A controller whose collector accepts connections and never answers (as a SIGSTOPped
    one does): its requests take no longer than usual, and /metrics counts what was lost."""
    import socket
    import subprocess
    import sys

    import httpx

    from infra import ROOT
    from tests.conftest import stack_env, wait_for

    hung = socket.socket()
    hung.bind(("127.10.8.60", 0))
    hung.listen(64)  # accepted by the kernel, never read
    env = stack_env(tmp_path / "run")
    env.update(PYTHONPATH=str(ROOT), D11_ADDRESS="127.10.8.61", D11_PORT="8080",
               D11_ORDER_GRPC="127.10.8.99:1", D11_INVENTORY="127.10.8.99:2",
               D11_COUPON="127.10.8.99:3", OTEL_BSP_SCHEDULE_DELAY="50",
               OTEL_EXPORTER_OTLP_TIMEOUT="300",
               OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.10.8.60:{hung.getsockname()[1]}",
               )  # fmt: skip
    service = subprocess.Popen([sys.executable, "-m", "services.controller"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with httpx.Client(timeout=5, trust_env=False) as client:
            base = "http://127.10.8.61:8080"
            wait_for(lambda: _ok(client, base + "/healthz"), timeout=20, what="the controller")
            took = []
            for _ in range(40):
                started = time.perf_counter()
                assert client.get(base + "/openapi.json").status_code == 200
                took.append(time.perf_counter() - started)
            assert max(took) < 0.25, max(took)

            def counted() -> float:
                text = client.get(base + "/metrics").text
                line = next(x for x in text.splitlines()
                            if x.startswith("d11_spans_dropped_total"))  # fmt: skip
                return float(line.split()[-1])

            wait_for(lambda: counted() > 0, timeout=15, what="dropped spans to be counted")
    finally:
        service.kill()
        service.wait(5)
        hung.close()


def _ok(client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except Exception:
        return False


def test_endpoint_resolution() -> None:
    assert endpoint({}) == "http://localhost:4318/v1/traces"
    assert endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    with pytest.raises(ValueError):
        SpanExporterHTTP({"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://c:4317"})


def _spans_of_every_shape(provider_class: type = TracerProvider) -> list:
    """Finished spans with every field the encoders write: kinds, parents local and remote,
    trace state, every attribute type, events, links, error status, two resources and two
    scopes (instrumentation libraries); recorded by the SDK's provider or ours."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.span import TraceState

    memory = InMemorySpanExporter()
    for name in ("controller-1", "order-grpc"):
        provider = provider_class(resource=Resource.create({"service.name": name, "n": 1}))
        provider.add_span_processor(SimpleSpanProcessor(memory))
        for scope in ("d11", "aiohttp"):
            tracer = provider.get_tracer(scope, "1.2.3")
            remote = SpanContext(0x0123456789ABCDEF0123456789ABCDEF, 0x1122334455667788, True,
                                 TraceFlags(1), TraceState([("d11", "a"), ("k", "v")]))  # fmt: skip
            parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
            with tracer.start_as_current_span(
                "POST /api/v1/orders", context=parent, kind=SpanKind.SERVER,
                attributes={"s": "sé", "empty": "", "b": True, "f": False, "i": -7, "zero": 0,
                            "big": 2**62, "x": 0.25, "strs": ["a", "b"], "ints": [1, -2]},
                links=[Link(remote, {"why": "retry"})],
            ) as span:  # fmt: skip
                # The same pair on the span and on its event (each under its own field).
                span.set_attribute("units", 3)
                span.add_event("reserved", {"units": 3})
                span.add_event("plain")
                with tracer.start_as_current_span("Reserve", kind=SpanKind.CLIENT) as child:
                    child.set_status(Status(StatusCode.ERROR, "deadline exceeded"))
                with tracer.start_as_current_span("ok") as child:
                    child.set_status(Status(StatusCode.OK))
    return list(memory.get_finished_spans())


def test_our_wire_encoder_writes_what_the_sdk_encoder_writes() -> None:
    """infra/otlp_wire.py against OpenTelemetry's own encoder: the same message, field by
    field, for spans of every shape; and again with its caches warm."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from infra.otlp_wire import Encoder

    spans = _spans_of_every_shape()
    assert len(spans) == 12
    expected = encode_spans(spans)
    encoder = Encoder()
    for _ in range(2):
        ours = ExportTraceServiceRequest.FromString(encoder.request(spans))
        assert ours == expected
    assert len(ours.resource_spans) == 2 and len(ours.resource_spans[0].scope_spans) == 2
    # A batch of one span of each resource, in the other order.
    ours = ExportTraceServiceRequest.FromString(encoder.request([spans[-1], spans[0]]))
    assert ours == encode_spans([spans[-1], spans[0]])


def _normalised(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """Span ids numbered in order of appearance, times zeroed: what is random or a clock."""
    numbers: dict[bytes, bytes] = {}

    def number(span_id: bytes) -> bytes:
        return numbers.setdefault(span_id, len(numbers).to_bytes(8, "big"))

    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.span_id = number(span.span_id)
                if span.parent_span_id:
                    span.parent_span_id = number(span.parent_span_id)
                span.start_time_unix_nano = span.end_time_unix_nano = 0
                for event in span.events:
                    event.time_unix_nano = 0
    return request


def test_lean_spans_carry_what_the_sdk_spans_carry() -> None:
    """infra/spans.py records through the same API calls exactly what the SDK records: the
    SDK's spans through the SDK's encoder and ours through ours give one message."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from infra.otlp_wire import Encoder
    from infra.spans import LeanTracerProvider

    sdk = _normalised(encode_spans(_spans_of_every_shape(TracerProvider)))
    lean = _spans_of_every_shape(LeanTracerProvider)
    ours = _normalised(ExportTraceServiceRequest.FromString(Encoder().request(lean)))
    assert ours == sdk
    assert sum(len(ss.spans) for rs in ours.resource_spans for ss in rs.scope_spans) == 12


def test_lean_spans_honour_the_sdk_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler and span limits come from the standard OTEL_* variables; an exception
    leaving a span is recorded on it as the API's use_span does; the W3C header carries
    the span."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from infra.spans import LeanTracerProvider
    from infra.telemetry import inject

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    off = LeanTracerProvider().get_tracer("t")
    with off.start_as_current_span("dropped") as span:
        assert not span.is_recording() and span.get_span_context().is_valid
        assert inject({})["traceparent"].endswith("-00")

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
    provider = LeanTracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    with pytest.raises(ValueError), tracer.start_as_current_span("s", attributes={"a": "long"}):
        span = trace.get_current_span()
        span.set_attribute("b", "longer")
        span.set_attribute("c", 3)  # over the count limit
        span.set_attribute("d", PurePath("x"))  # not an attribute value: its str, as the SDK's
        carrier = inject({})
        raise ValueError("boom")
    (ended,) = memory.get_finished_spans()
    assert ended.attributes == {"a": "long", "b": "long"} and ended.dropped_attributes == 2
    assert ended.status.status_code is StatusCode.ERROR
    assert ended.status.description == "ValueError: boom"
    assert [e.name for e in ended.events] == ["exception"]
    assert ended.events[0].attributes["exception.type"] == "Valu"  # the length limit too
    assert carrier["traceparent"] == (
        f"00-{ended.context.trace_id:032x}-{ended.context.span_id:016x}-01"
    )
    assert not ended.is_recording()
    ended.set_attribute("late", 1)  # after the end: ignored
    assert "late" not in ended.attributes
