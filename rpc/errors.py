"""One error model for the order contract, mapped to each protocol's own way of failing.

The domain raises :class:`OrderError` with a :class:`Code`; each wire translates it with the
tables here (gRPC status codes now; SOAP faults and Dubbo statuses join with their servers),
and the controller turns what comes back into an HTTP status and an RFC 9457 problem.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import grpc


class Code(enum.Enum):
    INVALID_ARGUMENT = "invalid-argument"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"  # idempotency key reused with another body, illegal transition
    SOLD_OUT = "sold-out"
    RATE_LIMITED = "rate-limited"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass
class OrderError(Exception):
    code: Code
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


GRPC_STATUS: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    Code.SOLD_OUT: grpc.StatusCode.FAILED_PRECONDITION,
    Code.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}
FROM_GRPC_STATUS: dict[grpc.StatusCode, Code] = {v: k for k, v in GRPC_STATUS.items()}

HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.CONFLICT: 409,
    Code.SOLD_OUT: 409,
    Code.RATE_LIMITED: 429,
    Code.DEADLINE_EXCEEDED: 504,
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
}


def from_grpc(error: grpc.aio.AioRpcError) -> OrderError:
    code = FROM_GRPC_STATUS.get(error.code(), Code.INTERNAL)
    if error.code() == grpc.StatusCode.UNKNOWN:
        code = Code.INTERNAL
    return OrderError(code, error.details() or error.code().name)
