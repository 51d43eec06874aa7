"""The order service over gRPC, called with stubs generated from rpc/proto/order.proto, the
standard health client and the reflection service."""

from __future__ import annotations

import secrets

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rpc.proto import order_pb2, order_pb2_grpc
from services import catalog
from tests.conftest import Stack, set_stock

ITEM = 2  # items 2-9 are for contract tests; 1 is the flash sale's


@pytest.fixture(scope="module")
def channel(stack: Stack):
    set_stock(stack, ITEM, 100_000)
    set_stock(stack, 3, 50)
    with grpc.insecure_channel(stack.topology.host("order-grpc").endpoint) as ch:
        yield ch


@pytest.fixture(scope="module")
def orders(channel) -> order_pb2_grpc.OrderServiceStub:
    return order_pb2_grpc.OrderServiceStub(channel)


def place(orders, key: str, user: str = "alice", qty: int = 2, item: int = ITEM, coupon=""):
    return orders.PlaceOrder(
        order_pb2.PlaceOrderRequest(
            idempotency_key=key,
            user_id=user,
            coupon_code=coupon,
            lines=[order_pb2.OrderLine(item_id=item, quantity=qty, unit_price_cents=1)],
        ),
        timeout=5,
    )


def code_of(info: pytest.ExceptionInfo) -> tuple[grpc.StatusCode, str]:
    trailing = dict(info.value.trailing_metadata() or ())
    return info.value.code(), trailing.get("d11-error-code", "")


def test_place_get_cancel_round_trip(orders):
    order = place(orders, secrets.token_hex(8))
    assert order.status == order_pb2.CONFIRMED
    # Priced from the catalogue, never from the client's unit_price_cents.
    assert order.total_cents == 2 * catalog.get(ITEM).price_cents
    assert [h.status for h in order.history] == [order_pb2.PENDING, order_pb2.CONFIRMED]
    assert orders.GetOrder(order_pb2.GetOrderRequest(order_id=order.order_id)) == order
    cancelled = orders.CancelOrder(order_pb2.CancelOrderRequest(order_id=order.order_id))
    assert cancelled.status == order_pb2.CANCELLED
    assert [h.status for h in cancelled.history][-1] == order_pb2.CANCELLED
    again = orders.CancelOrder(order_pb2.CancelOrderRequest(order_id=order.order_id))
    assert again.status == order_pb2.CANCELLED and again.history == cancelled.history


def test_same_idempotency_key_returns_the_same_order(orders):
    key = secrets.token_hex(8)
    assert place(orders, key) == place(orders, key)


def test_same_key_with_another_body_is_already_exists(orders):
    key = secrets.token_hex(8)
    place(orders, key, qty=1)
    with pytest.raises(grpc.RpcError) as info:
        place(orders, key, qty=3)
    assert code_of(info) == (grpc.StatusCode.ALREADY_EXISTS, "conflict")


def test_sold_out_is_failed_precondition(orders):
    with pytest.raises(grpc.RpcError) as info:
        place(orders, secrets.token_hex(8), qty=51, item=3)
    assert code_of(info) == (grpc.StatusCode.FAILED_PRECONDITION, "sold-out")


def test_unknown_item_and_refused_coupon_are_unprocessable(orders):
    with pytest.raises(grpc.RpcError) as info:
        place(orders, secrets.token_hex(8), item=99_999)
    assert code_of(info) == (grpc.StatusCode.FAILED_PRECONDITION, "unprocessable")
    with pytest.raises(grpc.RpcError) as info:
        place(orders, secrets.token_hex(8), coupon="NO-SUCH-COUPON")
    assert code_of(info) == (grpc.StatusCode.FAILED_PRECONDITION, "unprocessable")


def test_coupon_discount_is_applied(orders):
    order = place(
        orders, secrets.token_hex(8), user=f"c-{secrets.token_hex(4)}", coupon="D11-10PCT", qty=1
    )
    assert order.discount_cents == order.total_cents * 10 // 100


def test_list_orders_newest_first(orders):
    user = f"list-{secrets.token_hex(4)}"
    first = place(orders, secrets.token_hex(8), user=user)
    second = place(orders, secrets.token_hex(8), user=user)
    listed = orders.ListOrders(order_pb2.ListOrdersRequest(user_id=user, limit=10)).orders
    assert {o.order_id for o in listed} == {first.order_id, second.order_id}


@pytest.mark.parametrize("qty", [0, -1, 100_000])
def test_bad_quantity_is_invalid_argument(orders, qty):
    with pytest.raises(grpc.RpcError) as info:
        place(orders, secrets.token_hex(8), qty=qty)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_order_is_not_found(orders):
    with pytest.raises(grpc.RpcError) as info:
        orders.GetOrder(order_pb2.GetOrderRequest(order_id="missing"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_expired_deadline_is_deadline_exceeded(orders):
    # A 0.5 ms deadline: the client's deadline timer races the reply, and on a starved
    # machine (one CI run) the reply won once. Five tries; a wire that ignored deadlines
    # would never raise, one that honours them raises on the first.
    error = None
    for _ in range(5):
        try:
            orders.PlaceOrder(
                order_pb2.PlaceOrderRequest(
                    idempotency_key=secrets.token_hex(8),
                    user_id="slow",
                    lines=[order_pb2.OrderLine(item_id=ITEM, quantity=1)],
                ),
                timeout=0.0005,
            )
        except grpc.RpcError as exc:
            error = exc
            break
    assert error is not None, "no call failed its 0.5 ms deadline"
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_garbage_message_is_invalid_argument_not_a_crash(channel, orders):
    call = channel.unary_unary("/d11.order.v1.OrderService/PlaceOrder")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff\xff\x0f", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert orders.Echo(order_pb2.EchoRequest(message="still here")).message == "still here"


def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary("/d11.order.v1.OrderService/Refund")
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_reports_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "d11.order.v1.OrderService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_order_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"d11.order.v1.OrderService", "grpc.health.v1.Health"} <= names


def test_metrics_side_port_serves_prometheus(stack: Stack, http):
    host = stack.topology.host("order-grpc")
    text = http.get(f"http://{host.address}:{host.metrics_port}/metrics").text
    assert 'd11_requests_total{operation="PlaceOrder",outcome="OK",protocol="grpc"}' in text
