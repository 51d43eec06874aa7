"""The inventory service through its generated gRPC stubs: all-or-nothing reservations,
idempotency by reservation id, tombstones, expiry, and stock that never goes below zero."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from rpc.proto import inventory_pb2 as pb
from rpc.proto import inventory_pb2_grpc
from tests.conftest import Stack, wait_for

ADMIN_ITEMS = (40, 41, 42)  # items these tests set stock on


@pytest.fixture(scope="module")
def inv(stack: Stack) -> inventory_pb2_grpc.InventoryServiceStub:
    channel = grpc.insecure_channel(stack.topology.host("inventory").endpoint)
    yield inventory_pb2_grpc.InventoryServiceStub(channel)
    channel.close()


def level(inv, item: int) -> pb.StockLevel:
    (found,) = inv.GetStock(pb.GetStockRequest(item_ids=[item]), timeout=5).items
    return found


def reserve(inv, rid: str, *lines: tuple[int, int], ttl: int = 60) -> pb.Reservation:
    return inv.Reserve(
        pb.ReserveRequest(
            reservation_id=rid,
            ttl_seconds=ttl,
            lines=[pb.StockLine(item_id=i, quantity=q) for i, q in lines],
        ),
        timeout=5,
    )


def test_reserve_commit_restock_moves_stock_between_counters(inv):
    inv.SetStock(pb.SetStockRequest(item_id=40, available=10), timeout=5)
    rid = secrets.token_hex(8)
    assert reserve(inv, rid, (40, 3)).state == pb.RESERVED
    assert (level(inv, 40).available, level(inv, 40).reserved) == (7, 3)
    assert reserve(inv, rid, (40, 3)).state == pb.RESERVED  # idempotent: no second take
    assert level(inv, 40).available == 7
    ref = pb.ReservationRef(reservation_id=rid)
    assert inv.Commit(ref, timeout=5).state == pb.COMMITTED
    assert inv.Commit(ref, timeout=5).state == pb.COMMITTED
    s = level(inv, 40)
    assert (s.available, s.reserved, s.sold) == (7, 0, 3)
    assert inv.Restock(ref, timeout=5).state == pb.RESTOCKED
    s = level(inv, 40)
    assert (s.available, s.reserved, s.sold) == (10, 0, 0)


def test_a_short_line_fails_the_whole_reservation(inv):
    inv.SetStock(pb.SetStockRequest(item_id=41, available=5), timeout=5)
    inv.SetStock(pb.SetStockRequest(item_id=42, available=1), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        reserve(inv, secrets.token_hex(8), (41, 2), (42, 2))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (level(inv, 41).available, level(inv, 42).available) == (5, 1)


def test_release_before_reserve_leaves_a_tombstone(inv):
    rid = secrets.token_hex(8)
    before = level(inv, 41).available
    assert inv.Release(pb.ReservationRef(reservation_id=rid), timeout=5).state == pb.RELEASED
    assert reserve(inv, rid, (41, 1)).state == pb.RELEASED
    assert level(inv, 41).available == before


def test_commit_after_release_is_a_conflict(inv):
    rid = secrets.token_hex(8)
    reserve(inv, rid, (41, 1))
    inv.Release(pb.ReservationRef(reservation_id=rid), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        inv.Commit(pb.ReservationRef(reservation_id=rid), timeout=5)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_concurrent_reservations_never_oversell(inv):
    inv.SetStock(pb.SetStockRequest(item_id=42, available=25), timeout=5)

    def attempt(n: int) -> bool:
        try:
            reserve(inv, f"race-{n}-{secrets.token_hex(4)}", (42, 1))
            return True
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            return False

    with ThreadPoolExecutor(32) as pool:
        won = sum(pool.map(attempt, range(200)))
    assert won == 25
    s = level(inv, 42)
    assert (s.available, s.reserved) == (0, 25)


def test_uncommitted_reservations_expire(inv):
    inv.SetStock(pb.SetStockRequest(item_id=41, available=5), timeout=5)
    reserve(inv, secrets.token_hex(8), (41, 2), ttl=1)
    assert level(inv, 41).available == 3
    wait_for(lambda: level(inv, 41).available == 5, timeout=5, what="the reservation to expire")


@pytest.mark.parametrize(
    "request_",
    [
        pb.ReserveRequest(reservation_id="", lines=[pb.StockLine(item_id=40, quantity=1)]),
        pb.ReserveRequest(reservation_id="x", lines=[]),
        pb.ReserveRequest(reservation_id="x", lines=[pb.StockLine(item_id=40, quantity=-1)]),
        pb.ReserveRequest(
            reservation_id="x", ttl_seconds=99999, lines=[pb.StockLine(item_id=40, quantity=1)]
        ),
    ],
)
def test_malformed_reservations_are_invalid_argument(inv, request_):
    with pytest.raises(grpc.RpcError) as info:
        inv.Reserve(request_, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_item_is_refused(inv):
    with pytest.raises(grpc.RpcError) as info:
        reserve(inv, secrets.token_hex(8), (123_456, 1))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(info.value.trailing_metadata())["d11-error-code"] == "unprocessable"
    time.sleep(0)  # keep the module's order deterministic for the expiry test
