"""One error model for every Double-11 service, mapped to each protocol's way of failing.

Services raise :class:`DomainError` with a :class:`Code`; each wire translates it with the
tables here (gRPC status codes now; SOAP faults and Dubbo statuses join with their servers)
and the controller turns what comes back into an HTTP status and an RFC 9457 problem.

Several codes share a gRPC status (sold out and a refused coupon are both
FAILED_PRECONDITION), so the exact code also travels in the trailing metadata key
``d11-error-code``; a plain gRPC client still sees the right standard status.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc


class Code(enum.Enum):
    INVALID_ARGUMENT = "invalid-argument"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"  # idempotency key reused with another body, illegal transition
    SOLD_OUT = "sold-out"
    UNPROCESSABLE = "unprocessable"  # well-formed but refused: unknown item, coupon refused
    RATE_LIMITED = "rate-limited"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"

    @property
    def transient(self) -> bool:
        """Worth retrying with the same idempotency key (nothing was decided)."""
        return self in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)


@dataclass
class DomainError(Exception):
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
    Code.UNPROCESSABLE: grpc.StatusCode.FAILED_PRECONDITION,
    Code.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}
# For statuses from a peer that sent no d11-error-code (first match wins).
FROM_GRPC_STATUS: dict[grpc.StatusCode, Code] = {}
for _code, _status in GRPC_STATUS.items():
    FROM_GRPC_STATUS.setdefault(_status, _code)

HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.CONFLICT: 409,
    Code.SOLD_OUT: 409,
    Code.UNPROCESSABLE: 422,
    Code.RATE_LIMITED: 429,
    Code.DEADLINE_EXCEEDED: 504,
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
}

CODE_METADATA_KEY = "d11-error-code"
DETAIL_METADATA_KEY = "d11-error-detail"  # JSON object


def from_grpc(error: grpc.aio.AioRpcError) -> DomainError:
    """The domain error behind a failed call (UNKNOWN and unmapped statuses: INTERNAL)."""
    trailing = dict(error.trailing_metadata() or ())
    try:
        code = Code(trailing.get(CODE_METADATA_KEY, ""))
    except ValueError:
        code = FROM_GRPC_STATUS.get(error.code(), Code.INTERNAL)
    try:
        detail = json.loads(trailing.get(DETAIL_METADATA_KEY, "{}"))
    except ValueError:
        detail = {}
    return DomainError(
        code, error.details() or error.code().name, detail if isinstance(detail, dict) else {}
    )


H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def grpc_method(handler: H) -> H:
    """Servicer-method decorator: a DomainError becomes its gRPC status (with the exact code
    in trailing metadata)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except DomainError as error:
            metadata = [(CODE_METADATA_KEY, error.code.value)]
            if error.detail:
                metadata.append((DETAIL_METADATA_KEY, json.dumps(error.detail)))
            context.set_trailing_metadata(metadata)
            await context.abort(GRPC_STATUS[error.code], error.message)

    return wrapper  # type: ignore[return-value]
