"""The order contract over ONC RPC (role ``order-oncrpc``): ``python -m services.wires.oncrpc``.

Program ``0x20001111`` version 1 (``order.x`` beside this file) on rpc/oncrpc's server,
over TCP with record marking; AUTH_NONE and AUTH_SYS. The host runs its portmapper on
port 111, as every ONC RPC machine runs rpcbind, and the service registers there with a
PMAPPROC_SET call, so Debian's ``rpcinfo -p HOST`` lists the program and
``rpcinfo -t HOST 536875281 1`` calls its NULL procedure. The call context (trace and
deadline) opens every call's arguments; domain errors are results (the union's error arm).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from infra.http1 import metrics_listener
from infra.service import Component, Context, PortInUse, run
from infra.telemetry import server_span
from rpc import deadline
from rpc.discovery import Discovery, registration
from rpc.errors import Code, DomainError
from rpc.oncrpc.client import OncRpcClient
from rpc.oncrpc.message import Call
from rpc.oncrpc.portmap import PMAP_PORT, Portmapper, register
from rpc.oncrpc.server import OncRpcServer, Program
from rpc.oncrpc.xdr import Packer, Unpacker, XdrError
from services.order_api import Line, Order, PlaceOrder, StatusChange
from services.orders import MAX_LINES, Orders, domain

log = logging.getLogger("d11.oncrpc")

PROGRAM, VERSION = 0x20001111, 1
NULL, PLACE, GET, CANCEL, LIST, ECHO = range(6)
PROCEDURES = {PLACE: "PLACE_ORDER", GET: "GET_ORDER", CANCEL: "CANCEL_ORDER",
              LIST: "LIST_ORDERS", ECHO: "ECHO"}  # fmt: skip


# -- the XDR of order.x -------------------------------------------------------------------
def pack_context(p: Packer, traceparent: str, timeout: float | None) -> None:
    p.string(traceparent)
    p.uint(max(0, min(int((timeout or 0) * 1000), 2**32 - 1)))


def unpack_context(u: Unpacker) -> tuple[str, float | None]:
    traceparent, ms = u.string(64), u.uint()
    return traceparent, deadline.parse_ms(ms)


def pack_line(p: Packer, line: Line) -> None:
    p.hyper(line.item_id)
    p.int(line.quantity)
    p.hyper(line.unit_price_cents)


def unpack_line(u: Unpacker) -> Line:
    return Line(u.hyper(), u.int(), u.hyper())


def pack_order(p: Packer, o: Order) -> None:
    p.string(o.order_id)
    p.string(o.user_id)
    p.array(list(o.lines), lambda ln: pack_line(p, ln))
    p.string(o.coupon_code)
    p.string(o.status)
    p.hyper(o.total_cents)
    p.hyper(o.discount_cents)
    p.string(o.idempotency_key)
    p.hyper(o.created_at_ms)
    p.hyper(o.updated_at_ms)
    p.string(o.reason)

    def change(h: StatusChange) -> None:
        p.string(h.status)
        p.hyper(h.at_ms)
        p.string(h.note)

    p.array(list(o.history), change)


def unpack_order(u: Unpacker) -> Order:
    order_id, user_id = u.string(64), u.string(64)
    lines = tuple(u.array(lambda: unpack_line(u), MAX_LINES))
    coupon, status = u.string(64), u.string(16)
    total, discount = u.hyper(), u.hyper()
    key, created, updated, reason = u.string(128), u.hyper(), u.hyper(), u.string()
    history = tuple(u.array(lambda: StatusChange(u.string(16), u.hyper(), u.string())))
    return Order(order_id, user_id, lines, status, total, discount, coupon, key, created,
                 updated, reason, history)  # fmt: skip


def pack_error(p: Packer, error: DomainError) -> None:
    p.int(0)
    p.string(error.code.value)
    p.string(error.message)
    p.string(json.dumps(error.detail) if error.detail else "")


def unpack_error(u: Unpacker) -> DomainError:
    code, message, detail = u.string(32), u.string(), u.string()
    try:
        parsed = json.loads(detail) if detail else {}
    except ValueError:
        parsed = {}
    try:
        return DomainError(Code(code), message, parsed if isinstance(parsed, dict) else {})
    except ValueError:
        return DomainError(Code.INTERNAL, f"{code}: {message}")


# -- server ---------------------------------------------------------------------------------
class OrderProgram:
    """The procedures of DOUBLE11_ORDER_V1 over the order domain."""

    def __init__(self, orders: Orders, served_by: str) -> None:
        self.orders, self.served_by = orders, served_by

    def program(self) -> Program:
        handlers = {PLACE: self.place, GET: self.get, CANCEL: self.cancel, LIST: self.list,
                    ECHO: self.echo}  # fmt: skip
        return Program(PROGRAM, VERSION, "double11_order", {
            number: self._traced(PROCEDURES[number], handler)
            for number, handler in handlers.items()
        })  # fmt: skip

    def _traced(self, name: str, handler):
        async def procedure(u: Unpacker, call: Call) -> bytes:
            traceparent, timeout = unpack_context(u)
            carrier = {"traceparent": traceparent} if traceparent else {}
            attributes = {"rpc.system": "onc_rpc", "rpc.service": "DOUBLE11_ORDER",
                          "rpc.method": name, "rpc.onc_rpc.program": PROGRAM,
                          "rpc.onc_rpc.version": VERSION}  # fmt: skip
            with server_span(f"DOUBLE11_ORDER/{name}", carrier, attributes) as span:
                span.set_attribute("rpc.request.size", len(call.args))
                with deadline.scope(timeout):
                    result = await handler(u)
                span.set_attribute("rpc.response.size", len(result))
            return result

        return procedure

    @staticmethod
    async def _result(work) -> bytes:
        p = Packer()
        try:
            order = await work
        except DomainError as error:
            pack_error(p, error)
        else:
            p.int(1)
            pack_order(p, order)
        return p.bytes()

    async def place(self, u: Unpacker) -> bytes:
        key, user = u.string(128), u.string(64)
        lines = tuple(Line(ln.item_id, ln.quantity)
                      for ln in u.array(lambda: unpack_line(u), MAX_LINES))  # fmt: skip
        coupon = u.string(64)
        u.end()
        return await self._result(self.orders.place(PlaceOrder(key, user, lines, coupon)))

    async def get(self, u: Unpacker) -> bytes:
        order_id = u.string(64)
        u.end()
        return await self._result(self.orders.get(order_id))

    async def cancel(self, u: Unpacker) -> bytes:
        order_id, reason = u.string(64), u.string(200)
        u.end()
        return await self._result(self.orders.cancel(order_id, reason))

    async def list(self, u: Unpacker) -> bytes:
        user, limit = u.string(64), u.uint()
        u.end()
        p = Packer()
        try:
            found = await self.orders.list(user, min(limit, 100) or 20)
        except DomainError as error:
            pack_error(p, error)
        else:
            p.int(1)
            p.array(found, lambda o: pack_order(p, o))
        return p.bytes()

    async def echo(self, u: Unpacker) -> bytes:
        message = u.string(1024)
        u.end()
        p = Packer()
        p.string(message)
        return p.bytes()


class Portmap(OncRpcServer):
    """The host's portmapper. Port 111 needs privileges (or a container, where Docker lets
    anyone bind it): without them, or beside a system rpcbind that holds the port, the
    service runs on unregistered, and says so."""

    async def start(self) -> None:
        try:
            await super().start()
        except (PermissionError, PortInUse) as exc:
            log.warning("no portmapper of ours on %s:%d: %s", self.address, self.port, exc)


class Registration:
    """A component: the service's entry in its host's portmapper (PMAPPROC_SET)."""

    def __init__(self, address: str, port: int, portmap_port: int) -> None:
        self.address, self.port, self.portmap_port = address, port, portmap_port

    async def start(self) -> None:
        try:
            if not await register(self.address, PROGRAM, VERSION, self.port, self.portmap_port):
                log.warning("the portmapper refused the registration (already registered?)")
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("cannot register with the portmapper: %s", exc)

    async def stop(self, grace: float) -> None:
        pass


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    orders, components = domain(s)
    program = OrderProgram(orders, s.name).program()
    # The host's portmapper (D11_PORTMAP_PORT, 111 as everywhere), then the program.
    portmap_port = s.get_int("PORTMAP_PORT", PMAP_PORT)
    portmapper = Portmapper(s.address)
    metrics = metrics_listener(ctx)  # /metrics and /healthz beside a port that is not HTTP
    return [
        *components,
        *([metrics] if metrics is not None else []),
        Portmap(ctx, portmapper.programs(), s.address, portmap_port),
        OncRpcServer(ctx, [program], s.address, s.port),
        Registration(s.address, s.port, portmap_port),
        *registration(s),
    ]


def main() -> None:
    run(build, name="order-oncrpc", role="order-oncrpc", port=20049)


# -- client ---------------------------------------------------------------------------------
class Client(OncRpcClient):
    """The contract over ONC RPC (a component); AUTH_SYS credentials name the caller."""

    def __init__(
        self, target: str | Discovery, timeout: float, *, max_in_flight: int | None = None
    ) -> None:
        super().__init__(target, PROGRAM, VERSION, timeout, name="DOUBLE11_ORDER",
                         max_in_flight=max_in_flight)  # fmt: skip

    async def _procedure(
        self, proc: int, fill: Callable[[Packer], None], timeout: float
    ) -> Unpacker:
        def build_args(carrier: dict[str, str], left: float) -> bytes:
            p = Packer()
            pack_context(p, carrier.get("traceparent", ""), left)  # this attempt's
            fill(p)
            return p.bytes()

        body = await self.call(PROCEDURES[proc], (proc, build_args), timeout=timeout, retries=1)
        return Unpacker(body)

    @staticmethod
    def _order(u: Unpacker) -> Order:
        try:
            if u.int() == 1:
                order = unpack_order(u)
                u.end()
                return order
            raise unpack_error(u)
        except XdrError as exc:
            raise DomainError(Code.INTERNAL, f"undecodable reply: {exc}") from None

    async def place(self, command: PlaceOrder, *, timeout: float) -> Order:
        def fill(p: Packer) -> None:
            p.string(command.idempotency_key)
            p.string(command.user_id)
            p.array(list(command.lines), lambda ln: pack_line(p, ln))
            p.string(command.coupon_code)

        return self._order(await self._procedure(PLACE, fill, timeout))

    async def get(self, order_id: str, *, timeout: float) -> Order:
        return self._order(await self._procedure(GET, lambda p: p.string(order_id), timeout))

    async def cancel(self, order_id: str, reason: str, *, timeout: float) -> Order:
        def fill(p: Packer) -> None:
            p.string(order_id)
            p.string(reason)

        return self._order(await self._procedure(CANCEL, fill, timeout))

    async def list(self, user_id: str, limit: int, *, timeout: float) -> list[Order]:
        def fill(p: Packer) -> None:
            p.string(user_id)
            p.uint(limit)

        u = await self._procedure(LIST, fill, timeout)
        try:
            if u.int() != 1:
                raise unpack_error(u)
            found = u.array(lambda: unpack_order(u), 100)
            u.end()
            return found
        except XdrError as exc:
            raise DomainError(Code.INTERNAL, f"undecodable reply: {exc}") from None


if __name__ == "__main__":
    main()
