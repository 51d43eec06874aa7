"""OTLP/HTTP trace payloads (protobuf or JSON) to plain span records. No I/O here.

The JSON encoding differs from protobuf's canonical JSON in one way that matters: trace and
span ids are hex strings, not base64 (OTLP spec, "JSON Protobuf Encoding"). Enum values may
be integers or names; 64-bit integers may be strings or numbers.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in trace_pb2.Span.SpanKind.items()}
_STATUS = {v: k.removeprefix("STATUS_CODE_") for k, v in trace_pb2.Status.StatusCode.items()}


class MalformedPayload(ValueError):
    pass


@dataclass
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        ms = (self.end_ns - self.start_ns) / 1e6
        return (
            f"{self.trace_id}/{self.span_id} {self.service}: {self.name} {ms:.3f} ms {self.status}"
        )


def any_value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


def _hex_ids_to_base64(obj: dict[str, Any]) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            try:
                obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise MalformedPayload(f"{key} {value[:40]!r} is not hex") from None


def parse_request(body: bytes, content_type: str) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise MalformedPayload(f"not an ExportTraceServiceRequest: {exc}") from None
        return request
    try:
        doc = json.loads(body)
        for rs in doc.get("resourceSpans", ()):
            for ss in rs.get("scopeSpans", ()):
                for span in ss.get("spans", ()):
                    _hex_ids_to_base64(span)
                    for link in span.get("links", ()):
                        _hex_ids_to_base64(link)
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except MalformedPayload:
        raise
    except (ValueError, TypeError, AttributeError, json_format.ParseError) as exc:
        raise MalformedPayload(f"not OTLP JSON: {exc}") from None
    return request


def spans(request: trace_service_pb2.ExportTraceServiceRequest) -> tuple[list[SpanRecord], int]:
    """The spans of a request, and how many were rejected (bad ids or times)."""
    records: list[SpanRecord] = []
    rejected = 0
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        service = str(resource.get("service.name", "unknown_service"))
        for ss in rs.scope_spans:
            for span in ss.spans:
                if (
                    len(span.trace_id) != 16
                    or len(span.span_id) != 8
                    or span.trace_id == bytes(16)
                    or span.span_id == bytes(8)
                    or len(span.parent_span_id) not in (0, 8)
                    or span.end_time_unix_nano < span.start_time_unix_nano
                ):
                    rejected += 1
                    continue
                records.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        service=service,
                        name=span.name,
                        kind=_KINDS.get(span.kind, "UNSPECIFIED"),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status=_STATUS.get(span.status.code, "UNSET"),
                        status_message=span.status.message,
                        attributes=attributes(span.attributes),
                        events=[
                            {
                                "name": e.name,
                                "time_ns": e.time_unix_nano,
                                "attributes": attributes(e.attributes),
                            }
                            for e in span.events
                        ],
                        resource=resource,
                    )
                )
    return records, rejected


def response(rejected: int, message: str, content_type: str) -> bytes:
    reply = trace_service_pb2.ExportTraceServiceResponse()
    if rejected:
        reply.partial_success.rejected_spans = rejected
        reply.partial_success.error_message = message
    if content_type == PROTOBUF:
        return reply.SerializeToString()
    return json_format.MessageToJson(reply, indent=None).encode()
