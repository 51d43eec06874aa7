"""The REST controller, driven over plain HTTP (httpx) as any client would."""

from __future__ import annotations

import secrets

import pytest

from tests.conftest import Stack

PROBLEM = "application/problem+json"


def order_body(qty: int = 1) -> dict:
    return {"user_id": "bob", "lines": [{"item_id": 5, "quantity": qty}]}


@pytest.fixture(scope="module")
def base(stack: Stack) -> str:
    return stack.url("controller-1")


def test_create_order_is_201_with_location_and_readable(base, http):
    r = http.post(f"{base}/api/orders", json=order_body(), headers={"Idempotency-Key": "c-1"})
    assert r.status_code == 201, r.text
    order = r.json()
    assert r.headers["Location"] == f"/api/orders/{order['order_id']}"
    assert order["status"] == "CONFIRMED"
    assert http.get(f"{base}{r.headers['Location']}").json() == order


def test_replayed_idempotency_key_returns_the_same_order(base, http):
    key = secrets.token_hex(8)
    first = http.post(f"{base}/api/orders", json=order_body(), headers={"Idempotency-Key": key})
    again = http.post(f"{base}/api/orders", json=order_body(), headers={"Idempotency-Key": key})
    assert first.json()["order_id"] == again.json()["order_id"]


def test_reused_key_with_another_body_is_409_problem(base, http):
    key = secrets.token_hex(8)
    http.post(f"{base}/api/orders", json=order_body(1), headers={"Idempotency-Key": key})
    r = http.post(f"{base}/api/orders", json=order_body(2), headers={"Idempotency-Key": key})
    assert r.status_code == 409
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["status"] == 409


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"user_id": 7, "lines": []}',
        b'{"user_id": "u", "lines": [{"item_id": "5", "quantity": 1}]}',
        b'{"user_id": "u", "lines": [{"item_id": 5, "quantity": true}]}',
        b'{"user_id": "u", "lines": [{"item_id": 5, "quantity": 0}]}',
        b'{"user_id": "u", "lines": []}',
        b'{"user_id": "u", "lines": [{"item_id": 5, "quantity": 1}], "coupon_code": 3}',
    ],
)
def test_malformed_orders_are_400_problems(base, http, body):
    r = http.post(
        f"{base}/api/orders",
        content=body,
        headers={"Idempotency-Key": secrets.token_hex(8), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["status"] == 400 and problem["type"].startswith("/problems/")


def test_missing_idempotency_key_is_400(base, http):
    r = http.post(f"{base}/api/orders", json=order_body())
    assert r.status_code == 400
    assert r.json()["type"] == "/problems/missing-idempotency-key"


def test_oversized_body_is_413(base, http):
    r = http.post(
        f"{base}/api/orders",
        content=b"{" + b" " * (128 * 1024) + b"}",
        headers={"Idempotency-Key": "big", "Content-Type": "application/json"},
    )
    assert r.status_code == 413


def test_unknown_order_is_404_problem(base, http):
    r = http.get(f"{base}/api/orders/does-not-exist")
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM


def test_health_and_metrics(base, http):
    assert http.get(f"{base}/healthz").json()["role"] == "controller"
    assert "d11_request_duration_seconds_bucket" in http.get(f"{base}/metrics").text
