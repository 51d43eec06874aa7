"""An ONC RPC server over TCP (record marking), serving programs by number and version.

A :class:`Program` maps procedure numbers to coroutines that take the arguments (an
:class:`Unpacker` over the call's bytes, the call itself) and return the results as XDR
bytes. The server does everything RFC 5531 puts around them: procedure 0 (NULL) of every
version it serves, RPC_MISMATCH for an RPC version other than 2, AUTH_NONE and AUTH_SYS
accepted (anything else AUTH_ERROR), PROG_UNAVAIL, PROG_MISMATCH with the versions it has,
PROC_UNAVAIL, GARBAGE_ARGS when the arguments do not decode (or bytes are left over),
SYSTEM_ERR when a procedure fails unexpectedly. Calls on one connection run concurrently
and are answered as they finish, matched by their xid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from infra.service import Context, bind_socket
from rpc.oncrpc.message import (
    RPC_VERSION,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    AuthSys,
    Call,
    RecordReader,
    RejectStat,
    Reply,
    RpcError,
    mark,
    parse_call,
)
from rpc.oncrpc.xdr import Unpacker, XdrError

log = logging.getLogger("d11.oncrpc")

Procedure = Callable[[Unpacker, Call], Awaitable[bytes]]
MAX_RECORD = 1 << 20


@dataclass
class Program:
    number: int
    version: int
    name: str
    procedures: dict[int, Procedure] = field(default_factory=dict)


def dispatch_reply(programs: list[Program], call: Call) -> tuple[Reply, Procedure | None]:
    """What RFC 5531 answers before any procedure runs, or the procedure to run."""
    if call.rpcvers != RPC_VERSION:
        return Reply(call.xid, reject=RejectStat.RPC_MISMATCH, low=2, high=2), None
    if call.cred.flavor == AuthFlavor.AUTH_SYS:
        try:
            AuthSys.parse(call.cred.body)
        except XdrError:
            return Reply(call.xid, reject=RejectStat.AUTH_ERROR, auth=AuthStat.AUTH_BADCRED), None
    elif call.cred.flavor != AuthFlavor.AUTH_NONE:
        return Reply(call.xid, reject=RejectStat.AUTH_ERROR, auth=AuthStat.AUTH_REJECTEDCRED), None
    versions = [p for p in programs if p.number == call.prog]
    if not versions:
        return Reply(call.xid, AcceptStat.PROG_UNAVAIL), None
    program = next((p for p in versions if p.version == call.vers), None)
    if program is None:
        served = [p.version for p in versions]
        return Reply(call.xid, AcceptStat.PROG_MISMATCH, low=min(served), high=max(served)), None
    if call.proc == 0:
        return Reply(call.xid), None  # NULL: no arguments, no results
    procedure = program.procedures.get(call.proc)
    if procedure is None:
        return Reply(call.xid, AcceptStat.PROC_UNAVAIL), None
    return Reply(call.xid), procedure


class OncRpcServer:
    """A component: the programs on ``address:port`` (TCP)."""

    def __init__(self, ctx: Context, programs: list[Program], address: str, port: int) -> None:
        self.ctx, self.programs = ctx, programs
        self.address, self.port = address, port
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        sock = bind_socket(self.address, self.port)
        self.server = await asyncio.start_server(self._connection, sock=sock)

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        records = RecordReader(MAX_RECORD)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while data := await reader.read(65536):
                for record in records.feed(data):
                    task = asyncio.create_task(self._answer(record, writer))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except RpcError as exc:  # not RPC, or too large: this connection is done
            log.warning("closing an ONC RPC connection: %s", exc)
        except ConnectionError:
            pass
        finally:
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            writer.close()

    async def _answer(self, record: bytes, writer: asyncio.StreamWriter) -> None:
        started = time.perf_counter()
        try:
            call = parse_call(record)
        except RpcError as exc:
            log.warning("dropping a record that is not a call: %s", exc)
            return  # RFC 5531 gives no reply to what has no xid to answer
        reply, procedure = dispatch_reply(self.programs, call)
        if procedure is not None:
            args = Unpacker(call.args)
            try:
                reply = Reply(call.xid, body=await procedure(args, call))
            except XdrError as exc:
                log.info("garbage arguments: %s", exc)
                reply = Reply(call.xid, AcceptStat.GARBAGE_ARGS)
            except Exception:
                log.exception("procedure %d of program %d failed", call.proc, call.prog)
                reply = Reply(call.xid, AcceptStat.SYSTEM_ERR)
        outcome = AcceptStat(reply.stat).name if reply.reject is None else "DENIED"
        self.ctx.metrics.observe("oncrpc", f"{call.prog}/{call.vers}/{call.proc}", outcome,
                                 started)  # fmt: skip
        if not writer.is_closing():
            writer.write(mark(reply.pack()))
