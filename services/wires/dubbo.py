"""The order contract over Dubbo (role ``order-dubbo``): ``python -m services.wires.dubbo``.
On rpc/dubbo's frames, Hessian 2 bodies, server and client, as a Java interface would be:

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
from rpc.discovery import Discovery, registration
from rpc.dubbo.client import DubboClient
from rpc.dubbo.codec import DEFAULT_MAX_BODY
from rpc.dubbo.hessian2 import JavaObject, Long
from rpc.dubbo.server import DubboServer, Exported
from rpc.errors import Code, DomainError
from services.order_api import Line, Order, PlaceOrder, StatusChange
from services.orders import Orders, domain

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


def order_object(order: Order) -> JavaObject:
    return JavaObject(
        f"{PACKAGE}.Order",
        {
            "orderId": order.order_id,
            "userId": order.user_id,
            "lines": [
                JavaObject(
                    f"{PACKAGE}.OrderLine",
                    {
                        "itemId": Long(ln.item_id),
                        "quantity": ln.quantity,
                        "unitPriceCents": Long(ln.unit_price_cents),
                    },
                )
                for ln in order.lines
            ],
            "couponCode": order.coupon_code or None,
            "status": order.status,
            "totalCents": Long(order.total_cents),
            "discountCents": Long(order.discount_cents),
            "createdAtMs": Long(order.created_at_ms),
            "updatedAtMs": Long(order.updated_at_ms),
            "reason": order.reason or None,
            "history": [
                JavaObject(
                    f"{PACKAGE}.StatusChange",
                    {"status": h.status, "atMs": Long(h.at_ms), "note": h.note},
                )
                for h in order.history
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
        order = await self.orders.cancel(_str(order_id, "orderId"), _str(reason, "reason")[:200])
        return order_object(order)

    async def listOrders(self, user_id: Any, limit: Any = 20) -> list[JavaObject]:
        found = await self.orders.list(_str(user_id, "userId"), _int(limit, "limit"))
        return [order_object(o) for o in found]

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
    return [*components, server, *registration(s)]


def main() -> None:
    run(build, name="order-dubbo", role="order-dubbo", port=20880)


# -- client ---------------------------------------------------------------------------------
def order_from_java(obj: Any) -> Order:
    if not isinstance(obj, JavaObject):
        raise DomainError(Code.INTERNAL, f"expected an Order, got {type(obj).__name__}")
    return Order(
        order_id=obj.get("orderId") or "",
        user_id=obj.get("userId") or "",
        lines=tuple(
            Line(ln.get("itemId"), ln.get("quantity"), ln.get("unitPriceCents") or 0)
            for ln in obj.get("lines") or []
        ),
        status=obj.get("status") or "",
        total_cents=obj.get("totalCents") or 0,
        discount_cents=obj.get("discountCents") or 0,
        coupon_code=obj.get("couponCode") or "",
        created_at_ms=obj.get("createdAtMs") or 0,
        updated_at_ms=obj.get("updatedAtMs") or 0,
        reason=obj.get("reason") or "",
        history=tuple(
            StatusChange(h.get("status"), h.get("atMs"), h.get("note") or "")
            for h in obj.get("history") or []
        ),
    )


STRING = "Ljava/lang/String;"


class Client(DubboClient):
    """The contract over Dubbo: ``com.double11.order.OrderService`` (a component)."""

    def __init__(
        self, target: str | Discovery, timeout: float, *, max_in_flight: int | None = None
    ) -> None:
        super().__init__(target, SERVICE, VERSION, timeout, max_in_flight=max_in_flight)

    async def place(self, command: PlaceOrder, *, timeout: float) -> Order:
        arg = JavaObject(
            f"{PACKAGE}.PlaceOrderRequest",
            {
                "idempotencyKey": command.idempotency_key,
                "userId": command.user_id,
                "lines": [
                    JavaObject(
                        f"{PACKAGE}.OrderLine",
                        {"itemId": Long(ln.item_id), "quantity": ln.quantity},
                    )
                    for ln in command.lines
                ],
                "couponCode": command.coupon_code or None,
            },
        )
        descriptor = f"L{PACKAGE.replace('.', '/')}/PlaceOrderRequest;"
        found = await self.call("placeOrder", ([arg], descriptor), timeout=timeout, retries=1)
        return order_from_java(found)

    async def get(self, order_id: str, *, timeout: float) -> Order:
        found = await self.call("getOrder", ([order_id], STRING), timeout=timeout, retries=1)
        return order_from_java(found)

    async def cancel(self, order_id: str, reason: str, *, timeout: float) -> Order:
        args = ([order_id, reason], STRING * 2)
        return order_from_java(await self.call("cancelOrder", args, timeout=timeout, retries=1))

    async def list(self, user_id: str, limit: int, *, timeout: float) -> list[Order]:
        args = ([user_id, limit], STRING + "I")
        found = await self.call("listOrders", args, timeout=timeout, retries=1)
        return [order_from_java(o) for o in found or []]


if __name__ == "__main__":
    main()
