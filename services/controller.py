"""The REST controller (role ``controller``): JSON resources in front of the order service.

Walking-skeleton version: ``/api/orders`` over gRPC to one order-service address
(``D11_ORDER_GRPC``). Run alone with ``python -m services.controller``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
from aiohttp import web

from infra.grpc_service import channel
from infra.http import HttpServer, make_app
from infra.service import Component, Context, run
from rpc.errors import Code, OrderError, from_grpc
from rpc.proto import order_pb2, order_pb2_grpc
from services.problems import from_order_error, problem

MAX_BODY = 64 * 1024


def order_json(order: order_pb2.Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "user_id": order.user_id,
        "lines": [
            {
                "item_id": ln.item_id,
                "quantity": ln.quantity,
                "unit_price_cents": ln.unit_price_cents,
            }
            for ln in order.lines
        ],
        "coupon_code": order.coupon_code or None,
        "status": order_pb2.OrderStatus.Name(order.status),
        "total_cents": order.total_cents,
        "discount_cents": order.discount_cents,
        "created_at_ms": order.created_at_ms,
        "updated_at_ms": order.updated_at_ms,
    }


def parse_place_order(body: Any, key: str) -> order_pb2.PlaceOrderRequest:
    """Validate the JSON shape (types, required fields); the domain checks the values."""
    if not isinstance(body, dict):
        raise OrderError(Code.INVALID_ARGUMENT, "the body must be a JSON object")
    user, lines, coupon = body.get("user_id"), body.get("lines"), body.get("coupon_code")
    if not isinstance(user, str):
        raise OrderError(Code.INVALID_ARGUMENT, "user_id must be a string")
    if not isinstance(lines, list) or not all(isinstance(ln, dict) for ln in lines):
        raise OrderError(Code.INVALID_ARGUMENT, "lines must be a list of objects")
    if coupon is not None and not isinstance(coupon, str):
        raise OrderError(Code.INVALID_ARGUMENT, "coupon_code must be a string")
    parsed = []
    for ln in lines:
        item, qty = ln.get("item_id"), ln.get("quantity")
        # bool is an int in Python; JSON true is not a quantity.
        if type(item) is not int or type(qty) is not int:
            raise OrderError(Code.INVALID_ARGUMENT, "item_id and quantity must be integers")
        if not (0 < item < 2**63 and 0 < qty < 2**31):
            raise OrderError(Code.INVALID_ARGUMENT, "item_id and quantity must be positive")
        parsed.append(order_pb2.OrderLine(item_id=item, quantity=qty))
    return order_pb2.PlaceOrderRequest(
        idempotency_key=key, user_id=user, lines=parsed, coupon_code=coupon or ""
    )


class OrderClient:
    """The controller's connection to the order service (a component: opened at start)."""

    def __init__(self, target: str, timeout: float) -> None:
        self.target, self.timeout = target, timeout
        self.stub: order_pb2_grpc.OrderServiceStub | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self._channel = channel(self.target)
        self.stub = order_pb2_grpc.OrderServiceStub(self._channel)

    async def stop(self, grace: float) -> None:
        if self._channel is not None:
            await self._channel.close(grace)

    async def call(self, method: str, request: Any) -> order_pb2.Order:
        try:
            return await getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise from_grpc(error) from None


def routes(client: OrderClient) -> web.RouteTableDef:
    api = web.RouteTableDef()

    @api.post("/api/orders")
    async def place_order(request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            return problem(400, "missing-idempotency-key", "Idempotency-Key header required")
        try:
            body = await request.json(loads=json.loads)
        except web.HTTPRequestEntityTooLarge:
            return problem(413, "too-large", "Request body too large", f"limit {MAX_BODY} bytes")
        except (ValueError, UnicodeDecodeError):
            return problem(400, "malformed-json", "Malformed JSON body")
        try:
            order = await client.call("PlaceOrder", parse_place_order(body, key))
        except OrderError as error:
            return from_order_error(error)
        return web.json_response(
            order_json(order), status=201, headers={"Location": f"/api/orders/{order.order_id}"}
        )

    @api.get("/api/orders/{order_id}")
    async def get_order(request: web.Request) -> web.Response:
        try:
            order = await client.call(
                "GetOrder", order_pb2.GetOrderRequest(order_id=request.match_info["order_id"])
            )
        except OrderError as error:
            return from_order_error(error)
        return web.json_response(order_json(order))

    @api.post("/api/orders/{order_id}/cancel")
    async def cancel_order(request: web.Request) -> web.Response:
        try:
            order = await client.call(
                "CancelOrder", order_pb2.CancelOrderRequest(order_id=request.match_info["order_id"])
            )
        except OrderError as error:
            return from_order_error(error)
        return web.json_response(order_json(order))

    return api


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    client = OrderClient(s.get("ORDER_GRPC"), s.get_float("ORDER_TIMEOUT", 2.0))
    app = make_app(ctx, client_max_size=MAX_BODY)
    app.add_routes(routes(client))
    return [client, HttpServer(app, s.address, s.port)]


def main() -> None:
    run(build, name="controller", role="controller", port=8080)


if __name__ == "__main__":
    main()
