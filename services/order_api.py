"""The order contract, once: its domain types and the :class:`OrderApi` every wire
implements on both sides.

The order domain (:class:`services.orders.Orders`) implements it for the servers; each
wire's client (``services/wires/``) implements it for the controller, mapping these types
to its own messages and back exactly once. The caller's deadline is an explicit argument
(seconds left) that every wire carries to the server.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol

STATUSES = ("PENDING", "CONFIRMED", "REJECTED", "CANCELLED")


@dataclass(frozen=True)
class Line:
    item_id: int
    quantity: int
    unit_price_cents: int = 0

    def __str__(self) -> str:
        return f"{self.quantity}x#{self.item_id}"


@dataclass(frozen=True)
class PlaceOrder:
    """A phone's order: what the client sends under its Idempotency-Key."""

    idempotency_key: str
    user_id: str
    lines: tuple[Line, ...]
    coupon_code: str = ""

    def fingerprint(self) -> str:
        """What makes two requests with one key 'the same request'."""
        body = {
            "user": self.user_id,
            "lines": sorted((ln.item_id, ln.quantity) for ln in self.lines),
            "coupon": self.coupon_code,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StatusChange:
    status: str
    at_ms: int
    note: str = ""


@dataclass(frozen=True)
class Order:
    """An order as every client of the contract sees it."""

    order_id: str
    user_id: str
    lines: tuple[Line, ...]
    status: str
    total_cents: int
    discount_cents: int = 0
    coupon_code: str = ""
    idempotency_key: str = ""
    created_at_ms: int = 0
    updated_at_ms: int = 0
    reason: str = ""
    history: tuple[StatusChange, ...] = ()

    @property
    def payable_cents(self) -> int:
        return self.total_cents - self.discount_cents

    def __str__(self) -> str:
        lines = ", ".join(map(str, self.lines))
        return f"order {self.order_id} {self.status} user={self.user_id} [{lines}]"


class OrderApi(Protocol):
    """Place, read, cancel and list orders. ``timeout`` is what is left of the caller's
    deadline, in seconds; errors are :class:`rpc.errors.DomainError`. Every operation is
    idempotent (placing by its key), so a wire client may retry it."""

    async def place(self, command: PlaceOrder, *, timeout: float) -> Order: ...

    async def get(self, order_id: str, *, timeout: float) -> Order: ...

    async def cancel(self, order_id: str, reason: str, *, timeout: float) -> Order: ...

    async def list(self, user_id: str, limit: int, *, timeout: float) -> list[Order]: ...
