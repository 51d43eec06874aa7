"""The place-order saga's paths with fake saga participants (no process, a throwaway
SQLite store): success, a refusal that decided nothing, every compensation, forward
recovery of a saga that died, cancellation giving stock and coupon back, one order per key."""

from __future__ import annotations

import asyncio

import pytest

from infra.db import ThreadOwned
from rpc.errors import Code, DomainError
from rpc.proto import coupon_pb2, inventory_pb2
from services.order_api import Line, PlaceOrder
from services.order_store import OrderStore, now_ms
from services.orders import Orders


class Fake:
    """A participant that records each call and answers as a test says."""

    def __init__(self, answers: dict) -> None:
        self.answers, self.calls = answers, []

    async def call(self, method, request, *, timeout=None, retries=0):
        self.calls.append(method)
        answer = self.answers.get(method)
        if isinstance(answer, DomainError):
            raise answer
        return answer(request) if callable(answer) else answer


def reserved(request) -> inventory_pb2.Reservation:
    return inventory_pb2.Reservation(reservation_id=request.reservation_id,
                                     state=inventory_pb2.RESERVED)  # fmt: skip


def committed(request) -> inventory_pb2.Reservations:
    return inventory_pb2.Reservations(reservations=[
        inventory_pb2.Reservation(reservation_id=r, state=inventory_pb2.COMMITTED)
        for r in request.reservation_ids])  # fmt: skip


def redeemed(request) -> coupon_pb2.Redemption:
    return coupon_pb2.Redemption(redemption_id=request.redemption_id, state=coupon_pb2.REDEEMED,
                                 discount_cents=100)  # fmt: skip


OK_INVENTORY = {"Reserve": reserved, "CommitMany": committed, "Release": reserved,
                "Restock": reserved}  # fmt: skip


def run_saga(tmp_path, inventory: dict, coupons: dict, scenario):
    async def main():
        store = ThreadOwned(lambda: OrderStore(tmp_path / "orders.sqlite3"), "test-db")
        await store.start()
        inv, cou = Fake(inventory), Fake(coupons)
        orders = Orders(store, inv, cou, owner="test")  # type: ignore[arg-type]
        try:
            return await scenario(orders, inv, cou, store)
        finally:
            await orders.drain()
            await store.stop(1)

    return asyncio.run(main())


def command(key: str = "k1", coupon: str = "") -> PlaceOrder:
    return PlaceOrder(key, "user", (Line(7, 2),), coupon)


def test_success_reserves_redeems_confirms_and_commits(tmp_path):
    async def scenario(orders, inv, cou, store):
        order = await orders.place(command(coupon="D11-10PCT"), timeout=5)
        await orders.committer.flush()
        return order, inv.calls, cou.calls

    order, inv_calls, cou_calls = run_saga(tmp_path, OK_INVENTORY, {"Redeem": redeemed}, scenario)
    assert order.status == "CONFIRMED" and order.discount_cents == 100
    assert inv_calls == ["Reserve", "CommitMany"] and cou_calls == ["Redeem"]


@pytest.mark.parametrize(
    ("inventory", "coupons", "code", "compensated"),
    [
        # sold out decided nothing: no compensation owed
        ({"Reserve": DomainError(Code.SOLD_OUT, "gone", {"item_id": 7})}, {}, Code.SOLD_OUT, []),
        # the reservation may have happened: released
        ({**OK_INVENTORY, "Reserve": DomainError(Code.UNAVAILABLE, "down")}, {},
         Code.UNAVAILABLE, ["Release"]),
        # the coupon was refused after the stock was reserved: the stock goes back
        (OK_INVENTORY, {"Redeem": DomainError(Code.UNPROCESSABLE, "expired"),
                        "Release": redeemed}, Code.UNPROCESSABLE, ["Release"]),
    ],
    ids=["sold-out", "inventory-down", "coupon-refused"],
)  # fmt: skip
def test_a_failed_step_rejects_and_compensates(tmp_path, inventory, coupons, code, compensated):
    async def scenario(orders, inv, cou, store):
        with pytest.raises(DomainError) as caught:
            await orders.place(command(coupon="C" if coupons else ""), timeout=2)
        await orders.drain()
        again = None
        with pytest.raises(DomainError) as replay:  # the key keeps its answer
            again = await orders.place(command(coupon="C" if coupons else ""), timeout=2)
        return caught.value, replay.value, again, inv.calls

    error, replay, again, calls = run_saga(tmp_path, inventory, coupons, scenario)
    assert error.code is code and replay.code is code and again is None
    assert [c for c in calls if c in ("Release", "Restock")] == compensated
    assert calls.count("Reserve") == 1  # the replay never touched the stock


def test_one_order_per_key_and_a_different_body_is_a_conflict(tmp_path):
    async def scenario(orders, inv, cou, store):
        first, second = await asyncio.gather(orders.place(command(), timeout=5),
                                             orders.place(command(), timeout=5))  # fmt: skip
        with pytest.raises(DomainError) as conflict:
            await orders.place(PlaceOrder("k1", "user", (Line(8, 1),)), timeout=5)
        return first, second, conflict.value, inv.calls

    first, second, conflict, calls = run_saga(tmp_path, OK_INVENTORY, {}, scenario)
    assert first.order_id == second.order_id and calls.count("Reserve") == 1
    assert conflict.code is Code.CONFLICT


def test_a_saga_that_died_is_finished_forward(tmp_path):
    async def scenario(orders, inv, cou, store):
        from dataclasses import replace

        from services.order_store import OrderRow

        now = now_ms()
        draft = OrderRow("dead0001", "k-dead", command("k-dead").fingerprint(), "user", "",
                         "PENDING", "", "", 2000, 0, "gone-instance", now - 1, 0, now, now,
                         ((7, 2, 1000),))  # fmt: skip
        await store.run(OrderStore.begin, replace(draft))
        row = await store.run(OrderStore.get, "dead0001")
        resumed = await orders.resume(row)
        again = await orders.place(command("k-dead"), timeout=2)  # the client's retry
        return resumed, again

    resumed, again = run_saga(tmp_path, OK_INVENTORY, {}, scenario)
    assert resumed.status == "CONFIRMED" and again.order_id == "dead0001"


def test_cancelling_gives_stock_and_coupon_back_once(tmp_path):
    async def scenario(orders, inv, cou, store):
        order = await orders.place(command(coupon="D11-10PCT"), timeout=5)
        cancelled = await orders.cancel(order.order_id, "changed my mind")
        twice = await orders.cancel(order.order_id)
        await orders.drain()
        return cancelled, twice, inv.calls, cou.calls

    cancelled, twice, inv_calls, cou_calls = run_saga(
        tmp_path, OK_INVENTORY, {"Redeem": redeemed, "Release": redeemed}, scenario)  # fmt: skip
    assert cancelled.status == twice.status == "CANCELLED"
    assert inv_calls.count("Restock") == 1 and cou_calls.count("Release") == 1
