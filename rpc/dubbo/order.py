"""The order contract over Dubbo (role ``order-dubbo``), as a Java interface would be:

    package com.double11.order;
    interface OrderService {                       // version 1.0.0
        Order placeOrder(PlaceOrderRequest request);
        Order getOrder(String orderId);
        Order cancelOrder(String orderId, String reason);
        List<Order> listOrders(String userId, int limit);
        String echo(String message);
    }

Arguments may arrive as typed objects (``com.double11.order.PlaceOrderRequest``) or as maps
with the same field names. Domain errors travel as a ``com.double11.order.OrderException``
payload (status 20, response flag "with exception") carrying the error code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infra.config import Settings
from infra.service import Component, Context, run
from rpc.discovery import Registration
from rpc.dubbo.codec import DEFAULT_MAX_BODY
from rpc.dubbo.hessian2 import JavaObject, Long
from rpc.dubbo.server import DubboServer, Exported
from rpc.errors import Code, DomainError
from services.order_store import OrderRow
from services.orders import Line, Orders, PlaceOrder, domain

PACKAGE = "com.double11.order"
SERVICE = f"{PACKAGE}.OrderService"
VERSION = "1.0.0"


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, JavaObject):
        return obj.get(name)
    if isinstance(obj, dict):
        return obj.get(name)
    raise DomainError(Code.INVALID_ARGUMENT, f"expected an object with {name!r}")


def _str(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DomainError(Code.INVALID_ARGUMENT, f"{name} must be a string")
    return value


def _int(value: Any, name: str) -> int:
    if type(value) is not int:
        raise DomainError(Code.INVALID_ARGUMENT, f"{name} must be an integer")
    return value


def order_object(row: OrderRow) -> JavaObject:
    return JavaObject(
        f"{PACKAGE}.Order",
        {
            "orderId": row.order_id,
            "userId": row.user_id,
            "lines": [
                JavaObject(
                    f"{PACKAGE}.OrderLine",
                    {"itemId": Long(i), "quantity": q, "unitPriceCents": Long(p)},
                )
                for i, q, p in row.lines
            ],
            "couponCode": row.coupon_code or None,
            "status": row.status,
            "totalCents": Long(row.total_cents),
            "discountCents": Long(row.discount_cents),
            "createdAtMs": Long(row.created_at_ms),
            "updatedAtMs": Long(row.updated_at_ms),
            "reason": row.reason or None,
            "history": [
                JavaObject(f"{PACKAGE}.StatusChange", {"status": s, "atMs": Long(at), "note": note})
                for s, at, note in row.history
            ],
        },
    )


def order_exception(error: DomainError) -> JavaObject:
    # Throwable's own fields first, as Java serializes them, then ours.
    return JavaObject(
        f"{PACKAGE}.OrderException",
        {
            "detailMessage": error.message,
            "code": error.code.value,
            "detail": {str(k): v for k, v in error.detail.items()},
        },
    )


class OrderEndpoint:
    def __init__(self, orders: Orders, served_by: str) -> None:
        self.orders, self.served_by = orders, served_by

    async def placeOrder(self, request: Any) -> JavaObject:
        lines = _field(request, "lines")
        if not isinstance(lines, list):
            raise DomainError(Code.INVALID_ARGUMENT, "lines must be a list")
        command = PlaceOrder(
            idempotency_key=_str(_field(request, "idempotencyKey"), "idempotencyKey"),
            user_id=_str(_field(request, "userId"), "userId"),
            lines=tuple(
                Line(_int(_field(ln, "itemId"), "itemId"), _int(_field(ln, "quantity"), "quantity"))
                for ln in lines
            ),
            coupon_code=_str(_field(request, "couponCode"), "couponCode"),
        )
        return order_object(await self.orders.place(command))

    async def getOrder(self, order_id: Any) -> JavaObject:
        return order_object(await self.orders.get(_str(order_id, "orderId")))

    async def cancelOrder(self, order_id: Any, reason: Any = None) -> JavaObject:
        row = await self.orders.cancel(_str(order_id, "orderId"), _str(reason, "reason")[:200])
        return order_object(row)

    async def listOrders(self, user_id: Any, limit: Any = 20) -> list[JavaObject]:
        rows = await self.orders.list(_str(user_id, "userId"), _int(limit, "limit"))
        return [order_object(r) for r in rows]

    async def echo(self, message: Any) -> str:
        return _str(message, "message")

    def exported(self) -> Exported:
        methods = {
            name: getattr(self, name)
            for name in ("placeOrder", "getOrder", "cancelOrder", "listOrders", "echo")
        }
        return Exported(SERVICE, VERSION, methods, order_exception)


async def build(ctx: Context) -> Sequence[Component]:
    s: Settings = ctx.settings
    orders, components = domain(s)
    endpoint = OrderEndpoint(orders, s.name)
    server = DubboServer(ctx, [endpoint.exported()], s.get_int("MAX_PAYLOAD", DEFAULT_MAX_BODY))
    registration = []
    if registry := s.get("REGISTRY", ""):
        registration = [Registration(registry, s.role, s)]
    return [*components, server, *registration]


def main() -> None:
    run(build, name="order-dubbo", role="order-dubbo", port=20880)
