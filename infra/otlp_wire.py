"""OTLP's ``ExportTraceServiceRequest`` written straight to protobuf's wire format.

OpenTelemetry's encoder (``encode_spans``) builds a protobuf object per span, attribute and
value, then serialises them: ~40 µs of CPU per span on this machine, on the exporter's
thread of every service, under the GIL the requests need. This writes the same message's
bytes directly (the fields of opentelemetry-proto's ``trace/v1/trace.proto`` and
``common/v1/common.proto``, with their numbers), and reuses the bytes of what repeats from
span to span: the resource, the scope, and attribute pairs such as ``rpc.system=grpc``.
``tests/infra/test_otlp.py`` holds it to the SDK's encoder: the two messages parse equal.

The wire format (protobuf's encoding guide): a field is a varint key ``number << 3 |
type`` (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32) and its value; proto3 leaves
out scalars at their default, except in a ``oneof`` (AnyValue's kinds), which are always
written.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack

# SpanFlags: the flags word says whether the parent's remoteness is known, and if it is.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(key: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or an embedded message), key precomputed."""
    return bytes((key,)) + _varint(len(payload)) + payload


def _value(value: Any) -> bytes:
    """An AnyValue's body (oneof: written even at its default)."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"  # bool_value = 2
    if isinstance(value, str):
        return _field(0x0A, value.encode())  # string_value = 1
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int_value = 3 (two's complement)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)  # double_value = 4
    if isinstance(value, bytes):
        return _field(0x3A, value)  # bytes_value = 7
    if value is None:
        return b""
    if isinstance(value, Mapping):  # kvlist_value = 6, KeyValueList.values = 1
        return _field(0x32, b"".join(_field(0x0A, _key_value(str(k), v)) for k, v in value.items()))
    if isinstance(value, Sequence):  # array_value = 5, ArrayValue.values = 1
        return _field(0x2A, b"".join(_field(0x0A, _value(v)) for v in value))
    raise TypeError(f"cannot encode {type(value).__name__} as an OTLP value")


def _key_value(key: str, value: Any) -> bytes:
    return _field(0x0A, key.encode()) + _field(0x12, _value(value))  # key = 1, value = 2


class Encoder:
    """Encodes batches of finished spans; keeps the bytes of what repeats between them."""

    # Attribute pairs kept; cleared when full, so pairs that never repeat (an order id, a
    # client's address) cost a dict entry each and no more.
    MAX_CACHED = 4096

    def __init__(self) -> None:
        # (field key, attribute key, value's type, value) -> the encoded field: the same
        # pair is written under a different field number in a span, an event, a link, a
        # resource and a scope. The type keeps True apart from 1.
        self._pairs: dict[tuple[int, str, type, Any], bytes] = {}
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes]] = {}

    def _attributes(self, key_number: int, attributes: Mapping[str, Any] | None) -> bytes:
        """Every attribute as a repeated KeyValue field ``key_number`` (a precomputed key)."""
        if not attributes:
            return b""
        out = []
        pairs = self._pairs
        for key, value in attributes.items():
            if isinstance(value, str | bool | int | float):
                pair = (key_number, key, type(value), value)
                cached = pairs.get(pair)
                if cached is None:
                    if len(pairs) >= self.MAX_CACHED:
                        pairs.clear()
                    cached = pairs[pair] = _field(key_number, _key_value(key, value))
                out.append(cached)
            else:
                out.append(_field(key_number, _key_value(key, value)))
        return b"".join(out)

    def _resource(self, resource: Any) -> bytes:
        """ResourceSpans.resource (= 1): attributes (= 1), kept per resource object."""
        cached = self._resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            cached = self._resources[id(resource)] = (
                resource, _field(0x0A, self._attributes(0x0A, resource.attributes)))  # fmt: skip
        return cached[1]

    def _scope(self, scope: Any) -> bytes:
        """ScopeSpans.scope (= 1): name = 1, version = 2, attributes = 3."""
        cached = self._scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            body = b""
            if scope is not None:
                body = (
                    (_field(0x0A, scope.name.encode()) if scope.name else b"")
                    + (_field(0x12, scope.version.encode()) if scope.version else b"")
                    + self._attributes(0x1A, scope.attributes)
                )
            cached = self._scopes[id(scope)] = (scope, _field(0x0A, body))
        return cached[1]

    @staticmethod
    def _flags(parent: SpanContext | None) -> int:
        return _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)

    def span(self, span: ReadableSpan) -> bytes:
        """A Span message's body (trace.proto's field numbers in the comments)."""
        ctx = span.get_span_context()
        assert ctx is not None
        out = [
            b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"),  # trace_id = 1
            b"\x12\x08" + ctx.span_id.to_bytes(8, "big"),  # span_id = 2
        ]
        if ctx.trace_state:  # trace_state = 3
            state = ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())
            out.append(_field(0x1A, state.encode()))
        parent = span.parent
        if parent is not None:  # parent_span_id = 4
            out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        out.append(_field(0x2A, span.name.encode()))  # name = 5
        out.append(b"\x30" + _varint(span.kind.value + 1))  # kind = 6 (proto's UNSPECIFIED = 0)
        out.append(b"\x39" + _FIXED64(span.start_time or 0))  # start_time_unix_nano = 7
        out.append(b"\x41" + _FIXED64(span.end_time or 0))  # end_time_unix_nano = 8
        out.append(self._attributes(0x4A, span.attributes))  # attributes = 9
        if span.dropped_attributes:  # dropped_attributes_count = 10
            out.append(b"\x50" + _varint(span.dropped_attributes))
        for event in span.events:  # events = 11
            body = (
                b"\x09" + _FIXED64(event.timestamp)  # time_unix_nano = 1
                + _field(0x12, event.name.encode())  # name = 2
                + self._attributes(0x1A, event.attributes)  # attributes = 3
                + (b"\x20" + _varint(event.dropped_attributes) if event.dropped_attributes
                   else b"")  # dropped_attributes_count = 4
            )  # fmt: skip
            out.append(_field(0x5A, body))
        if span.dropped_events:  # dropped_events_count = 12
            out.append(b"\x60" + _varint(span.dropped_events))
        for link in span.links:  # links = 13
            body = (
                b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")  # trace_id = 1
                + b"\x12\x08" + link.context.span_id.to_bytes(8, "big")  # span_id = 2
                + self._attributes(0x22, link.attributes)  # attributes = 4
                + (b"\x28" + _varint(link.dropped_attributes) if link.dropped_attributes
                   else b"")  # dropped_attributes_count = 5
                + b"\x35" + _FIXED32(self._flags(link.context))  # flags = 6
            )  # fmt: skip
            out.append(_field(0x6A, body))
        if span.dropped_links:  # dropped_links_count = 14
            out.append(b"\x70" + _varint(span.dropped_links))
        status = span.status  # status = 15: message = 2, code = 3
        body = _field(0x12, status.description.encode()) if status.description else b""
        if status.status_code.value:
            body += b"\x18" + _varint(status.status_code.value)
        out.append(_field(0x7A, body))
        out.append(b"\x85\x01" + _FIXED32(self._flags(parent)))  # flags = 16 (fixed32)
        return b"".join(out)

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The ExportTraceServiceRequest for ``spans``, grouped by resource then scope (in
        the order they first appear, as the SDK's encoder groups them)."""
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope or None
            scopes = groups.setdefault(id(resource), (resource, {}))[1]
            scopes.setdefault(id(scope), (scope, []))[1].append(_field(0x12, self.span(span)))
        out = []
        for resource, scopes in groups.values():
            body = [self._resource(resource)]  # ResourceSpans.resource = 1
            for scope, encoded in scopes.values():  # scope_spans = 2
                scope_body = self._scope(scope) + b"".join(encoded)  # scope = 1, spans = 2
                if scope is not None and scope.schema_url:  # schema_url = 3
                    scope_body += _field(0x1A, scope.schema_url.encode())
                body.append(_field(0x12, scope_body))
            if resource.schema_url:  # schema_url = 3
                body.append(_field(0x1A, resource.schema_url.encode()))
            out.append(_field(0x0A, b"".join(body)))  # resource_spans = 1
        return b"".join(out)
