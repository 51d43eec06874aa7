"""Tracing and metrics set-up shared by every service.

Tracing is OpenTelemetry with W3C ``traceparent`` propagation and an OTLP/HTTP exporter. The
SDK reads the standard ``OTEL_*`` variables itself (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_TRACES_EXPORTER``, ``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_BSP_*``, ``OTEL_PROPAGATORS``, ``OTEL_SDK_DISABLED``), so the same services can be
pointed at Jaeger or any OTLP backend without a code change. The span objects are the lean
ones of :mod:`infra.spans` (the API and the SDK's settings kept, a third of the CPU).

The carriers differ per protocol (HTTP headers, gRPC metadata, later SOAP headers and Dubbo
attachments) but all go through :func:`inject` and :func:`extract` here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infra.config import Settings
from infra.spans import LeanTracerProvider

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "TRACE_HEADERS",
    "Metrics",
    "SpanKind",
    "child_span",
    "client_span",
    "extract",
    "format_trace_id",
    "host_tracer",
    "inject",
    "server_span",
    "setup_tracing",
    "tracer",
    "untraced_headers",
]

_TRACER_NAME = "double-11"
# The W3C trace context headers: a proxy that traces sends its own, not the caller's.
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_tracer: trace.Tracer | None = None  # set by setup_tracing; None = tracing off
# Several hosts in one process (infra.group): each host's components are built and started
# with its own tracer here, and the servers, clients and tasks they start inherit it, so a
# span is the host's without every call site passing a tracer.
_host_tracer: ContextVar[trace.Tracer | None] = ContextVar("d11_host_tracer", default=None)


@contextmanager
def host_scope(tracer: trace.Tracer | None) -> Iterator[None]:
    """Everything started inside (servers, client channels, tasks) traces as this host."""
    token = _host_tracer.set(tracer)
    try:
        yield
    finally:
        _host_tracer.reset(token)


def _current() -> trace.Tracer | None:
    return _host_tracer.get() or _tracer


def setup_tracing(settings: Settings, *, install: bool = True) -> LeanTracerProvider | None:
    """The tracer provider for this service, installed as the global one unless
    ``install`` is false (several hosts in one process each keep their own, see
    infra.group); None when the SDK is disabled."""
    env = settings.env or os.environ  # a host's own variables when it shares a process
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    attributes = {
        "service.name": env.get("OTEL_SERVICE_NAME") or settings.name,
        "service.namespace": "double-11",
        "service.instance.id": f"{settings.name}@{settings.address}:{settings.port}",
        "host.name": settings.name,
        "d11.role": settings.role,
    }
    # The data centre (site) and AZ, in OpenTelemetry's cloud conventions: the viewer marks
    # the hop where a request crosses from one site to another.
    for variable, attribute in (("D11_SITE", "cloud.region"),
                                ("D11_AZ", "cloud.availability_zone")):  # fmt: skip
        if env.get(variable):
            attributes[attribute] = env[variable]
    resource = Resource.create(attributes)
    # The SDK's sampler, limits, resource and batch processor; lean span objects (infra.spans).
    provider = LeanTracerProvider(resource=resource)
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower()
    if "otlp" in exporters:
        # OTLP/HTTP as the SDK's exporter sends it, without the `requests` stack it loads
        # into every process (infra/otlp.py).
        from infra.otlp import SpanExporterHTTP

        provider.add_span_processor(BatchSpanProcessor(SpanExporterHTTP()))
    if install:
        trace.set_tracer_provider(provider)
        global _tracer
        _tracer = provider.get_tracer(_TRACER_NAME)
    return provider


def host_tracer(provider: LeanTracerProvider) -> trace.Tracer:
    return provider.get_tracer(_TRACER_NAME)


def tracing_enabled() -> bool:
    return _current() is not None


def tracer() -> trace.Tracer:
    return _current() or trace.get_tracer(_TRACER_NAME)


def format_trace_id(span: Span | None = None) -> str:
    """Hex trace id of ``span`` (default: the current span), or '' outside any trace."""
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def untraced_headers() -> dict[str, str]:
    """Headers for background calls (registry heartbeats, discovery polls): a W3C
    ``traceparent`` with the sampled flag off, so the callee's parent-based sampler records
    nothing. Every host makes such calls every second; traced, they would be most of the
    store and push the visits out of the viewer's list of recent traces."""
    return {"traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00"}


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current context (``traceparent``, ``tracestate``, baggage) into a carrier."""
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    return propagate.extract(carrier)


@contextmanager
def server_span(
    name: str,
    carrier: Mapping[str, str],
    attributes: Mapping[str, Any] | None = None,
    tracer: trace.Tracer | None = None,
) -> Iterator[Span]:
    """A SERVER span continuing the trace found in an incoming carrier. ``tracer``: the
    host's own (several hosts in one process), else the process's."""
    chosen = tracer or _current()
    if chosen is None:  # tracing off: no span objects, no context switches
        yield trace.INVALID_SPAN
        return
    with chosen.start_as_current_span(
        name,
        context=extract(carrier),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span


# Docker mode: a VPC member's RPC peers are all in its VPC, so its calls cross the VXLAN
# overlay with this VNI (infra/container.py); compose.yaml sets it.
_VNI = int(os.environ.get("D11_VNI") or 0)


@contextmanager
def client_span(
    name: str, attributes: Mapping[str, Any] | None = None, tracer: trace.Tracer | None = None
) -> Iterator[tuple[Span, dict[str, str]]]:
    """A CLIENT span and the carrier (headers/metadata) to send with the outgoing call.
    With tracing off the carrier is empty: callers pass on what they received instead."""
    chosen = tracer or _current()
    if chosen is None:
        yield trace.INVALID_SPAN, {}
        return
    if _VNI and attributes and "rpc.system" in attributes:
        attributes = {**attributes, "d11.net.vni": _VNI}
    with chosen.start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=attributes, record_exception=True
    ) as span:
        yield span, inject({})


@contextmanager
def child_span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A CLIENT span only inside a trace already under way (say, an HTTPDNS request that
    brought a traceparent); work with no trace to join starts none."""
    chosen = _current()
    if chosen is None or not trace.get_current_span().get_span_context().is_valid:
        yield trace.INVALID_SPAN
        return
    with chosen.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def mark_error(span: Span, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message))


class Metrics:
    """Per-service Prometheus metrics, in a registry of the service's own (not the global one,
    so tests can start several services in one process)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "d11_requests",
            "Requests handled, by protocol, operation and outcome.",
            ["protocol", "operation", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "d11_request_duration_seconds",
            "Time to handle a request, by protocol and operation.",
            ["protocol", "operation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        from infra import otlp

        Gauge(
            "d11_spans_dropped_total",
            "Spans this process's exporters dropped (the collector down, refusing or slow).",
            registry=self.registry,
        ).set_function(otlp.dropped)
        # Which process answered a scrape: the gateway's workers share a port and each
        # counts its own requests, so a scraper keeps their counters apart by this.
        Gauge("d11_process_pid", "The process serving this scrape.",
              registry=self.registry).set_function(os.getpid)  # fmt: skip
        self.service = service
        # labels() hashes and locks on every call; the children are few, so keep them.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, protocol: str, operation: str, outcome: str, started: float) -> None:
        key = (protocol, operation, outcome)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(protocol, operation, outcome),
                self.latency.labels(protocol, operation),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)
