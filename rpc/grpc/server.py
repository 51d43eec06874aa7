"""gRPC server for the order contract in ``rpc/proto/order.proto`` (role ``order-grpc``)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from infra.grpc_service import GrpcServer
from infra.service import Component, Context, run
from rpc.discovery import registration
from rpc.errors import grpc_method
from rpc.proto import order_pb2, order_pb2_grpc
from services.order_store import OrderRow
from services.orders import Line, Orders, PlaceOrder, domain

SERVICE_NAME = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name


def to_proto(row: OrderRow) -> order_pb2.Order:
    return order_pb2.Order(
        order_id=row.order_id,
        user_id=row.user_id,
        lines=[
            order_pb2.OrderLine(item_id=i, quantity=q, unit_price_cents=p) for i, q, p in row.lines
        ],
        coupon_code=row.coupon_code,
        status=order_pb2.OrderStatus.Value(row.status),
        total_cents=row.total_cents,
        discount_cents=row.discount_cents,
        idempotency_key=row.idempotency_key,
        created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms,
        reason=row.reason,
        history=[
            order_pb2.StatusChange(status=order_pb2.OrderStatus.Value(s), at_ms=at, note=note)
            for s, at, note in row.history
        ],
    )


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
        return to_proto(await self.orders.place(command, context.time_remaining()))

    @grpc_method
    async def GetOrder(self, request, context):
        return to_proto(await self.orders.get(request.order_id))

    @grpc_method
    async def CancelOrder(self, request, context):
        return to_proto(await self.orders.cancel(request.order_id, request.reason))

    @grpc_method
    async def ListOrders(self, request, context):
        rows = await self.orders.list(request.user_id, request.limit or 20)
        return order_pb2.ListOrdersReply(orders=[to_proto(r) for r in rows])

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
