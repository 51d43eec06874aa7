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
from rpc.discovery import registration
from rpc.dubbo.client import DubboClient
from rpc.dubbo.codec import DEFAULT_MAX_BODY
from rpc.dubbo.hessian2 import JavaObject, Long
from rpc.dubbo.server import DubboServer, Exported
from rpc.errors import Code, DomainError
from rpc.proto import order_pb2
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
    return [*components, server, *registration(s)]


def main() -> None:
    run(build, name="order-dubbo", role="order-dubbo", port=20880)


# -- the controller's side: the same contract, in the controller's protobuf messages --------
def order_from_java(obj: Any) -> order_pb2.Order:
    if not isinstance(obj, JavaObject):
        raise DomainError(Code.INTERNAL, f"expected an Order, got {type(obj).__name__}")
    return order_pb2.Order(
        order_id=obj.get("orderId") or "",
        user_id=obj.get("userId") or "",
        lines=[
            order_pb2.OrderLine(
                item_id=ln.get("itemId"),
                quantity=ln.get("quantity"),
                unit_price_cents=ln.get("unitPriceCents"),
            )
            for ln in obj.get("lines") or []
        ],
        coupon_code=obj.get("couponCode") or "",
        status=order_pb2.OrderStatus.Value(obj.get("status")),
        total_cents=obj.get("totalCents") or 0,
        discount_cents=obj.get("discountCents") or 0,
        created_at_ms=obj.get("createdAtMs") or 0,
        updated_at_ms=obj.get("updatedAtMs") or 0,
        reason=obj.get("reason") or "",
        history=[
            order_pb2.StatusChange(
                status=order_pb2.OrderStatus.Value(h.get("status")),
                at_ms=h.get("atMs"),
                note=h.get("note") or "",
            )
            for h in obj.get("history") or []
        ],
    )


STRING = "Ljava/lang/String;"


class OrderClient:
    """Calls ``com.double11.order.OrderService`` over Dubbo with the controller's messages
    (the same ``call(method, request)`` shape as the gRPC stub). A component."""

    def __init__(self, client: DubboClient) -> None:
        self.client = client

    async def start(self) -> None:
        await self.client.start()

    async def stop(self, grace: float) -> None:
        await self.client.stop(grace)

    async def call(self, method: str, request: Any, *, retries: int = 0) -> Any:
        if method == "PlaceOrder":
            arg = JavaObject(
                f"{PACKAGE}.PlaceOrderRequest",
                {
                    "idempotencyKey": request.idempotency_key,
                    "userId": request.user_id,
                    "lines": [
                        JavaObject(
                            f"{PACKAGE}.OrderLine",
                            {"itemId": Long(ln.item_id), "quantity": ln.quantity},
                        )
                        for ln in request.lines
                    ],
                    "couponCode": request.coupon_code or None,
                },
            )
            found = await self.client.call(
                "placeOrder",
                ([arg], f"L{PACKAGE.replace('.', '/')}/PlaceOrderRequest;"),
                retries=retries,
            )
            return order_from_java(found)
        if method == "GetOrder":
            found = await self.client.call(
                "getOrder", ([request.order_id], STRING), retries=retries
            )
            return order_from_java(found)
        if method == "CancelOrder":
            found = await self.client.call(
                "cancelOrder", ([request.order_id, request.reason], STRING * 2), retries=retries
            )
            return order_from_java(found)
        if method == "ListOrders":
            found = await self.client.call(
                "listOrders", ([request.user_id, request.limit], STRING + "I"), retries=retries
            )
            return order_pb2.ListOrdersReply(orders=[order_from_java(o) for o in found or []])
        raise DomainError(Code.INTERNAL, f"no Dubbo mapping for {method}")
