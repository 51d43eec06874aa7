"""The order domain used by every order-service protocol.

Walking-skeleton version: orders live in memory, validated and idempotent by key. The
place-order saga (inventory, coupon, durable store) replaces the storage behind this same
interface.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from dataclasses import dataclass, field, replace

from rpc.errors import Code, OrderError

MAX_LINES = 50
MAX_QUANTITY = 1000


class Status(enum.Enum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class Line:
    item_id: int
    quantity: int
    unit_price_cents: int = 0


@dataclass(frozen=True)
class PlaceOrder:
    idempotency_key: str
    user_id: str
    lines: tuple[Line, ...]
    coupon_code: str = ""


@dataclass(frozen=True)
class Order:
    order_id: str
    user_id: str
    lines: tuple[Line, ...]
    coupon_code: str
    status: Status
    total_cents: int
    discount_cents: int
    idempotency_key: str
    created_at_ms: int
    updated_at_ms: int
    history: tuple[tuple[Status, int], ...] = field(default=())

    def __str__(self) -> str:
        lines = ", ".join(f"{ln.quantity}x#{ln.item_id}" for ln in self.lines)
        return f"order {self.order_id} {self.status.value} user={self.user_id} [{lines}]"


def validate(request: PlaceOrder) -> None:
    if not request.idempotency_key or len(request.idempotency_key) > 128:
        raise OrderError(Code.INVALID_ARGUMENT, "idempotency_key must be 1-128 characters")
    if not request.user_id or len(request.user_id) > 64:
        raise OrderError(Code.INVALID_ARGUMENT, "user_id must be 1-64 characters")
    if not 1 <= len(request.lines) <= MAX_LINES:
        raise OrderError(Code.INVALID_ARGUMENT, f"an order has 1-{MAX_LINES} lines")
    for line in request.lines:
        if line.item_id <= 0:
            raise OrderError(Code.INVALID_ARGUMENT, f"item_id {line.item_id} is not positive")
        if not 1 <= line.quantity <= MAX_QUANTITY:
            raise OrderError(Code.INVALID_ARGUMENT, f"quantity must be 1-{MAX_QUANTITY}")


def _now_ms() -> int:
    return int(time.time() * 1000)


class OrderBook:
    def __init__(self) -> None:
        self._orders: dict[str, Order] = {}
        self._by_key: dict[str, tuple[PlaceOrder, str]] = {}
        self._lock = asyncio.Lock()

    async def place(self, request: PlaceOrder) -> Order:
        validate(request)
        async with self._lock:
            seen = self._by_key.get(request.idempotency_key)
            if seen is not None:
                if seen[0] != request:
                    raise OrderError(
                        Code.CONFLICT, "idempotency key already used for a different order"
                    )
                return self._orders[seen[1]]
            now = _now_ms()
            total = sum(line.quantity * line.unit_price_cents for line in request.lines)
            order = Order(
                order_id=uuid.uuid4().hex,
                user_id=request.user_id,
                lines=request.lines,
                coupon_code=request.coupon_code,
                status=Status.CONFIRMED,
                total_cents=total,
                discount_cents=0,
                idempotency_key=request.idempotency_key,
                created_at_ms=now,
                updated_at_ms=now,
                history=((Status.PENDING, now), (Status.CONFIRMED, now)),
            )
            self._orders[order.order_id] = order
            self._by_key[request.idempotency_key] = (request, order.order_id)
            return order

    async def get(self, order_id: str) -> Order:
        try:
            return self._orders[order_id]
        except KeyError:
            raise OrderError(Code.NOT_FOUND, f"no order {order_id!r}") from None

    async def cancel(self, order_id: str) -> Order:
        async with self._lock:
            order = await self.get(order_id)
            if order.status is Status.CANCELLED:
                return order
            now = _now_ms()
            order = replace(
                order,
                status=Status.CANCELLED,
                updated_at_ms=now,
                history=(*order.history, (Status.CANCELLED, now)),
            )
            self._orders[order_id] = order
            return order
