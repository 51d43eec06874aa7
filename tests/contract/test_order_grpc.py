"""The order service over gRPC, called with stubs generated from rpc/proto/order.proto, the
standard health client and the reflection service."""

from __future__ import annotations

import secrets

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rpc.proto import order_pb2, order_pb2_grpc
from tests.conftest import Stack


@pytest.fixture(scope="module")
def channel(stack: Stack):
    with grpc.insecure_channel(stack.topology.host("order-grpc").endpoint) as ch:
        yield ch


@pytest.fixture(scope="module")
def orders(channel) -> order_pb2_grpc.OrderServiceStub:
    return order_pb2_grpc.OrderServiceStub(channel)


def place(orders, key: str, user: str = "alice", qty: int = 2) -> order_pb2.Order:
    return orders.PlaceOrder(
        order_pb2.PlaceOrderRequest(
            idempotency_key=key,
            user_id=user,
            lines=[order_pb2.OrderLine(item_id=1001, quantity=qty, unit_price_cents=1999)],
        ),
        timeout=5,
    )


def test_place_get_cancel_round_trip(orders):
    order = place(orders, secrets.token_hex(8))
    assert order.status == order_pb2.CONFIRMED
    assert order.total_cents == 2 * 1999
    assert orders.GetOrder(order_pb2.GetOrderRequest(order_id=order.order_id)) == order
    cancelled = orders.CancelOrder(order_pb2.CancelOrderRequest(order_id=order.order_id))
    assert cancelled.status == order_pb2.CANCELLED


def test_same_idempotency_key_returns_the_same_order(orders):
    key = secrets.token_hex(8)
    assert place(orders, key).order_id == place(orders, key).order_id


def test_same_key_with_another_body_is_already_exists(orders):
    key = secrets.token_hex(8)
    place(orders, key, qty=1)
    with pytest.raises(grpc.RpcError) as info:
        place(orders, key, qty=3)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("qty", [0, -1, 100_000])
def test_bad_quantity_is_invalid_argument(orders, qty):
    with pytest.raises(grpc.RpcError) as info:
        place(orders, secrets.token_hex(8), qty=qty)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_order_is_not_found(orders):
    with pytest.raises(grpc.RpcError) as info:
        orders.GetOrder(order_pb2.GetOrderRequest(order_id="missing"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_garbage_message_is_a_status_not_a_crash(channel, orders):
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
