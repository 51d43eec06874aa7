"""The PostgreSQL option (``DATABASE_URL``): a whole second stack whose inventory, coupon
and order stores live in PostgreSQL, driven through its gateway like the SQLite one, and
read back from PostgreSQL itself."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from infra import topology as topo
from tests.conftest import Stack, d11, stack_env
from tests.e2e.test_flash_sale import post_order, session


@pytest.fixture(scope="module")
def pg_stack(postgres: str, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("pg-stack")
    # The data centre's hosts on other loopback addresses, so they run beside the main
    # stack (the order path needs nothing outside the data centre).
    path = tmp / "topology.yaml"
    data = yaml.safe_load(topo.DEFAULT_PATH.read_text().replace("127.10.0.", "127.10.7."))
    data["hosts"] = [h for h in data["hosts"] if h["address"].startswith("127.10.7.")]
    path.write_text(yaml.safe_dump(data))
    env = stack_env(tmp / "run", path)
    env["DATABASE_URL"] = postgres
    d11("up", "--detach", env=env, timeout=120)
    try:
        yield Stack(topo.load(path), env, 0.0)
    finally:
        d11("down", env=env, check=False)


def sql(url: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(url) as db:
        return db.execute(query, args).fetchall()


def admin_stock(stack: Stack, item_id: int, available: int) -> int:
    r = httpx.put(
        stack.url("controller-1", f"/api/admin/items/{item_id}/stock"),
        json={"available": available},
        headers={"X-Admin-Token": "double-11-lab-admin"},
        timeout=10,
        trust_env=False,
    )
    return r.status_code


UNKNOWN = (0, 502, 503, 504)  # the order's fate unknown to the client: a phone retries


def stampede(stack: Stack, bodies: list[dict]) -> list[tuple]:
    """Every body posted at once, each with its own Idempotency-Key; an answer that leaves
    the outcome unknown (a deadline passed under the stampede, 504) is retried with the
    same key, as the phones do, so each attempt ends sold or sold out."""
    url = stack.url("gateway", "/api/orders")

    async def go():
        async with session() as client:
            keys = [secrets.token_hex(12) for _ in bodies]
            results = await asyncio.gather(
                *(post_order(client, url, k, b) for k, b in zip(keys, bodies, strict=True))
            )
            for _ in range(3):
                again = [i for i, r in enumerate(results) if r[1] in UNKNOWN]
                if not again:
                    break
                await asyncio.sleep(1)
                retried = await asyncio.gather(
                    *(post_order(client, url, keys[i], bodies[i]) for i in again)
                )
                for i, r in zip(again, retried, strict=True):
                    results[i] = r
            return results

    return asyncio.run(go())


def test_flash_sale_on_postgres_sells_exactly_the_stock(pg_stack: Stack, postgres: str):
    item, attempts, in_stock = 1, 400, 40
    assert admin_stock(pg_stack, item, in_stock) == 200
    results = stampede(
        pg_stack,
        [
            {"user_id": f"pg-{n}", "lines": [{"item_id": item, "quantity": 1}]}
            for n in range(attempts)
        ],
    )
    statuses = Counter(r[1] for r in results)
    assert statuses == {201: in_stock, 409: attempts - in_stock}, statuses
    # Read back from PostgreSQL, not through our services.
    ((available, reserved, sold),) = sql(
        postgres, "SELECT available, reserved, sold FROM inventory.items WHERE item_id = %s", item
    )
    assert available == 0 and sold + reserved == in_stock
    ((confirmed,),) = sql(
        postgres,
        "SELECT COALESCE(SUM(l.quantity), 0) FROM orders.order_lines l JOIN orders.orders o"
        " USING (order_id) WHERE o.status = 'CONFIRMED' AND l.item_id = %s",
        item,
    )
    assert confirmed == in_stock
    # Nothing went to SQLite behind our back.
    data = Path(pg_stack.env["D11_RUN_DIR"]) / "data"
    assert not list(data.glob("*/inventory.sqlite3")) and not list(data.glob("*/coupon.sqlite3"))
    assert not (data / "orders" / "orders.sqlite3").exists()


def test_per_user_coupon_limit_holds_under_a_race_on_postgres(pg_stack: Stack, postgres: str):
    """D11-10PCT allows 3 uses per user: 12 simultaneous orders by one user get 3."""
    assert admin_stock(pg_stack, 9, 1000) == 200
    user = f"pg-coupon-{secrets.token_hex(4)}"
    body = {"user_id": user, "lines": [{"item_id": 9, "quantity": 1}], "coupon_code": "D11-10PCT"}
    statuses = Counter(r[1] for r in stampede(pg_stack, [body] * 12))
    assert statuses[201] == 3 and statuses[201] + statuses[422] == 12, statuses
    ((used,),) = sql(
        postgres,
        "SELECT COUNT(*) FROM coupon.redemptions WHERE user_id = %s AND state = 'REDEEMED'",
        user,
    )
    assert used == 3
