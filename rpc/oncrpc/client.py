"""Calling an ONC RPC program over TCP: one connection per instance, calls multiplexed on
it by xid, balanced, retried and bounded by :class:`rpc.client.BalancedClient`.

``call(name, (proc, build_args))`` returns the results' bytes; ``build_args(carrier,
timeout)`` makes the arguments once the call's span exists, so a program whose arguments
carry the trace context and the deadline (as order.x's do) gets this attempt's.
What RFC 5531 answers in place of results becomes the domain's error: PROG_UNAVAIL,
PROG_MISMATCH, PROC_UNAVAIL (this instance does not serve it: another may) are
UNAVAILABLE, GARBAGE_ARGS is INVALID_ARGUMENT, SYSTEM_ERR and a denied call INTERNAL.
"""

from __future__ import annotations

import itertools
from typing import Any

from infra.telemetry import client_span, mark_error
from rpc.client import BalancedClient, Connections, PersistentConnection
from rpc.discovery import Discovery
from rpc.errors import Code, DomainError
from rpc.oncrpc.message import (
    AcceptStat,
    Auth,
    AuthSys,
    Call,
    RecordReader,
    Reply,
    RpcError,
    mark,
    parse_reply,
)

STAT_CODES = {
    AcceptStat.PROG_UNAVAIL: Code.UNAVAILABLE,
    AcceptStat.PROG_MISMATCH: Code.UNAVAILABLE,
    AcceptStat.PROC_UNAVAIL: Code.UNAVAILABLE,
    AcceptStat.GARBAGE_ARGS: Code.INVALID_ARGUMENT,
    AcceptStat.SYSTEM_ERR: Code.INTERNAL,
}


class _Connection(PersistentConnection[Reply]):
    def __init__(self) -> None:
        super().__init__()
        self.records = RecordReader()

    def data_received(self, data: bytes) -> None:
        try:
            for record in self.records.feed(data):
                reply = parse_reply(record)
                self.resolve(reply.xid, reply)
        except RpcError as exc:
            self.fail(DomainError(Code.UNAVAILABLE, f"bad reply: {exc}"))
            assert self.transport is not None
            self.transport.close()


class OncRpcClient(BalancedClient):
    """A program and version on every instance of ``target``. AUTH_SYS credentials name
    this machine (``machine``); AUTH_NONE when ``machine`` is empty."""

    def __init__(
        self,
        target: str | Discovery,
        prog: int,
        vers: int,
        timeout: float,
        *,
        name: str = "",
        machine: str = "double-11",
        max_in_flight: int | None = None,
    ) -> None:
        super().__init__(target, timeout, max_in_flight=max_in_flight)
        self.prog, self.vers, self.name = prog, vers, name or str(prog)
        self.cred = AuthSys(machine=machine).auth() if machine else Auth()
        self._xids = itertools.count(1)
        self._connections = Connections(_Connection)

    async def invoke(self, endpoint: str, method: str, request: Any, timeout: float) -> bytes:
        proc, build_args = request
        attributes = {"rpc.system": "onc_rpc", "rpc.service": self.name, "rpc.method": method,
                      "server.address": endpoint, "rpc.onc_rpc.program": self.prog,
                      "rpc.onc_rpc.version": self.vers, "rpc.onc_rpc.procedure": proc}  # fmt: skip
        with client_span(f"{self.name}/{method}", attributes) as (span, carrier):
            args = build_args(carrier, timeout)
            conn = await self._connections.get(endpoint)
            xid = next(self._xids) & 0xFFFFFFFF
            record = Call(xid, self.prog, self.vers, proc, self.cred, args=args).pack()
            span.set_attribute("rpc.request.size", len(record) + 4)
            try:
                reply = await conn.call(xid, mark(record), timeout, method)
            except DomainError as error:
                timed_out = error.code is Code.DEADLINE_EXCEEDED
                mark_error(span, "deadline exceeded" if timed_out else str(error))
                raise
            span.set_attribute("rpc.response.size", len(reply.body) + 28)
            if reply.reject is not None:
                mark_error(span, f"denied ({reply.reject}, auth {reply.auth})")
                raise DomainError(Code.INTERNAL, f"{method}: call denied ({reply.reject})")
            if reply.stat != AcceptStat.SUCCESS:
                stat = AcceptStat(reply.stat)
                mark_error(span, stat.name)
                raise DomainError(STAT_CODES[stat], f"{method}: {stat.name}")
            return reply.body

    async def stop(self, grace: float) -> None:
        self._connections.close()
