"""The coupon service through its generated gRPC stubs."""

from __future__ import annotations

import secrets
import time

import grpc
import pytest

from rpc.proto import coupon_pb2 as pb
from rpc.proto import coupon_pb2_grpc
from tests.conftest import Stack


@pytest.fixture(scope="module")
def coupons(stack: Stack) -> coupon_pb2_grpc.CouponServiceStub:
    channel = grpc.insecure_channel(stack.topology.host("coupon").endpoint)
    yield coupon_pb2_grpc.CouponServiceStub(channel)
    channel.close()


def create(coupons, **fields) -> pb.Coupon:
    now = int(time.time() * 1000)
    values = {
        "code": f"T-{secrets.token_hex(4)}",
        "kind": pb.FIXED,
        "value": 500,
        "per_user_limit": 1,
        "valid_from_ms": now - 1000,
        "valid_until_ms": now + 60_000,
        **fields,
    }
    return coupons.CreateCoupon(pb.Coupon(**values), timeout=5)


def redeem(coupons, code: str, user: str = "u", total: int = 10_000, rid: str | None = None):
    return coupons.Redeem(
        pb.RedeemRequest(
            redemption_id=rid or secrets.token_hex(8),
            code=code,
            user_id=user,
            order_total_cents=total,
        ),
        timeout=5,
    )


def refused(coupons, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as info:
        redeem(coupons, *args, **kwargs)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    return info.value.details()


def test_fixed_and_percent_discounts(coupons):
    fixed = create(coupons, value=500)
    assert redeem(coupons, fixed.code, total=10_000).discount_cents == 500
    assert redeem(coupons, fixed.code, user="v", total=300).discount_cents == 300  # capped
    pct = create(coupons, kind=pb.PERCENT, value=15)
    assert redeem(coupons, pct.code, total=10_000).discount_cents == 1500


def test_per_user_limit_and_release_gives_the_use_back(coupons):
    c = create(coupons, per_user_limit=1)
    first = redeem(coupons, c.code, user="alice")
    assert "per user" in refused(coupons, c.code, user="alice")
    coupons.Release(pb.RedemptionRef(redemption_id=first.redemption_id), timeout=5)
    assert redeem(coupons, c.code, user="alice").state == pb.REDEEMED


def test_redeem_is_idempotent_by_redemption_id(coupons):
    c = create(coupons, per_user_limit=1)
    rid = secrets.token_hex(8)
    assert redeem(coupons, c.code, rid=rid) == redeem(coupons, c.code, rid=rid)
    assert coupons.GetCoupon(pb.GetCouponRequest(code=c.code), timeout=5).redeemed == 1


def test_total_limit_minimum_and_window(coupons):
    c = create(coupons, total_limit=1, per_user_limit=5)
    redeem(coupons, c.code, user="a")
    assert "used up" in refused(coupons, c.code, user="b")
    c = create(coupons, min_total_cents=5000)
    assert "at least" in refused(coupons, c.code, total=4999)
    past = int(time.time() * 1000) - 10_000
    c = create(coupons, valid_from_ms=past - 1000, valid_until_ms=past)
    assert "not valid" in refused(coupons, c.code)


def test_release_before_redeem_leaves_a_tombstone(coupons):
    c = create(coupons)
    rid = secrets.token_hex(8)
    coupons.Release(pb.RedemptionRef(redemption_id=rid), timeout=5)
    assert redeem(coupons, c.code, rid=rid).state == pb.RELEASED


def test_bad_coupons_are_invalid_and_duplicates_conflict(coupons):
    with pytest.raises(grpc.RpcError) as info:
        create(coupons, kind=pb.PERCENT, value=150)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    c = create(coupons)
    with pytest.raises(grpc.RpcError) as info:
        create(coupons, code=c.code)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
