"""The order service over Dubbo 2, driven by dubbo-py (an independent Dubbo client) and by
hand-made frames for everything a well-behaved client never sends.

A finding kept here: dubbo-py numbers Hessian class references per argument, so a typed
object nested inside another typed object gets a wrong class reference (0x60 where the
second class definition is 1); Caucho's decoder would misread it exactly as ours does. The
order lines therefore travel as maps, which the service accepts as well."""

from __future__ import annotations

import io
import secrets
import socket
import struct

import pytest
from dubbo.client import DubboClient
from dubbo.codec.hessian2 import DubboHeartBeatRequest, DubboRequest, new_object
from pyhessian.parser import Parser, ParserV2  # python-hessian: a second decoder

from services import catalog
from tests.conftest import Stack, set_stock

SERVICE = "com.double11.order.OrderService"
ITEM = 14


@pytest.fixture(scope="module")
def endpoint(stack: Stack) -> tuple[str, int]:
    set_stock(stack, ITEM, 100_000)
    set_stock(stack, 16, 10)
    host = stack.topology.host("order-dubbo")
    return host.address, host.port


@pytest.fixture(scope="module")
def client(endpoint) -> DubboClient:
    return DubboClient(*endpoint)


def call(client: DubboClient, method: str, *args, service: str = SERVICE, version="1.0.0"):
    return client.send_request_and_return_response(
        service_name=service, service_version=version, method_name=method, args=list(args)
    )


def place_request(key: str, qty: int = 1, item: int = ITEM, coupon: str = ""):
    return new_object(
        "com.double11.order.PlaceOrderRequest",
        idempotencyKey=key,
        userId="dubbo-py",
        couponCode=coupon,
        lines=[{"itemId": item, "quantity": qty}],
    )


def test_echo(client):
    response = call(client, "echo", "双十一")
    assert (response.ok, response.data) == (True, "双十一")


def test_place_and_get_order(client):
    placed = call(client, "placeOrder", place_request(secrets.token_hex(8), qty=2))
    assert placed.ok, placed.error
    order = placed.data
    assert order.status == "CONFIRMED"
    assert order.totalCents == 2 * catalog.get(ITEM).price_cents
    assert [(ln.itemId, ln.quantity) for ln in order.lines] == [(ITEM, 2)]
    fetched = call(client, "getOrder", order.orderId)
    assert fetched.ok and fetched.data.orderId == order.orderId
    assert [h.status for h in fetched.data.history] == ["PENDING", "CONFIRMED"]


def test_domain_errors_are_exception_payloads(client):
    missing = call(client, "getOrder", "no-such-order")
    assert missing.ok  # status 20: the call worked, the business said no
    assert type(missing.data).__name__ == "com.double11.order.OrderException"
    assert missing.data.code == "not-found"
    sold_out = call(client, "placeOrder", place_request(secrets.token_hex(8), qty=11, item=16))
    assert sold_out.data.code == "sold-out"
    invalid = call(client, "placeOrder", place_request(secrets.token_hex(8), qty=0))
    assert invalid.data.code == "invalid-argument"


def test_unknown_service_and_method_are_status_60(client):
    assert call(client, "getOrder", "x", service="com.double11.Nope").status == 60
    assert call(client, "refund", "x").status == 60
    assert call(client, "getOrder", "x", version="9.9.9").status == 60


# -- hand-made frames ------------------------------------------------------------------
def frame(flags: int, request_id: int, body: bytes, magic: int = 0xDABB) -> bytes:
    return struct.pack(">HBBqI", magic, flags, 0, request_id, len(body)) + body


def read_frame(sock: socket.socket) -> tuple[int, int, int, bytes]:
    header = recv_exactly(sock, 16)
    magic, flags, status, request_id, length = struct.unpack(">HBBqI", header)
    assert magic == 0xDABB
    return flags, status, request_id, recv_exactly(sock, length)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def connect(endpoint) -> socket.socket:
    sock = socket.create_connection(endpoint, timeout=5)
    return sock


def echo_bytes(request_id: int, version: str = "2.5.3") -> bytes:
    return DubboRequest(
        id=request_id,
        twoway=True,
        dubbo_version=version,
        service_name=SERVICE,
        service_version="1.0.0",
        method_name="echo",
        args=[f"m{request_id}"],
    ).encode()


def hessian_values(data: bytes, count: int = 1) -> list:
    """Values decoded by python-hessian (its public API wants a call/reply envelope; a Dubbo
    body is bare values, so its value parser is driven directly)."""
    base = Parser()
    base._stream = io.BytesIO(data)
    parser = ParserV2(base)
    return [parser._read_object() for _ in range(count)]


def test_heartbeat_is_answered_as_an_event(endpoint):
    with connect(endpoint) as sock:
        sock.sendall(DubboHeartBeatRequest(77, twoway=True).encode())
        flags, status, request_id, body = read_frame(sock)
    assert (flags & 0x80, flags & 0x20, status, request_id, body) == (0, 0x20, 20, 77, b"N")


def test_many_requests_in_flight_on_one_connection(endpoint):
    with connect(endpoint) as sock:
        sock.sendall(b"".join(echo_bytes(i) for i in range(1, 51)))
        replies = {}
        for _ in range(50):
            _, status, request_id, body = read_frame(sock)
            replies[request_id] = (status, *hessian_values(body, 2))
    assert replies == {i: (20, 1, f"m{i}") for i in range(1, 51)}  # flag 1: a value


def test_response_attachments_only_for_clients_that_read_them(endpoint):
    with connect(endpoint) as sock:
        sock.sendall(echo_bytes(1, version="2.0.2"))
        modern = read_frame(sock)[3]
        sock.sendall(echo_bytes(2, version="2.5.3"))
        old = read_frame(sock)[3]
    assert modern[0] == 0x94 and modern.endswith(b"\x48\x5a")  # flag 4, then the map
    assert old[0] == 0x91  # flag 1: Dubbo's framework versions cannot read flags 3-5


def test_undecodable_body_is_status_40_and_the_connection_lives(endpoint):
    with connect(endpoint) as sock:
        sock.sendall(frame(0xC2, 5, b"\x05\x32\x2e\x30\xff\xff"))  # truncated, bad tags
        _, status, request_id, body = read_frame(sock)
        assert (status, request_id) == (40, 5)
        assert "undecodable" in hessian_values(body)[0]
        sock.sendall(echo_bytes(6))
        assert read_frame(sock)[1:3] == (20, 6)


@pytest.mark.parametrize(
    "argument",
    [
        bytes([0x79]) * 200 + bytes([0x90]),  # lists in lists, 200 deep
        (bytes([0x43, 0x01, 0x61, 0x90])) * 3000 + bytes([0x60]),  # class definitions chained
    ],
    ids=["nested-lists", "chained-definitions"],
)
def test_a_body_nested_past_the_limit_is_status_40_naming_it(endpoint, argument):
    """Nesting is bounded (64 levels) wherever it hides, including inside a class name or
    a chain of definitions: the protocol's bad request, not a server error."""
    head = b"".join(
        bytes([len(t)]) + t.encode() for t in ("2.0.2", SERVICE, "1.0.0", "echo")
    )  # compact strings: version, path, service version, method
    descriptor = b"\x12Ljava/lang/Object;"
    body = head + descriptor + argument + b"\x48\x5a"  # the argument, empty attachments
    with connect(endpoint) as sock:
        sock.sendall(frame(0xC2, 9, body))
        _, status, request_id, reply = read_frame(sock)
        assert (status, request_id) == (40, 9)
        message = hessian_values(reply)[0]
        assert "nested deeper than 64" in message and "Recursion" not in message
        sock.sendall(echo_bytes(10))
        assert read_frame(sock)[1:3] == (20, 10)  # the connection still serves


def test_wrong_serialization_is_status_40(endpoint):
    with connect(endpoint) as sock:
        sock.sendall(frame(0xC0 | 6, 8, echo_bytes(8)[16:]))  # 6 = kryo
        assert read_frame(sock)[1:3] == (40, 8)


def test_payload_over_8_mib_is_40_and_closes_only_that_connection(endpoint, client):
    with connect(endpoint) as sock:
        sock.sendall(struct.pack(">HBBqI", 0xDABB, 0xC2, 0, 9, 9 * 1024 * 1024))
        _, status, request_id, body = read_frame(sock)
        assert (status, request_id) == (40, 9)
        assert "limit" in hessian_values(body)[0]
        assert sock.recv(1) == b""  # closed
    assert call(client, "echo", "others unaffected").data == "others unaffected"


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 16, bytes(range(256))])
def test_wrong_magic_closes_the_connection(endpoint, client, junk):
    with connect(endpoint) as sock:
        sock.sendall(junk)
        assert sock.recv(1) == b""
    assert call(client, "echo", "still serving").data == "still serving"


def test_our_order_parses_with_python_hessian(endpoint):
    request = DubboRequest(
        id=4,
        twoway=True,
        dubbo_version="2.0.2",
        service_name=SERVICE,
        service_version="1.0.0",
        method_name="placeOrder",
        args=[place_request(secrets.token_hex(8))],
    ).encode()
    with connect(endpoint) as sock:
        sock.sendall(request)
        _, status, _, body = read_frame(sock)
    flag, order, attachments = hessian_values(body, 3)
    assert (status, flag, attachments) == (20, 4, {})
    assert order.status == "CONFIRMED" and order.lines[0].itemId == ITEM
