"""gRPC server for the order contract in ``rpc/proto/order.proto``."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from infra.grpc_service import GrpcServer
from infra.service import Component, Context, run
from rpc.errors import GRPC_STATUS, OrderError
from rpc.proto import order_pb2, order_pb2_grpc
from services.orders import Line, Order, OrderBook, PlaceOrder

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
        status=order_pb2.OrderStatus.Value(order.status.value),
        total_cents=order.total_cents,
        discount_cents=order.discount_cents,
        idempotency_key=order.idempotency_key,
        created_at_ms=order.created_at_ms,
        updated_at_ms=order.updated_at_ms,
    )


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, book: OrderBook, served_by: str) -> None:
        self.book = book
        self.served_by = served_by

    async def _fail(self, context: grpc.aio.ServicerContext, error: OrderError) -> None:
        await context.abort(GRPC_STATUS[error.code], error.message)

    async def PlaceOrder(self, request, context):  # noqa: N802 - gRPC method names
        command = PlaceOrder(
            idempotency_key=request.idempotency_key,
            user_id=request.user_id,
            lines=tuple(Line(ln.item_id, ln.quantity, ln.unit_price_cents) for ln in request.lines),
            coupon_code=request.coupon_code,
        )
        try:
            return to_proto(await self.book.place(command))
        except OrderError as error:
            await self._fail(context, error)

    async def GetOrder(self, request, context):  # noqa: N802
        try:
            return to_proto(await self.book.get(request.order_id))
        except OrderError as error:
            await self._fail(context, error)

    async def CancelOrder(self, request, context):  # noqa: N802
        try:
            return to_proto(await self.book.cancel(request.order_id))
        except OrderError as error:
            await self._fail(context, error)

    async def Echo(self, request, context):  # noqa: N802
        return order_pb2.EchoReply(message=request.message, served_by=self.served_by)


async def build(ctx: Context) -> Sequence[Component]:
    servicer = OrderServicer(OrderBook(), ctx.settings.name)

    def register(server: grpc.aio.Server) -> list[str]:
        order_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return [GrpcServer(ctx, register)]


def main() -> None:
    run(build, name="order-grpc", role="order-grpc", port=50051)
