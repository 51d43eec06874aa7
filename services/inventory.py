"""Inventory (role ``inventory``, gRPC): stock per item in its own SQLite database.

Stock moves between three counters per item, ``available -> reserved -> sold``, only by
conditional updates inside one transaction, so it can never go below zero (the CHECK
constraints would refuse it anyway). Every operation is idempotent by reservation id; a
release that arrives before its reservation leaves a tombstone, so a late, retried
reservation cannot take stock for an order that was already given up. Reservations not
committed within their TTL are released by a sweeper.

Run alone: ``python -m services.inventory`` (D11_PORT, D11_DATA_DIR).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from infra.db import ThreadOwned, Transaction, open_database, store_location
from infra.grpc_service import GrpcServer
from infra.service import Component, Context, run
from infra.tasks import Periodic
from rpc.errors import Code, DomainError, grpc_method
from rpc.proto import inventory_pb2 as pb
from rpc.proto import inventory_pb2_grpc
from services import catalog

log = logging.getLogger("d11.inventory")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id INTEGER PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_expiry ON reservations (state, expires_at_ms);
CREATE TABLE IF NOT EXISTS reservation_lines (
    reservation_id TEXT NOT NULL REFERENCES reservations,
    item_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, item_id)
) {without_rowid};
"""

MAX_TTL_S = 3600


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    state: str  # RESERVED | COMMITTED | RELEASED | RESTOCKED
    lines: tuple[tuple[int, int], ...]
    expires_at_ms: int

    def to_proto(self) -> pb.Reservation:
        return pb.Reservation(
            reservation_id=self.reservation_id,
            state=pb.ReservationState.Value(self.state),
            lines=[pb.StockLine(item_id=i, quantity=q) for i, q in self.lines],
            expires_at_ms=self.expires_at_ms,
        )


# Moves of stock per transition: (counter taken from, counter given to).
_MOVES = {
    ("RESERVED", "COMMITTED"): ("reserved", "sold"),
    ("RESERVED", "RELEASED"): ("reserved", "available"),
    ("COMMITTED", "RESTOCKED"): ("sold", "available"),
}


class InventoryStore:
    """Synchronous; runs on the store's own thread (infra.db.ThreadOwned)."""

    def __init__(self, path: Path | str) -> None:
        self.db = open_database(path, schema="inventory")
        self.db.executescript(SCHEMA)
        if self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0:
            with Transaction(self.db):
                self.db.executemany(
                    "INSERT INTO items (item_id, available) VALUES (?, ?)",
                    [(i.item_id, i.initial_stock) for i in catalog.items().values()],
                )

    def close(self) -> None:
        self.db.close()

    def _load(self, reservation_id: str) -> Reservation | None:
        row = self.db.execute(
            "SELECT state, expires_at_ms FROM reservations WHERE reservation_id = ?",
            (reservation_id,),
        ).fetchone()
        if row is None:
            return None
        lines = tuple(
            self.db.execute(
                "SELECT item_id, quantity FROM reservation_lines WHERE reservation_id = ?"
                " ORDER BY item_id",
                (reservation_id,),
            ).fetchall()
        )
        return Reservation(reservation_id, row[0], lines, row[1])

    def reserve(self, reservation_id: str, lines: dict[int, int], ttl_s: int) -> Reservation:
        with Transaction(self.db):
            existing = self._load(reservation_id)
            if existing is not None:
                return existing
            for item_id, quantity in sorted(lines.items()):
                updated = self.db.execute(
                    "UPDATE items SET available = available - ?, reserved = reserved + ?"
                    " WHERE item_id = ? AND available >= ?",
                    (quantity, quantity, item_id, quantity),
                ).rowcount
                if not updated:
                    # Raising rolls the whole reservation back: all lines or none.
                    if self.db.execute(
                        "SELECT 1 FROM items WHERE item_id = ?", (item_id,)
                    ).fetchone():
                        raise DomainError(
                            Code.SOLD_OUT,
                            f"item {item_id} has fewer than {quantity} left",
                            {"item_id": item_id},
                        )
                    raise DomainError(Code.UNPROCESSABLE, f"no item {item_id}")
            now = _now_ms()
            expires = now + ttl_s * 1000
            self.db.execute(
                "INSERT INTO reservations VALUES (?, 'RESERVED', ?, ?)",
                (reservation_id, expires, now),
            )
            self.db.executemany(
                "INSERT INTO reservation_lines VALUES (?, ?, ?)",
                [(reservation_id, i, q) for i, q in lines.items()],
            )
        return Reservation(reservation_id, "RESERVED", tuple(sorted(lines.items())), expires)

    def transition(self, reservation_id: str, target: str) -> Reservation:
        """Commit, release or restock; a repeat of the same transition is a no-op."""
        with Transaction(self.db):
            return self._transition(reservation_id, target)

    def commit_many(self, reservation_ids: list[str]) -> list[Reservation]:
        """Group commit: one transaction for a burst of confirmed orders. A reservation
        that cannot be committed (released, unknown) is reported as it is."""
        done = []
        with Transaction(self.db):
            for reservation_id in reservation_ids:
                try:
                    done.append(self._transition(reservation_id, "COMMITTED"))
                except DomainError:
                    found = self._load(reservation_id)
                    done.append(found or Reservation(reservation_id, "RELEASED", (), 0))
        return done

    def _transition(self, reservation_id: str, target: str) -> Reservation:
        current = self._load(reservation_id)
        if current is None:
            if target != "RELEASED":
                raise DomainError(Code.NOT_FOUND, f"no reservation {reservation_id}")
            # Tombstone: a reservation arriving later finds it released.
            self.db.execute(
                "INSERT INTO reservations VALUES (?, 'RELEASED', 0, ?)",
                (reservation_id, _now_ms()),
            )
            return Reservation(reservation_id, "RELEASED", (), 0)
        state = current.state
        if state == target:
            return current
        if target == "RESTOCKED" and state == "RESERVED":
            target = "RELEASED"  # cancelled before it was committed
        move = _MOVES.get((state, target))
        if move is None:
            if target == "RESTOCKED" and state == "RELEASED":
                return current
            raise DomainError(
                Code.CONFLICT, f"reservation {reservation_id} is {state}, not {target}"
            )
        source, sink = move
        for item_id, quantity in current.lines:
            self.db.execute(
                f"UPDATE items SET {source} = {source} - ?, {sink} = {sink} + ? WHERE item_id = ?",
                (quantity, quantity, item_id),
            )
        self.db.execute(
            "UPDATE reservations SET state = ?, updated_at_ms = ? WHERE reservation_id = ?",
            (target, _now_ms(), reservation_id),
        )
        return Reservation(reservation_id, target, current.lines, current.expires_at_ms)

    def expired(self, now_ms: int, limit: int = 500) -> list[str]:
        return [
            r
            for (r,) in self.db.execute(
                "SELECT reservation_id FROM reservations WHERE state = 'RESERVED'"
                " AND expires_at_ms < ? LIMIT ?",
                (now_ms, limit),
            )
        ]

    def stock(self, item_ids: Iterable[int]) -> list[tuple[int, int, int, int]]:
        ids = list(item_ids)
        sql = "SELECT item_id, available, reserved, sold FROM items"
        if ids:
            sql += f" WHERE item_id IN ({','.join('?' * len(ids))})"
        return self.db.execute(sql + " ORDER BY item_id", ids).fetchall()

    def set_stock(self, item_id: int, available: int) -> tuple[int, int, int, int]:
        with Transaction(self.db):
            self.db.execute(
                "INSERT INTO items (item_id, available) VALUES (?, ?) ON CONFLICT (item_id)"
                " DO UPDATE SET available = excluded.available",
                (item_id, available),
            )
            return self.db.execute(
                "SELECT item_id, available, reserved, sold FROM items WHERE item_id = ?",
                (item_id,),
            ).fetchone()


def _merge(lines: Iterable[pb.StockLine]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for line in lines:
        if line.item_id <= 0 or line.quantity <= 0:
            raise DomainError(Code.INVALID_ARGUMENT, "item ids and quantities must be positive")
        merged[line.item_id] = merged.get(line.item_id, 0) + line.quantity
    if not merged:
        raise DomainError(Code.INVALID_ARGUMENT, "a reservation needs at least one line")
    return merged


def _level(row: tuple[int, int, int, int]) -> pb.StockLevel:
    return pb.StockLevel(item_id=row[0], available=row[1], reserved=row[2], sold=row[3])


def _require_id(reservation_id: str) -> str:
    if not 1 <= len(reservation_id) <= 128:
        raise DomainError(Code.INVALID_ARGUMENT, "reservation_id must be 1-128 characters")
    return reservation_id


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: ThreadOwned[InventoryStore], default_ttl_s: int) -> None:
        self.store = store
        self.default_ttl_s = default_ttl_s

    @grpc_method
    async def Reserve(self, request, context):
        ttl = request.ttl_seconds or self.default_ttl_s
        if not 1 <= ttl <= MAX_TTL_S:
            raise DomainError(Code.INVALID_ARGUMENT, f"ttl_seconds must be 1-{MAX_TTL_S}")
        reservation = await self.store.run(
            InventoryStore.reserve,
            _require_id(request.reservation_id),
            _merge(request.lines),
            ttl,
        )
        return reservation.to_proto()

    async def _move(self, request: pb.ReservationRef, target: str) -> pb.Reservation:
        reservation = await self.store.run(
            InventoryStore.transition, _require_id(request.reservation_id), target
        )
        return reservation.to_proto()

    @grpc_method
    async def Commit(self, request, context):
        return await self._move(request, "COMMITTED")

    @grpc_method
    async def CommitMany(self, request, context):
        ids = [_require_id(r) for r in request.reservation_ids]
        if len(ids) > 1000:
            raise DomainError(Code.INVALID_ARGUMENT, "at most 1000 reservations per call")
        done = await self.store.run(InventoryStore.commit_many, ids)
        return pb.Reservations(reservations=[r.to_proto() for r in done])

    @grpc_method
    async def Release(self, request, context):
        return await self._move(request, "RELEASED")

    @grpc_method
    async def Restock(self, request, context):
        return await self._move(request, "RESTOCKED")

    @grpc_method
    async def GetStock(self, request, context):
        rows = await self.store.run(InventoryStore.stock, list(request.item_ids))
        return pb.StockReply(items=[_level(r) for r in rows])

    @grpc_method
    async def SetStock(self, request, context):
        if request.item_id <= 0 or request.available < 0:
            raise DomainError(Code.INVALID_ARGUMENT, "item_id > 0 and available >= 0")
        return _level(
            await self.store.run(InventoryStore.set_stock, request.item_id, request.available)
        )


def expiry_sweeper(store: ThreadOwned[InventoryStore], interval: float) -> Periodic:
    """Releases reservations whose TTL ran out (their order service died mid-saga)."""

    async def sweep() -> None:
        for reservation_id in await store.run(InventoryStore.expired, _now_ms()):
            await store.run(InventoryStore.transition, reservation_id, "RELEASED")
            log.info("reservation expired", extra={"reservation_id": reservation_id})

    return Periodic("reservation-expiry", interval, sweep)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InventoryService"].full_name


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    path = store_location(s.env, s.data_dir / "inventory.sqlite3")
    store = ThreadOwned(lambda: InventoryStore(path), "inventory-db")
    servicer = InventoryServicer(store, s.get_int("RESERVATION_TTL", 300))

    def register(server: grpc.aio.Server) -> list[str]:
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    sweeper = expiry_sweeper(store, s.get_float("SWEEP_INTERVAL", 1.0))
    return [store, sweeper, GrpcServer(ctx, register)]


def main() -> None:
    run(build, name="inventory", role="inventory", port=50061)


if __name__ == "__main__":
    main()
