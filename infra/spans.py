"""A lean implementation of OpenTelemetry's tracing API: what every service records spans with.

The services instrument through the OpenTelemetry API (``tracer.start_as_current_span``,
``span.set_attribute``, ``trace.get_current_span``, the W3C propagators), and the SDK's
settings still apply: the sampler (``OTEL_TRACES_SAMPLER[_ARG]``), the span limits
(``OTEL_SPAN_*_LIMIT``, ``OTEL_ATTRIBUTE_*``), the resource, the batch processor
(``OTEL_BSP_*``) and any SDK span processor or exporter. What differs is the span object.
The SDK's keeps its attributes in a locked ``BoundedAttributes`` that cleans every value,
copies itself into a ``ReadableSpan`` when it ends and goes through a multi-processor
fan-out; at ~27 spans a visit that was a visible share of every hop's CPU (#17). Here a
span is a slotted object with a plain dict: a value of the four primitive types is taken
as is, anything else goes through the SDK's own cleaning, and the ended span itself is
what the processors and the exporter (``infra.otlp_wire``) read.

A span is used from one thread (the event loop's) until it ends; after ``end`` nothing
changes it, so the exporter's thread reads it without a lock.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.attributes import _clean_attribute_value
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler, _get_from_env_or_default
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import INVALID_SPAN_ID, INVALID_TRACE_ID

log = logging.getLogger("d11.spans")

_PRIMITIVE = frozenset({str, bool, int, float})
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
_getrandbits = random.getrandbits


def _new_id(bits: int, invalid: int) -> int:
    value = _getrandbits(bits)
    while value == invalid:  # one chance in 2**64: as the SDK's RandomIdGenerator
        value = _getrandbits(bits)
    return value


class Event:
    """A span event, read by the encoder as the SDK's ``Event`` is."""

    __slots__ = ("attributes", "dropped_attributes", "name", "timestamp")

    def __init__(self, name: str, attributes: dict[str, Any], timestamp: int, dropped: int):
        self.name, self.attributes, self.timestamp = name, attributes, timestamp
        self.dropped_attributes = dropped


class LeanSpan(trace.Span):
    """A recording span. Its fields are the SDK ``ReadableSpan``'s names, so exporters and
    ``infra.otlp_wire`` read it as they read the SDK's."""

    __slots__ = (
        "_tracer",
        "attributes",
        "context",
        "dropped_attributes",
        "dropped_events",
        "dropped_links",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "start_time",
        "status",
    )  # fmt: skip

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        links: Sequence[Link],
        start_time: int,
    ) -> None:
        self._tracer = tracer
        self.name, self.context, self.parent, self.kind = name, context, parent, kind
        self.start_time, self.end_time = start_time, None
        self.attributes: dict[str, Any] = {}
        self.dropped_attributes = self.dropped_events = self.dropped_links = 0
        self.events: list[Event] = []
        self.status = _UNSET
        if attributes:
            self.set_attributes(attributes)
        limit = tracer.limits.max_links
        self.links = tuple(links[:limit] if limit is not None else links)
        self.dropped_links = len(links) - len(self.links)

    # What an exporter reads besides the fields.
    @property
    def resource(self) -> Resource:
        return self._tracer.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracer.scope

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self.end_time is not None:
            return
        attributes = self.attributes
        limits = self._tracer.limits
        if type(value) not in _PRIMITIVE or type(key) is not str or not key:
            if not key or not isinstance(key, str):
                log.warning("invalid attribute key %r dropped", key)
                return
            value = _clean_attribute_value(value, limits.max_span_attribute_length)
            if value is None:
                return
        elif type(value) is str and limits.max_span_attribute_length is not None:
            value = value[: limits.max_span_attribute_length]
        if (
            key not in attributes
            and limits.max_span_attributes is not None
            and (len(attributes) >= limits.max_span_attributes)
        ):
            self.dropped_attributes += 1
            return
        attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
    ) -> None:  # fmt: skip
        if self.end_time is not None:
            return
        limits = self._tracer.limits
        if limits.max_events is not None and len(self.events) >= limits.max_events:
            self.dropped_events += 1
            return
        cleaned: dict[str, Any] = {}
        dropped = 0
        for key, value in (attributes or {}).items():
            if limits.max_event_attributes is not None and (
                len(cleaned) >= limits.max_event_attributes
            ):
                dropped += 1
                continue
            value = _clean_attribute_value(value, limits.max_attribute_length)
            if value is not None and isinstance(key, str) and key:
                cleaned[key] = value
        self.events.append(Event(name, cleaned, timestamp or time.time_ns(), dropped))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if self.end_time is not None or not context.is_valid:
            return
        limit = self._tracer.limits.max_links
        if limit is not None and len(self.links) >= limit:
            self.dropped_links += 1
            return
        self.links = (*self.links, Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET never overrides.
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self.status = status

    def record_exception(
        self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None, escaped: bool = False,
    ) -> None:  # fmt: skip
        module, qualname = type(exception).__module__, type(exception).__qualname__
        event = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }  # fmt: skip
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            log.warning("span %r ended twice", self.name)
            return
        self.end_time = end_time or time.time_ns()
        for processor in self._tracer.processors:
            processor.on_end(self)  # type: ignore[arg-type]  # read as a ReadableSpan

    def __repr__(self) -> str:
        return f"LeanSpan({self.name!r}, {self.context!r})"


class _CurrentSpan:
    """``start_as_current_span``'s context manager: a class, cheaper than a generator's."""

    __slots__ = ("end_on_exit", "record_exception", "set_status", "span", "token")

    def __init__(self, span: trace.Span, end_on_exit: bool, record_exception: bool,
                 set_status: bool) -> None:  # fmt: skip
        self.span, self.end_on_exit = span, end_on_exit
        self.record_exception, self.set_status = record_exception, set_status

    def __enter__(self) -> trace.Span:
        self.token = context_api.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind, exc, tb) -> None:
        context_api.detach(self.token)
        span = self.span
        # As the API's use_span: Exception subclasses only (not GeneratorExit, Cancelled...).
        if isinstance(exc, Exception) and span.is_recording():
            if self.record_exception:
                span.record_exception(exc)
            if self.set_status:
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        if self.end_on_exit:
            span.end()


class LeanTracer(trace.Tracer):
    def __init__(self, provider: LeanTracerProvider, scope: InstrumentationScope) -> None:
        self.provider, self.scope = provider, scope
        self.resource, self.limits = provider.resource, provider.limits
        self.sampler, self.processors = provider.sampler, provider.processors

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = _new_id(128, INVALID_TRACE_ID)
        else:
            trace_id = parent.trace_id
        links = [link for link in links or () if link.context.is_valid]
        decision = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        span_context = SpanContext(
            trace_id, _new_id(64, INVALID_SPAN_ID), is_remote=False,
            trace_flags=_SAMPLED if decision.decision.is_sampled() else _NOT_SAMPLED,
            trace_state=decision.trace_state,
        )  # fmt: skip
        if not decision.decision.is_recording():
            return trace.NonRecordingSpan(span_context)
        span = LeanSpan(self, name, span_context, parent, kind, decision.attributes, links,
                        start_time or time.time_ns())  # fmt: skip
        for processor in self.processors:
            processor.on_start(span, parent_context=context)  # type: ignore[arg-type]
        return span

    def start_as_current_span(  # type: ignore[override]  # a class, not a generator
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _CurrentSpan:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        return _CurrentSpan(span, end_on_exit, record_exception, set_status_on_exception)


class LeanTracerProvider(trace.TracerProvider):
    """The API's tracer provider with the SDK's settings and processors, and lean spans."""

    def __init__(
        self,
        resource: Resource | None = None,
        sampler: Sampler | None = None,
        limits: SpanLimits | None = None,
    ) -> None:
        self.resource = resource or Resource.create({})
        self.sampler = sampler or _get_from_env_or_default()
        self.limits = limits or SpanLimits()
        self.processors: tuple[SpanProcessor, ...] = ()
        self._tracers: dict[tuple[str, str | None, str | None], LeanTracer] = {}

    def add_span_processor(self, processor: SpanProcessor) -> None:
        self.processors = (*self.processors, processor)
        for tracer in self._tracers.values():
            tracer.processors = self.processors

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> LeanTracer:
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        found = self._tracers.get(key)
        if found is None:
            scope = InstrumentationScope(instrumenting_module_name,
                                         instrumenting_library_version, schema_url)  # fmt: skip
            found = self._tracers[key] = LeanTracer(self, scope)
        return found

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self.processors)

    def shutdown(self) -> None:
        for processor in self.processors:
            processor.shutdown()
