"""The order domain every order-service protocol (SOAP, Dubbo, gRPC) serves.

Placing an order is a saga over three owners of data:

1. record the order PENDING in the order store (keyed by its idempotency key);
2. reserve stock at the inventory service (reservation id = order id);
3. redeem the coupon, if any, at the coupon service (redemption id = order id);
4. mark the order CONFIRMED: this commit is the acknowledgement the client gets;
5. afterwards, commit the reservation so it no longer expires.

A failure in 2-3 marks the order REJECTED and compensates: release the reservation and the
redemption (both idempotent, both leaving tombstones when the original never arrived).
Steps that are owed after a crash are paid by :class:`Sweeper`, so no acknowledged order
is lost and no stock leaks. A saga that died half-way (its process killed, or hung past
its lease) is finished forward by a sweeper, since every step is idempotent by the order
id: a client retrying with its key then gets the order, not an error. Cancelling a
CONFIRMED order restocks and releases the coupon.

Two things keep a flash sale cheap. Reservations of confirmed orders are committed in
batches (:class:`GroupCommitter`: one inventory call per burst, not per order). And once
the inventory has said an item is sold out, further attempts within
``sold_out_hint_s`` are refused without asking it again (still recorded under their
idempotency key, so a replay gets the same answer); stock given back by a cancel may
therefore be offered again up to that long after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import replace

from opentelemetry import trace

from infra.config import Settings
from infra.db import ThreadOwned, store_location
from infra.service import Component
from infra.tasks import Periodic, cancel
from infra.telemetry import tracer
from rpc import deadline as call_deadline
from rpc.client import GrpcClient
from rpc.errors import Code, DomainError
from rpc.proto import coupon_pb2, coupon_pb2_grpc, inventory_pb2, inventory_pb2_grpc
from services import catalog
from services.order_api import Line, Order, PlaceOrder, StatusChange
from services.order_store import OrderRow, OrderStore, now_ms

log = logging.getLogger("d11.orders")

MAX_LINES = 50
MAX_QUANTITY = 1000
RESERVATION_TTL_S = 300
# Forward recovery of an abandoned order: each try's budget, and how long it is tried.
RESUME_STEP_S = 5.0
RESUME_FOR_S = 60.0
FINAL = ("CONFIRMED", "CANCELLED", "REJECTED")


def order_of(row: OrderRow) -> Order:
    """A stored order as the contract gives it to clients."""
    return Order(
        order_id=row.order_id,
        user_id=row.user_id,
        lines=tuple(Line(i, q, p) for i, q, p in row.lines),
        status=row.status,
        total_cents=row.total_cents,
        discount_cents=row.discount_cents,
        coupon_code=row.coupon_code,
        idempotency_key=row.idempotency_key,
        created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms,
        reason=row.reason,
        history=tuple(StatusChange(s, at, note) for s, at, note in row.history),
    )


def validate(request: PlaceOrder) -> tuple[Line, ...]:
    """Check the request and price its lines from the catalogue (never from the client)."""
    if not 1 <= len(request.idempotency_key) <= 128:
        raise DomainError(Code.INVALID_ARGUMENT, "idempotency_key must be 1-128 characters")
    if not 1 <= len(request.user_id) <= 64:
        raise DomainError(Code.INVALID_ARGUMENT, "user_id must be 1-64 characters")
    if len(request.coupon_code) > 64:
        raise DomainError(Code.INVALID_ARGUMENT, "coupon_code is at most 64 characters")
    if not 1 <= len(request.lines) <= MAX_LINES:
        raise DomainError(Code.INVALID_ARGUMENT, f"an order has 1-{MAX_LINES} lines")
    priced = []
    for line in request.lines:
        if not 1 <= line.quantity <= MAX_QUANTITY:
            raise DomainError(Code.INVALID_ARGUMENT, f"quantity must be 1-{MAX_QUANTITY}")
        if line.item_id <= 0:
            raise DomainError(Code.INVALID_ARGUMENT, f"item_id {line.item_id} is not positive")
        item = catalog.get(line.item_id)
        if item is None:
            raise DomainError(
                Code.UNPROCESSABLE, f"no item {line.item_id}", {"item_id": line.item_id}
            )
        priced.append(Line(line.item_id, line.quantity, item.price_cents))
    return tuple(priced)


def outcome(row: OrderRow) -> OrderRow:
    """A placed order as the client sees it: the order, or the error that ended it."""
    if row.status == "REJECTED":
        try:
            code = Code(row.reason_code)
        except ValueError:
            code = Code.INTERNAL
        raise DomainError(code, row.reason, {"order_id": row.order_id})
    return row


class Orders:
    """The order domain: saga, reads, cancellation. Protocol servers call this."""

    def __init__(
        self,
        store: ThreadOwned[OrderStore],
        inventory: GrpcClient[inventory_pb2_grpc.InventoryServiceStub],
        coupons: GrpcClient[coupon_pb2_grpc.CouponServiceStub],
        owner: str,
        *,
        default_timeout: float = 2.0,
        sold_out_hint_s: float = 1.0,
    ) -> None:
        self.store, self.inventory, self.coupons = store, inventory, coupons
        self.owner = owner
        self.default_timeout = default_timeout
        self.sold_out_hint_s = sold_out_hint_s
        self.committer = GroupCommitter(self)
        # Requests with one key arriving together in this process wait for the first.
        self._inflight: dict[str, tuple[str, asyncio.Future[OrderRow | DomainError]]] = {}
        self._sold_out: dict[int, float] = {}  # item id -> loop time the hint lapses
        self._background: set[asyncio.Task[None]] = set()

    # -- place -------------------------------------------------------------------------
    async def place(self, request: PlaceOrder, *, timeout: float | None = None) -> Order:
        """The contract's place (OrderApi): the saga, bounded by the caller's deadline."""
        return order_of(await self.place_row(request, timeout))

    async def place_row(self, request: PlaceOrder, timeout: float | None = None) -> OrderRow:
        lines = validate(request)
        fingerprint = request.fingerprint()
        key = request.idempotency_key
        if key in self._inflight:
            their_fingerprint, future = self._inflight[key]
            if their_fingerprint != fingerprint:
                raise DomainError(Code.CONFLICT, "idempotency key already used for another order")
            result = await asyncio.shield(future)
            if isinstance(result, DomainError):
                raise result
            return outcome(result)
        future: asyncio.Future[OrderRow | DomainError] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (fingerprint, future)
        try:
            budget = timeout or call_deadline.left(self.default_timeout)
            row = await self._saga(request, lines, fingerprint, budget)
        except DomainError as error:
            future.set_result(error)
            raise
        except BaseException as error:
            future.set_result(DomainError(Code.INTERNAL, f"order failed: {error!r}"))
            raise
        else:
            future.set_result(row)
        finally:
            del self._inflight[key]
        # On the protocol server's span, whichever wire: `./d11 trace ORDER_ID` finds it.
        span = trace.get_current_span()
        span.set_attribute("order.id", row.order_id)
        span.set_attribute("order.status", row.status)
        return outcome(row)

    def _hinted_sold_out(self, lines: tuple[Line, ...]) -> int | None:
        now = asyncio.get_running_loop().time()
        for line in lines:
            lapses = self._sold_out.get(line.item_id)
            if lapses is not None:
                if lapses > now:
                    return line.item_id
                del self._sold_out[line.item_id]
        return None

    async def _saga(
        self, request: PlaceOrder, lines: tuple[Line, ...], fingerprint: str, timeout: float
    ) -> OrderRow:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        now = now_ms()
        draft = OrderRow(
            order_id=uuid.uuid4().hex,
            idempotency_key=request.idempotency_key,
            request_hash=fingerprint,
            user_id=request.user_id,
            coupon_code=request.coupon_code,
            status="PENDING",
            reason_code="",
            reason="",
            total_cents=sum(ln.quantity * ln.unit_price_cents for ln in lines),
            discount_cents=0,
            owner=self.owner,
            # Past this, a sweeper may give the order up (this saga is surely gone by then).
            lease_until_ms=now + int(timeout * 1000) + 5000,
            finalized=0,
            created_at_ms=now,
            updated_at_ms=now,
            lines=tuple((ln.item_id, ln.quantity, ln.unit_price_cents) for ln in lines),
        )
        sold_out = self._hinted_sold_out(lines)
        if sold_out is not None:
            # Recorded like any other outcome, so the key keeps its answer.
            message = f"item {sold_out} is sold out"
            draft = replace(
                draft,
                status="REJECTED",
                reason_code=Code.SOLD_OUT.value,
                reason=message,
                finalized=1,
            )
            row, created = await self.store.run(OrderStore.begin, draft, message)
        else:
            row, created = await self.store.run(OrderStore.begin, draft)
        if not created:
            if row.request_hash != fingerprint:
                raise DomainError(Code.CONFLICT, "idempotency key already used for another order")
            return await self._settled(row, deadline)
        if row.status != "PENDING":
            return row
        return await self._advance(row, deadline)

    async def _advance(self, row: OrderRow, deadline: float, *, final: bool = True) -> OrderRow:
        """Steps 2-4 for a PENDING order: every step is idempotent by the order id, so a
        sweeper may run them again for an order whose saga died (forward recovery). Not
        ``final``: a failure that decided nothing (UNAVAILABLE, a deadline) is raised and
        the order stays PENDING for the next try."""
        loop = asyncio.get_running_loop()
        order_id = row.order_id

        def left() -> float:
            return deadline - loop.time()

        # 2. stock
        try:
            reservation = await self.inventory.call(
                "Reserve",
                inventory_pb2.ReserveRequest(
                    reservation_id=order_id,
                    ttl_seconds=RESERVATION_TTL_S,
                    lines=[inventory_pb2.StockLine(item_id=i, quantity=q) for i, q, _ in row.lines],
                ),
                timeout=left(),
                retries=1,
            )
        except DomainError as error:
            if error.code is Code.SOLD_OUT and "item_id" in error.detail:
                self._sold_out[int(error.detail["item_id"])] = loop.time() + self.sold_out_hint_s
            # A refusal decided nothing; anything else may have reserved: compensate.
            decided = error.code in (Code.SOLD_OUT, Code.UNPROCESSABLE, Code.INVALID_ARGUMENT)
            if not decided and not final:
                raise
            return await self._reject(order_id, error, owed=not decided)
        if reservation.state not in (inventory_pb2.RESERVED, inventory_pb2.COMMITTED):
            error = DomainError(Code.UNAVAILABLE, "the stock reservation was already released")
            return await self._reject(order_id, error, owed=True)

        # 3. coupon
        discount = 0
        if row.coupon_code:
            try:
                redemption = await self.coupons.call(
                    "Redeem",
                    coupon_pb2.RedeemRequest(
                        redemption_id=order_id,
                        code=row.coupon_code,
                        user_id=row.user_id,
                        order_total_cents=row.total_cents,
                    ),
                    timeout=left(),
                    retries=1,
                )
            except DomainError as error:
                if not final and error.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                    raise
                return await self._reject(order_id, error, owed=True)
            if redemption.state != coupon_pb2.REDEEMED:
                error = DomainError(Code.UNAVAILABLE, "the coupon redemption was already released")
                return await self._reject(order_id, error, owed=True)
            discount = redemption.discount_cents

        # 4. the acknowledgement
        confirmed = await self.store.run(
            OrderStore.transition,
            order_id,
            ("PENDING",),
            "CONFIRMED",
            note="stock reserved" + (", coupon redeemed" if discount else ""),
            discount_cents=discount,
        )
        if confirmed is None:  # a sweeper gave it up first; its outcome stands
            return await self._settled(row, deadline)
        self.committer.add(order_id)
        return confirmed

    async def resume(self, row: OrderRow) -> OrderRow:
        """Finish a PENDING order whose saga died (its process was killed, or hung past its
        lease): forward, not backward, so a client retrying its key gets the order rather
        than an error. An order that cannot be finished within RESUME_FOR_S is given up."""
        loop = asyncio.get_running_loop()
        log.warning("resuming an abandoned order", extra={"order_id": row.order_id})
        try:
            return await self._advance(row, loop.time() + RESUME_STEP_S, final=False)
        except DomainError as error:
            if now_ms() - row.created_at_ms < RESUME_FOR_S * 1000:
                return row  # the next sweep tries again
            return await self._reject(row.order_id, error, owed=True)

    async def _reject(self, order_id: str, error: DomainError, *, owed: bool) -> OrderRow:
        rejected = await self.store.run(
            OrderStore.transition,
            order_id,
            ("PENDING",),
            "REJECTED",
            note=error.message,
            finalized=0 if owed else 1,
            reason_code=error.code.value,
            reason=error.message,
        )
        if rejected is None:
            row = await self.store.run(OrderStore.get, order_id)
            assert row is not None
            return row
        if owed:
            self._finalize_soon(rejected)
        return rejected

    async def _settled(self, row: OrderRow, deadline: float) -> OrderRow:
        """The order once it has left PENDING (another process may still be placing it)."""
        loop = asyncio.get_running_loop()
        while row.status == "PENDING":
            if loop.time() > deadline:
                raise DomainError(Code.UNAVAILABLE, "the order is still being placed; retry")
            await asyncio.sleep(0.02)
            found = await self.store.run(OrderStore.get, row.order_id)
            assert found is not None
            row = found
        return row

    # -- read / cancel -----------------------------------------------------------------
    async def get(self, order_id: str, *, timeout: float | None = None) -> Order:
        return order_of(await self._row(order_id))

    async def _row(self, order_id: str) -> OrderRow:
        row = await self.store.run(OrderStore.get, order_id) if len(order_id) <= 64 else None
        if row is None:
            raise DomainError(Code.NOT_FOUND, f"no order {order_id!r}")
        return row

    async def list(
        self, user_id: str, limit: int = 20, *, timeout: float | None = None
    ) -> list[Order]:
        rows = await self.store.run(OrderStore.by_user, user_id, max(1, min(limit, 100)))
        return [order_of(r) for r in rows]

    async def cancel(
        self, order_id: str, reason: str = "", *, timeout: float | None = None
    ) -> Order:
        return order_of(await self._cancel(order_id, reason))

    async def _cancel(self, order_id: str, reason: str) -> OrderRow:
        row = await self._row(order_id)
        if row.status == "CANCELLED":
            return row
        if row.status != "CONFIRMED":
            raise DomainError(Code.CONFLICT, f"a {row.status} order cannot be cancelled")
        cancelled = await self.store.run(
            OrderStore.transition,
            order_id,
            ("CONFIRMED",),
            "CANCELLED",
            note=reason or "cancelled by the customer",
            reason_code="",
            reason=reason,
        )
        if cancelled is None:  # cancelled (or changed) concurrently
            return await self._cancel(order_id, reason)
        self._finalize_soon(cancelled)
        return cancelled

    # -- what is owed after the answer ---------------------------------------------------
    def _finalize_soon(self, row: OrderRow) -> None:
        task = asyncio.create_task(self.finalize(row))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def finalize(self, row: OrderRow) -> None:
        """Pay what an order owes elsewhere, by its status. Idempotent; on failure the
        sweeper tries again later."""
        if row.finalized or row.status == "PENDING":
            return
        if row.status == "CONFIRMED":
            self.committer.add(row.order_id)
            return
        # Runs after the answer was sent: its span may outlive the request's.
        attributes = {
            "order.id": row.order_id,
            "order.status": row.status,
            "d11.after_response": True,
        }
        ref = inventory_pb2.ReservationRef(reservation_id=row.order_id)
        with tracer().start_as_current_span("order.finalize", attributes=attributes):
            try:
                # REJECTED: compensate; CANCELLED: give back.
                method = "Restock" if row.status == "CANCELLED" else "Release"
                await self.inventory.call(method, ref, retries=2)
                if row.coupon_code:
                    await self.coupons.call(
                        "Release", coupon_pb2.RedemptionRef(redemption_id=row.order_id), retries=2
                    )
            except DomainError as error:
                log.warning(
                    "finalizing %s failed, will retry",
                    row.order_id,
                    extra={"order_id": row.order_id, "status": row.status, "error": str(error)},
                )
                return
        await self.store.run(OrderStore.mark_finalized, [(row.order_id, row.status)])

    async def drain(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self.committer.flush()


class GroupCommitter:
    """Commits the stock reservations of confirmed orders in batches: one CommitMany call
    and one store transaction per burst instead of one of each per order."""

    MAX_BATCH = 500
    LINGER_S = 0.02  # how long a first order waits for company

    def __init__(self, orders: Orders) -> None:
        self.orders = orders
        self.pending: dict[str, None] = {}  # ordered set
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def add(self, order_id: str) -> None:
        self.pending[order_id] = None
        self._wake.set()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.LINGER_S)
            try:
                await self.flush()
            except Exception:
                log.exception("group commit failed; the sweeper will retry")

    async def flush(self) -> None:
        while self.pending:
            batch = list(self.pending)[: self.MAX_BATCH]
            for order_id in batch:
                del self.pending[order_id]
            if not self.pending:
                self._wake.clear()
            try:
                reply = await self.orders.inventory.call(
                    "CommitMany", inventory_pb2.ReservationRefs(reservation_ids=batch), retries=2
                )
            except DomainError as error:
                log.warning("group commit of %d failed: %s", len(batch), error)
                return  # owed; the sweeper re-queues them
            done = [
                (r.reservation_id, "CONFIRMED")
                for r in reply.reservations
                if r.state == inventory_pb2.COMMITTED
            ]
            await self.orders.store.run(OrderStore.mark_finalized, done)

    async def stop(self, grace: float) -> None:
        await cancel(self.task)
        with contextlib.suppress(DomainError):
            await self.flush()


class Sweeper(Periodic):
    """Recovery: at start-up, finish this instance's PENDING orders (it just restarted,
    so their sagas are gone); then, every ``interval``, finish PENDING orders whose lease
    ran out (forward: :meth:`Orders.resume`) and pay whatever any order still owes."""

    def __init__(self, orders: Orders, interval: float = 1.0) -> None:
        super().__init__("order-sweeper", interval, self.sweep)
        self.orders = orders
        self.startup: asyncio.Task[None] | None = None

    async def sweep(self, *, startup: bool = False) -> None:
        store = self.orders.store
        owner = self.orders.owner if startup else None
        rows = [await store.run(OrderStore.get, order_id)
                for order_id in await store.run(OrderStore.abandoned, owner, now_ms())]  # fmt: skip
        await asyncio.gather(*(self.orders.resume(r) for r in rows if r and r.status == "PENDING"))
        # Leave fresh ones to the saga's own finalizer and the group committer.
        # Leave fresh ones to the saga's own finalizer and the group committer.
        for order_id, status in await store.run(OrderStore.owed, now_ms() - 1000):
            if status == "CONFIRMED":
                self.orders.committer.add(order_id)
            else:
                row = await store.run(OrderStore.get, order_id)
                if row is not None:
                    await self.orders.finalize(row)

    async def start(self) -> None:
        # In the background: finishing what the last run left must not delay serving.
        self.startup = asyncio.create_task(self.sweep(startup=True), name="order-sweep-startup")
        await super().start()

    async def stop(self, grace: float) -> None:
        await cancel(self.startup)
        await super().stop(grace)
        await self.orders.drain()


class NoopOrders:
    """For the protocol benchmark only (``D11_ORDER_BACKEND=noop``): the same answers'
    shape with no saga behind them, so what is measured is the wire."""

    def __init__(self) -> None:
        now = now_ms()
        self.template = OrderRow(
            order_id="0" * 32,
            idempotency_key="",
            request_hash="",
            user_id="",
            coupon_code="",
            status="CONFIRMED",
            reason_code="",
            reason="",
            total_cents=0,
            discount_cents=0,
            owner="noop",
            lease_until_ms=0,
            finalized=1,
            created_at_ms=now,
            updated_at_ms=now,
            history=(("PENDING", now, "order received"), ("CONFIRMED", now, "stock reserved")),
        )

    async def place(self, request: PlaceOrder, *, timeout: float | None = None) -> Order:
        lines = validate(request)
        return order_of(
            replace(
                self.template,
                idempotency_key=request.idempotency_key,
                user_id=request.user_id,
                total_cents=sum(ln.quantity * ln.unit_price_cents for ln in lines),
                lines=tuple((ln.item_id, ln.quantity, ln.unit_price_cents) for ln in lines),
            )
        )

    async def get(self, order_id: str, *, timeout: float | None = None) -> Order:
        return order_of(replace(self.template, order_id=order_id))

    async def cancel(
        self, order_id: str, reason: str = "", *, timeout: float | None = None
    ) -> Order:
        return order_of(replace(self.template, order_id=order_id, status="CANCELLED"))

    async def list(
        self, user_id: str, limit: int = 20, *, timeout: float | None = None
    ) -> list[Order]:
        return []


def domain(settings: Settings) -> tuple[Orders, list[Component]]:
    """The order domain as every order service runs it, and the components to start
    before the protocol server (in order: store, clients, committer, recovery)."""
    if settings.get("ORDER_BACKEND", "saga") == "noop":
        return NoopOrders(), []  # type: ignore[return-value]
    # One store for the three order services: D11_ORDER_DB (a file or a URL), else
    # DATABASE_URL, else the shared SQLite file of the run.
    default_db = settings.run_dir / "data" / "orders" / "orders.sqlite3"
    path = settings.get("ORDER_DB", store_location(settings.env, default_db))
    store = ThreadOwned(lambda: OrderStore(path), "order-db")
    timeout = settings.get_float("DOWNSTREAM_TIMEOUT", 2.0)
    inventory = GrpcClient(
        settings.get("INVENTORY"), inventory_pb2_grpc.InventoryServiceStub, timeout
    )
    coupons = GrpcClient(settings.get("COUPON"), coupon_pb2_grpc.CouponServiceStub, timeout)
    orders = Orders(
        store,
        inventory,
        coupons,
        owner=settings.name,
        sold_out_hint_s=settings.get_float("SOLD_OUT_HINT", 1.0),
    )
    sweeper = Sweeper(orders, settings.get_float("SWEEP_INTERVAL", 1.0))
    return orders, [store, inventory, coupons, orders.committer, sweeper]
