"""The order store: one SQLite file shared by the order services (SOAP, Dubbo, gRPC).

It is also the saga's log. An order row is written PENDING before any other service is
called and every later step is a conditional update from the state the step expects, so
two processes (a saga and a sweeper, or two order services) can never both decide an
order's fate. ``finalized = 0`` marks an order whose side effects elsewhere (commit,
compensation, restock) are still owed; the sweeper pays them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from infra.db import Transaction, open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_hash TEXT NOT NULL,
    user_id TEXT NOT NULL,
    coupon_code TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED', 'REJECTED')),
    reason_code TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    total_cents INTEGER NOT NULL,
    discount_cents INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    finalized INTEGER NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, created_at_ms);
CREATE INDEX IF NOT EXISTS orders_owed ON orders (finalized, status);
-- The sweeper looks for PENDING orders every second; without this it scans every order.
CREATE INDEX IF NOT EXISTS orders_pending ON orders (status, lease_until_ms);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id TEXT NOT NULL REFERENCES orders,
    line_no INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, line_no)
) {without_rowid};
CREATE TABLE IF NOT EXISTS order_history (
    id {serial_pk},  -- insertion order is history order
    order_id TEXT NOT NULL REFERENCES orders,
    status TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS order_history_by_order ON order_history (order_id, id);
"""

_ORDER_COLUMNS = (
    "order_id, idempotency_key, request_hash, user_id, coupon_code, status, reason_code,"
    " reason, total_cents, discount_cents, owner, lease_until_ms, finalized, created_at_ms,"
    " updated_at_ms"
)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class OrderRow:
    order_id: str
    idempotency_key: str
    request_hash: str
    user_id: str
    coupon_code: str
    status: str
    reason_code: str
    reason: str
    total_cents: int
    discount_cents: int
    owner: str
    lease_until_ms: int
    finalized: int
    created_at_ms: int
    updated_at_ms: int
    lines: tuple[tuple[int, int, int], ...] = ()  # (item_id, quantity, unit_price_cents)
    history: tuple[tuple[str, int, str], ...] = field(default=())  # (status, at_ms, note)

    def __str__(self) -> str:
        lines = ", ".join(f"{q}x#{i}" for i, q, _ in self.lines)
        return f"order {self.order_id} {self.status} user={self.user_id} [{lines}]"


class OrderStore:
    """Synchronous; runs on the store's own thread (infra.db.ThreadOwned)."""

    def __init__(self, path: Path | str) -> None:
        self.db = open_database(path, schema="orders")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- reads -------------------------------------------------------------------------
    def _row(self, where: str, arg: Any) -> OrderRow | None:
        row = self.db.execute(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE {where} = ?", (arg,)
        ).fetchone()
        if row is None:
            return None
        order_id = row[0]
        lines = tuple(
            self.db.execute(
                "SELECT item_id, quantity, unit_price_cents FROM order_lines WHERE order_id = ?"
                " ORDER BY line_no",
                (order_id,),
            )
        )
        history = tuple(
            self.db.execute(
                "SELECT status, at_ms, note FROM order_history WHERE order_id = ? ORDER BY id",
                (order_id,),
            )
        )
        return OrderRow(*row, lines=lines, history=history)

    def get(self, order_id: str) -> OrderRow | None:
        return self._row("order_id", order_id)

    def by_key(self, idempotency_key: str) -> OrderRow | None:
        return self._row("idempotency_key", idempotency_key)

    def by_user(self, user_id: str, limit: int) -> list[OrderRow]:
        ids = self.db.execute(
            "SELECT order_id FROM orders WHERE user_id = ? ORDER BY created_at_ms DESC LIMIT ?",
            (user_id, limit),
        ).fetchall()
        return [row for (order_id,) in ids if (row := self.get(order_id)) is not None]

    # -- writes ------------------------------------------------------------------------
    def _history(self, order_id: str, status: str, at: int, note: str) -> None:
        self.db.execute(
            "INSERT INTO order_history (order_id, status, at_ms, note) VALUES (?, ?, ?, ?)",
            (order_id, status, at, note),
        )

    def begin(self, row: OrderRow, note: str = "order received") -> tuple[OrderRow, bool]:
        """Record a new order (PENDING, or REJECTED outright), or return the one already
        holding its idempotency key."""
        with Transaction(self.db):
            existing = self.by_key(row.idempotency_key)
            if existing is not None:
                return existing, False
            values = [getattr(row, c.strip()) for c in _ORDER_COLUMNS.split(",")]
            self.db.execute(
                f"INSERT INTO orders ({_ORDER_COLUMNS}) VALUES ({','.join('?' * len(values))})",
                values,
            )
            self.db.executemany(
                "INSERT INTO order_lines VALUES (?, ?, ?, ?, ?)",
                [(row.order_id, n, *line) for n, line in enumerate(row.lines, 1)],
            )
            self._history(row.order_id, row.status, row.created_at_ms, note)
        return replace(row, history=((row.status, row.created_at_ms, note),)), True

    def transition(
        self,
        order_id: str,
        expected: tuple[str, ...],
        status: str,
        *,
        note: str = "",
        finalized: int = 0,
        **fields: Any,
    ) -> OrderRow | None:
        """Move an order on if, and only if, it is still in one of ``expected``: the order
        as it is now, or None when it was not in an expected state."""
        at = now_ms()
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with Transaction(self.db):
            changed = self.db.execute(
                f"UPDATE orders SET status = ?, finalized = ?, updated_at_ms = ?"
                f"{', ' + assignments if assignments else ''}"
                f" WHERE order_id = ? AND status IN ({','.join('?' * len(expected))})",
                (status, finalized, at, *fields.values(), order_id, *expected),
            ).rowcount
            if not changed:
                return None
            self._history(order_id, status, at, note)
            return self.get(order_id)

    def mark_finalized(self, done: list[tuple[str, str]]) -> int:
        """Mark (order_id, status) pairs paid, each only if it is still in that status."""
        with Transaction(self.db):
            return sum(
                self.db.execute(
                    "UPDATE orders SET finalized = 1 WHERE order_id = ? AND status = ?", pair
                ).rowcount
                for pair in done
            )

    # -- recovery ----------------------------------------------------------------------
    def abandoned(self, owner: str | None, now: int, limit: int = 200) -> list[str]:
        """PENDING orders whose saga is gone: this owner's (it just restarted), or any
        whose lease ran out."""
        if owner is not None:
            sql = "SELECT order_id FROM orders WHERE status = 'PENDING' AND owner = ? LIMIT ?"
            return [r for (r,) in self.db.execute(sql, (owner, limit))]
        sql = "SELECT order_id FROM orders WHERE status = 'PENDING' AND lease_until_ms < ? LIMIT ?"
        return [r for (r,) in self.db.execute(sql, (now, limit))]

    def owed(self, older_than_ms: int, limit: int = 500) -> list[tuple[str, str]]:
        """Orders whose side effects are still owed: (order_id, status)."""
        return self.db.execute(
            "SELECT order_id, status FROM orders WHERE finalized = 0"
            " AND status != 'PENDING' AND updated_at_ms < ? LIMIT ?",
            (older_than_ms, limit),
        ).fetchall()

    def audit(self) -> dict[str, Any]:
        """Read-back for the load script's correctness audit."""
        by_status = dict(self.db.execute("SELECT status, COUNT(*) FROM orders GROUP BY status"))
        units = dict(
            self.db.execute(
                "SELECT l.item_id, CAST(SUM(l.quantity) AS BIGINT) FROM order_lines l JOIN orders o"
                " USING (order_id) WHERE o.status = 'CONFIRMED' GROUP BY l.item_id"
            )
        )
        owed = self.db.execute("SELECT COUNT(*) FROM orders WHERE finalized = 0").fetchone()[0]
        return {"orders_by_status": by_status, "confirmed_units": units, "owed": owed}
