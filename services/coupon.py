"""Coupons (role ``coupon``, gRPC): validity windows, per-user and total limits, one
redemption per order, in its own SQLite database.

A redemption is checked and recorded in one IMMEDIATE transaction, so two orders racing
for a user's last use cannot both win. Redeem and Release are idempotent by redemption id
(the order id); a release that arrives first leaves a tombstone.

Run alone: ``python -m services.coupon`` (D11_PORT, D11_DATA_DIR).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from infra.db import ThreadOwned, Transaction, open_database, store_location
from infra.grpc_service import GrpcServer
from infra.service import Component, Context, run
from rpc.errors import Code, DomainError, grpc_method
from rpc.proto import coupon_pb2 as pb
from rpc.proto import coupon_pb2_grpc
from services import catalog

SCHEMA = """
CREATE TABLE IF NOT EXISTS coupons (
    code TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('FIXED', 'PERCENT')),
    value INTEGER NOT NULL CHECK (value > 0),
    min_total_cents INTEGER NOT NULL DEFAULT 0,
    per_user_limit INTEGER NOT NULL DEFAULT 1,
    total_limit INTEGER NOT NULL DEFAULT 0,
    valid_from_ms BIGINT NOT NULL,
    valid_until_ms BIGINT NOT NULL,
    redeemed INTEGER NOT NULL DEFAULT 0 CHECK (redeemed >= 0)
);
CREATE TABLE IF NOT EXISTS redemptions (
    redemption_id TEXT PRIMARY KEY,
    code TEXT NOT NULL,
    user_id TEXT NOT NULL,
    discount_cents INTEGER NOT NULL,
    state TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS redemptions_by_user ON redemptions (code, user_id, state);
"""

_COLUMNS = (
    "code, kind, value, min_total_cents, per_user_limit, total_limit, valid_from_ms,"
    " valid_until_ms, redeemed"
)
SEED_VALIDITY_MS = 30 * 24 * 3600 * 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Redemption:
    redemption_id: str
    state: str  # REDEEMED | RELEASED
    code: str
    discount_cents: int

    def to_proto(self) -> pb.Redemption:
        return pb.Redemption(
            redemption_id=self.redemption_id,
            state=pb.RedemptionState.Value(self.state),
            code=self.code,
            discount_cents=self.discount_cents,
        )


def discount(kind: str, value: int, total_cents: int) -> int:
    if kind == "FIXED":
        return min(value, total_cents)
    return total_cents * value // 100


class CouponStore:
    """Synchronous; runs on the store's own thread (infra.db.ThreadOwned)."""

    def __init__(self, path: Path | str) -> None:
        self.db = open_database(path, schema="coupon")
        self.db.executescript(SCHEMA)
        if self.db.execute("SELECT COUNT(*) FROM coupons").fetchone()[0] == 0:
            now = _now_ms()
            with Transaction(self.db):
                for c in catalog.COUPONS:
                    self.db.execute(
                        f"INSERT INTO coupons ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                        (
                            c.code,
                            c.kind,
                            c.value,
                            c.min_total_cents,
                            c.per_user_limit,
                            c.total_limit,
                            now,
                            now + SEED_VALIDITY_MS,
                        ),
                    )

    def close(self) -> None:
        self.db.close()

    def _load(self, redemption_id: str) -> Redemption | None:
        row = self.db.execute(
            "SELECT state, code, discount_cents FROM redemptions WHERE redemption_id = ?",
            (redemption_id,),
        ).fetchone()
        return Redemption(redemption_id, *row) if row else None

    def redeem(self, redemption_id: str, code: str, user_id: str, total: int) -> Redemption:
        with Transaction(self.db):
            existing = self._load(redemption_id)
            if existing is not None:
                return existing
            row = self.db.execute(
                f"SELECT {_COLUMNS} FROM coupons WHERE code = ?", (code,)
            ).fetchone()
            if row is None:
                raise DomainError(Code.UNPROCESSABLE, f"no coupon {code!r}", {"coupon": code})
            (
                _,
                kind,
                value,
                min_total,
                per_user,
                total_limit,
                valid_from,
                valid_until,
                redeemed,
            ) = row
            now = _now_ms()
            refuse = None
            if not valid_from <= now < valid_until:
                refuse = "is not valid now"
            elif total < min_total:
                refuse = f"needs a total of at least {min_total} cents"
            elif total_limit and redeemed >= total_limit:
                refuse = "is used up"
            elif (
                self.db.execute(
                    "SELECT COUNT(*) FROM redemptions WHERE code = ? AND user_id = ?"
                    " AND state = 'REDEEMED'",
                    (code, user_id),
                ).fetchone()[0]
                >= per_user
            ):
                refuse = f"allows {per_user} use(s) per user"
            if refuse:
                raise DomainError(Code.UNPROCESSABLE, f"coupon {code} {refuse}", {"coupon": code})
            amount = discount(kind, value, total)
            self.db.execute(
                "INSERT INTO redemptions VALUES (?, ?, ?, ?, 'REDEEMED', ?)",
                (redemption_id, code, user_id, amount, now),
            )
            self.db.execute("UPDATE coupons SET redeemed = redeemed + 1 WHERE code = ?", (code,))
        return Redemption(redemption_id, "REDEEMED", code, amount)

    def release(self, redemption_id: str) -> Redemption:
        with Transaction(self.db):
            existing = self._load(redemption_id)
            if existing is None:
                self.db.execute(
                    "INSERT INTO redemptions VALUES (?, '', '', 0, 'RELEASED', ?)",
                    (redemption_id, _now_ms()),
                )
                return Redemption(redemption_id, "RELEASED", "", 0)
            if existing.state == "RELEASED":
                return existing
            self.db.execute(
                "UPDATE redemptions SET state = 'RELEASED', at_ms = ? WHERE redemption_id = ?",
                (_now_ms(), redemption_id),
            )
            self.db.execute(
                "UPDATE coupons SET redeemed = redeemed - 1 WHERE code = ?", (existing.code,)
            )
        return Redemption(redemption_id, "RELEASED", existing.code, existing.discount_cents)

    def create(self, c: pb.Coupon) -> pb.Coupon:
        with Transaction(self.db):
            if self.db.execute("SELECT 1 FROM coupons WHERE code = ?", (c.code,)).fetchone():
                raise DomainError(Code.CONFLICT, f"coupon {c.code} exists")
            self.db.execute(
                f"INSERT INTO coupons ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    c.code,
                    pb.Kind.Name(c.kind),
                    c.value,
                    c.min_total_cents,
                    c.per_user_limit,
                    c.total_limit,
                    c.valid_from_ms,
                    c.valid_until_ms,
                ),
            )
        return self.get(c.code)

    def get(self, code: str) -> pb.Coupon:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM coupons WHERE code = ?", (code,)).fetchone()
        if row is None:
            raise DomainError(Code.NOT_FOUND, f"no coupon {code!r}")
        fields = dict(zip([c.strip() for c in _COLUMNS.split(",")], row, strict=True))
        fields["kind"] = pb.Kind.Value(fields["kind"])
        return pb.Coupon(**fields)


def _check_id(redemption_id: str) -> str:
    if not 1 <= len(redemption_id) <= 128:
        raise DomainError(Code.INVALID_ARGUMENT, "redemption_id must be 1-128 characters")
    return redemption_id


def _check_coupon(c: pb.Coupon) -> None:
    problems = []
    if not 1 <= len(c.code) <= 64:
        problems.append("code must be 1-64 characters")
    if c.kind == pb.KIND_UNSPECIFIED:
        problems.append("kind must be FIXED or PERCENT")
    if c.value <= 0 or (c.kind == pb.PERCENT and c.value > 100):
        problems.append("value must be positive (1-100 for PERCENT)")
    if c.per_user_limit <= 0 or c.total_limit < 0 or c.min_total_cents < 0:
        problems.append("limits must be positive")
    if c.valid_until_ms <= c.valid_from_ms:
        problems.append("valid_until_ms must be after valid_from_ms")
    if problems:
        raise DomainError(Code.INVALID_ARGUMENT, "; ".join(problems))


class CouponServicer(coupon_pb2_grpc.CouponServiceServicer):
    def __init__(self, store: ThreadOwned[CouponStore]) -> None:
        self.store = store

    @grpc_method
    async def Redeem(self, request, context):
        if not request.code or not request.user_id or request.order_total_cents < 0:
            raise DomainError(Code.INVALID_ARGUMENT, "code, user_id and a total are required")
        redemption = await self.store.run(
            CouponStore.redeem,
            _check_id(request.redemption_id),
            request.code,
            request.user_id,
            request.order_total_cents,
        )
        return redemption.to_proto()

    @grpc_method
    async def Release(self, request, context):
        redemption = await self.store.run(CouponStore.release, _check_id(request.redemption_id))
        return redemption.to_proto()

    @grpc_method
    async def CreateCoupon(self, request, context):
        _check_coupon(request)
        return await self.store.run(CouponStore.create, request)

    @grpc_method
    async def GetCoupon(self, request, context):
        return await self.store.run(CouponStore.get, request.code)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CouponService"].full_name


async def build(ctx: Context) -> Sequence[Component]:
    path = store_location(ctx.settings.env, ctx.settings.data_dir / "coupon.sqlite3")
    store = ThreadOwned(lambda: CouponStore(path), "coupon-db")
    servicer = CouponServicer(store)

    def register(server: grpc.aio.Server) -> list[str]:
        coupon_pb2_grpc.add_CouponServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return [store, GrpcServer(ctx, register)]


def main() -> None:
    run(build, name="coupon", role="coupon", port=50062)


if __name__ == "__main__":
    main()
