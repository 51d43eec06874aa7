"""The order contract over gRPC (role ``order-grpc``): ``python -m services.wires.grpc``.

Server: the order domain behind ``d11.order.v1.OrderService`` (rpc/proto/order.proto), with
health and reflection; the caller's gRPC deadline bounds the saga. Client: the contract
over generated stubs, balanced over the instances the registry lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from infra.grpc_service import GrpcServer
from infra.service import Component, Context, run
from rpc.client import GrpcClient
from rpc.discovery import Discovery, registration
from rpc.errors import grpc_method
from rpc.proto import order_pb2, order_pb2_grpc
from services.order_api import Line, Order, PlaceOrder, StatusChange
from services.orders import Orders, domain

SERVICE_NAME = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name


def to_proto(order: Order) -> order_pb2.Order:
    return order_pb2.Order(
        order_id=order.order_id,
        user_id=order.user_id,
        lines=[
            order_pb2.OrderLine(
                item_id=ln.item_id, quantity=ln.quantity, unit_price_cents=ln.unit_price_cents
            )
            for ln in order.lines
        ],
        coupon_code=order.coupon_code,
        status=order_pb2.OrderStatus.Value(order.status),
        total_cents=order.total_cents,
        discount_cents=order.discount_cents,
        idempotency_key=order.idempotency_key,
        created_at_ms=order.created_at_ms,
        updated_at_ms=order.updated_at_ms,
        reason=order.reason,
        history=[
            order_pb2.StatusChange(
                status=order_pb2.OrderStatus.Value(h.status), at_ms=h.at_ms, note=h.note
            )
            for h in order.history
        ],
    )


def from_proto(o: order_pb2.Order) -> Order:
    return Order(
        order_id=o.order_id,
        user_id=o.user_id,
        lines=tuple(Line(ln.item_id, ln.quantity, ln.unit_price_cents) for ln in o.lines),
        status=order_pb2.OrderStatus.Name(o.status),
        total_cents=o.total_cents,
        discount_cents=o.discount_cents,
        coupon_code=o.coupon_code,
        idempotency_key=o.idempotency_key,
        created_at_ms=o.created_at_ms,
        updated_at_ms=o.updated_at_ms,
        reason=o.reason,
        history=tuple(
            StatusChange(order_pb2.OrderStatus.Name(h.status), h.at_ms, h.note) for h in o.history
        ),
    )


# -- server ---------------------------------------------------------------------------------
class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, orders: Orders, served_by: str) -> None:
        self.orders = orders
        self.served_by = served_by

    @grpc_method
    async def PlaceOrder(self, request, context):
        command = PlaceOrder(
            idempotency_key=request.idempotency_key,
            user_id=request.user_id,
            lines=tuple(Line(ln.item_id, ln.quantity) for ln in request.lines),
            coupon_code=request.coupon_code,
        )
        # The caller's deadline bounds the whole saga (and every call it makes).
        return to_proto(await self.orders.place(command, timeout=context.time_remaining()))

    @grpc_method
    async def GetOrder(self, request, context):
        return to_proto(await self.orders.get(request.order_id))

    @grpc_method
    async def CancelOrder(self, request, context):
        return to_proto(await self.orders.cancel(request.order_id, request.reason))

    @grpc_method
    async def ListOrders(self, request, context):
        found = await self.orders.list(request.user_id, request.limit or 20)
        return order_pb2.ListOrdersReply(orders=[to_proto(o) for o in found])

    async def Echo(self, request, context):
        return order_pb2.EchoReply(message=request.message, served_by=self.served_by)


async def build(ctx: Context) -> Sequence[Component]:
    orders, components = domain(ctx.settings)
    servicer = OrderServicer(orders, ctx.settings.name)

    def register(server: grpc.aio.Server) -> list[str]:
        order_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    # Registered only once the server is up (components start in order).
    return [*components, GrpcServer(ctx, register), *registration(ctx.settings)]


def main() -> None:
    run(build, name="order-grpc", role="order-grpc", port=50051)


# -- client ---------------------------------------------------------------------------------
class Client(GrpcClient[order_pb2_grpc.OrderServiceStub]):
    """The contract over gRPC (a component)."""

    def __init__(
        self, target: str | Discovery, timeout: float, *, max_in_flight: int | None = None
    ) -> None:
        super().__init__(target, order_pb2_grpc.OrderServiceStub, timeout,
                         max_in_flight=max_in_flight)  # fmt: skip

    async def place(self, command: PlaceOrder, *, timeout: float) -> Order:
        request = order_pb2.PlaceOrderRequest(
            idempotency_key=command.idempotency_key,
            user_id=command.user_id,
            lines=[
                order_pb2.OrderLine(item_id=ln.item_id, quantity=ln.quantity)
                for ln in command.lines
            ],
            coupon_code=command.coupon_code,
        )
        # The key makes it idempotent: a lost connection may be retried.
        return from_proto(await self.call("PlaceOrder", request, timeout=timeout, retries=1))

    async def get(self, order_id: str, *, timeout: float) -> Order:
        request = order_pb2.GetOrderRequest(order_id=order_id)
        return from_proto(await self.call("GetOrder", request, timeout=timeout, retries=1))

    async def cancel(self, order_id: str, reason: str, *, timeout: float) -> Order:
        request = order_pb2.CancelOrderRequest(order_id=order_id, reason=reason)
        return from_proto(await self.call("CancelOrder", request, timeout=timeout, retries=1))

    async def list(self, user_id: str, limit: int, *, timeout: float) -> list[Order]:
        request = order_pb2.ListOrdersRequest(user_id=user_id, limit=limit)
        reply = await self.call("ListOrders", request, timeout=timeout, retries=1)
        return [from_proto(o) for o in reply.orders]


if __name__ == "__main__":
    main()
