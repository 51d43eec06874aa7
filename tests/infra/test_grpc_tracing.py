"""The traced gRPC channel (infra.grpc_service.TracedChannel) with a generated stub against
a real grpc.aio server (the standard health service): a CLIENT span per call carrying the
call's status, the trace sent in the call's metadata, and errors raised to the caller as
grpc.aio raises them."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from infra import telemetry
from infra.grpc_service import channel
from infra.spans import LeanTracerProvider


class _Recording(health.aio.HealthServicer):
    """The health service, keeping the metadata each Check came with."""

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[dict[str, str]] = []

    async def Check(self, request, context):  # gRPC's method name
        self.metadata.append(dict(context.invocation_metadata()))
        return await super().Check(request, context)


def test_traced_channel_spans_status_and_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = LeanTracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("test"))

    async def run() -> grpc.StatusCode:
        server = grpc.aio.server()
        servicer = _Recording()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ch = channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            ok = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert ok.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            sent = servicer.metadata
        finally:
            await ch.close()
            await server.stop(0)
        spans = memory.get_finished_spans()
        assert [s.name for s in spans] == ["grpc.health.v1.Health/Check"] * 2
        for span, headers in zip(spans, sent, strict=True):
            ctx = span.get_span_context()
            assert headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
            assert span.attributes["rpc.system"] == "grpc"
            assert span.attributes["rpc.service"] == "grpc.health.v1.Health"
        assert spans[0].attributes["rpc.grpc.status_code"] == "OK"
        assert spans[0].attributes["rpc.response.size"] == ok.ByteSize()
        assert spans[1].attributes["rpc.grpc.status_code"] == "NOT_FOUND"
        assert spans[1].status.status_code is StatusCode.ERROR
        assert not spans[1].events  # the error is the caller's, not an exception event here
        return error.value.code()

    assert asyncio.run(run()) is grpc.StatusCode.NOT_FOUND
