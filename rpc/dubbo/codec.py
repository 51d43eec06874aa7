"""The Dubbo 2 wire protocol, without I/O: frames in, frames out.

Header (16 bytes, big-endian)::

    0-1   magic 0xdabb
    2     flags: 0x80 request, 0x40 two-way, 0x20 event; low 5 bits serialization (2 = hessian2)
    3     status (responses): 20 OK, 30/31 timeouts, 40 bad request, 50 bad response,
          60 service not found, 70 service error, 80 server error, 90 client error,
          100 thread pool exhausted
    4-11  request id
    12-15 body length

A request body is a Hessian 2 stream: dubbo version, service path, service version, method,
parameter-type descriptor (JVM syntax, e.g. ``Ljava/lang/String;I``), the arguments, and an
attachments map. A response body with status 20 is: a flag (0 exception, 1 value, 2 null;
3-5 the same followed by attachments), the value or exception, [attachments]; with any
other status, an error message string. A heartbeat is an event whose body is null.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from rpc.dubbo.hessian2 import Decoder, Encoder, HessianError

MAGIC = 0xDABB
HEADER = struct.Struct(">HBBqI")  # magic, flags, status, request id, body length
HEADER_SIZE = HEADER.size
FLAG_REQUEST, FLAG_TWOWAY, FLAG_EVENT = 0x80, 0x40, 0x20
SERIALIZATION_MASK = 0x1F
HESSIAN2 = 2
DEFAULT_MAX_BODY = 8 * 1024 * 1024  # Dubbo's default payload limit
PROTOCOL_VERSION = "2.0.2"


class Status(enum.IntEnum):
    OK = 20
    CLIENT_TIMEOUT = 30
    SERVER_TIMEOUT = 31
    BAD_REQUEST = 40
    BAD_RESPONSE = 50
    SERVICE_NOT_FOUND = 60
    SERVICE_ERROR = 70
    SERVER_ERROR = 80
    CLIENT_ERROR = 90
    SERVER_THREADPOOL_EXHAUSTED_ERROR = 100


class ResponseFlag(enum.IntEnum):
    WITH_EXCEPTION = 0
    VALUE = 1
    NULL_VALUE = 2
    WITH_EXCEPTION_WITH_ATTACHMENTS = 3
    VALUE_WITH_ATTACHMENTS = 4
    NULL_VALUE_WITH_ATTACHMENTS = 5


class FrameError(ValueError):
    """The stream is not Dubbo (wrong magic) or a frame breaks a limit. ``request_id`` is
    set when the header was readable, so the peer can be told which request failed."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass
class Frame:
    request_id: int
    is_request: bool
    twoway: bool = True
    event: bool = False
    status: int = Status.OK
    serialization: int = HESSIAN2
    body: bytes = b""

    def __repr__(self) -> str:
        kind = "request" if self.is_request else f"response {self.status}"
        extra = " event" if self.event else ""
        return f"<dubbo {kind}{extra} id={self.request_id} {len(self.body)}B>"


def encode_frame(frame: Frame) -> bytes:
    flags = frame.serialization & SERIALIZATION_MASK
    if frame.is_request:
        flags |= FLAG_REQUEST
        if frame.twoway:
            flags |= FLAG_TWOWAY
    if frame.event:
        flags |= FLAG_EVENT
    status = 0 if frame.is_request else int(frame.status)
    return HEADER.pack(MAGIC, flags, status, frame.request_id, len(frame.body)) + frame.body


class FrameDecoder:
    """Feed bytes as they arrive; get whole frames back. Raises FrameError on a stream that
    is not Dubbo or a body over ``max_body`` (the caller answers 40 and closes)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= HEADER_SIZE:
            magic, flags, status, request_id, length = HEADER.unpack_from(self.buffer)
            if magic != MAGIC:
                raise FrameError(f"bad magic {magic:#06x}: not a Dubbo stream")
            if length > self.max_body:
                raise FrameError(
                    f"body of {length} bytes is over the {self.max_body}-byte limit", request_id
                )
            if len(self.buffer) < HEADER_SIZE + length:
                break
            body = bytes(self.buffer[HEADER_SIZE : HEADER_SIZE + length])
            del self.buffer[: HEADER_SIZE + length]
            frames.append(
                Frame(
                    request_id=request_id,
                    is_request=bool(flags & FLAG_REQUEST),
                    twoway=bool(flags & FLAG_TWOWAY),
                    event=bool(flags & FLAG_EVENT),
                    status=status,
                    serialization=flags & SERIALIZATION_MASK,
                    body=body,
                )
            )
        return frames


# -- bodies --------------------------------------------------------------------------------
_DESCRIPTOR = re.compile(r"\[*(?:[VZBCDFIJS]|L[^;]+;)")


def parse_descriptor(descriptor: str) -> list[str]:
    """``Ljava/lang/String;I[J`` -> ``['Ljava/lang/String;', 'I', '[J']``."""
    types = _DESCRIPTOR.findall(descriptor)
    if "".join(types) != descriptor:
        raise HessianError(f"bad parameter descriptor {descriptor!r}")
    return types


@dataclass
class Invocation:
    method: str
    path: str
    version: str = ""
    args: list[Any] = field(default_factory=list)
    descriptor: str = ""
    attachments: dict[str, Any] = field(default_factory=dict)
    dubbo_version: str = PROTOCOL_VERSION

    def __repr__(self) -> str:
        return f"<{self.path}:{self.version}.{self.method}({self.descriptor}) {self.attachments}>"


def decode_invocation(body: bytes) -> Invocation:
    decoder = Decoder(body)
    dubbo_version = decoder.read_string()
    path = decoder.read_string()
    version = decoder.read()
    method = decoder.read_string()
    descriptor = decoder.read_string()
    args = [decoder.read() for _ in parse_descriptor(descriptor)]
    attachments = decoder.read() if not decoder.at_end else {}
    if not isinstance(attachments, dict):
        raise HessianError("attachments must be a map")
    return Invocation(
        method=method,
        path=path,
        version=version if isinstance(version, str) else "",
        args=args,
        descriptor=descriptor,
        attachments={str(k): v for k, v in attachments.items()},
        dubbo_version=dubbo_version,
    )


def encode_invocation(invocation: Invocation) -> bytes:
    encoder = Encoder()
    for value in (
        invocation.dubbo_version,
        invocation.path,
        invocation.version,
        invocation.method,
        invocation.descriptor,
    ):
        encoder.write(value)
    for arg in invocation.args:
        encoder.write(arg)
    encoder.write(invocation.attachments)
    return encoder.getvalue()


def supports_response_attachments(dubbo_version: str) -> bool:
    """As Dubbo decides: protocol versions 2.0.2 to 2.0.99 read flags 3-5; older ones and
    framework versions (2.5.3, 2.6.x, as old clients send) do not."""
    parts = dubbo_version.split(".")
    try:
        number = sum(int(p) * 100**i for i, p in enumerate(reversed(parts[:3])))
    except ValueError:
        return False
    return len(parts) >= 3 and 20002 <= number <= 20099


def encode_result(value: Any, *, exception: bool, attachments: dict[str, Any] | None) -> bytes:
    """A status-20 response body. ``attachments`` None: the caller cannot read them."""
    encoder = Encoder()
    if exception:
        flag = ResponseFlag.WITH_EXCEPTION
    elif value is None:
        flag = ResponseFlag.NULL_VALUE
    else:
        flag = ResponseFlag.VALUE
    if attachments is not None:
        flag = ResponseFlag(flag + 3)
    encoder.write(int(flag))
    if flag not in (ResponseFlag.NULL_VALUE, ResponseFlag.NULL_VALUE_WITH_ATTACHMENTS):
        encoder.write(value)
    if attachments is not None:
        encoder.write(attachments)
    return encoder.getvalue()


@dataclass
class Result:
    value: Any = None
    exception: Any = None
    attachments: dict[str, Any] = field(default_factory=dict)


def decode_result(body: bytes) -> Result:
    decoder = Decoder(body)
    flag = decoder.read_int()
    if flag not in ResponseFlag._value2member_map_:
        raise HessianError(f"unknown response flag {flag}")
    result = Result()
    if flag in (ResponseFlag.WITH_EXCEPTION, ResponseFlag.WITH_EXCEPTION_WITH_ATTACHMENTS):
        result.exception = decoder.read()
    elif flag in (ResponseFlag.VALUE, ResponseFlag.VALUE_WITH_ATTACHMENTS):
        result.value = decoder.read()
    if flag >= ResponseFlag.WITH_EXCEPTION_WITH_ATTACHMENTS:
        attachments = decoder.read()
        result.attachments = attachments if isinstance(attachments, dict) else {}
    return result


def error_body(message: str) -> bytes:
    """The body of a response whose status is not OK: the error message."""
    encoder = Encoder()
    encoder.write(message)
    return encoder.getvalue()
