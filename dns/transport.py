"""DNS over UDP and TCP for our servers: datagrams, and RFC 7766 streams (two-byte length
prefix, several queries per connection, an idle timeout). A server hands every message to
one responder: a plain function (the authoritative servers answer from memory without a
task per query) or a coroutine function (the resolvers wait on other servers)."""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import time
from collections.abc import Awaitable, Callable

from infra.http1 import metrics_listener
from infra.service import Context, bind_socket

TCP_IDLE = 10.0
_pending: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly: keep them here


def _spawn(coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    _pending.add(task)
    task.add_done_callback(_pending.discard)


# (message, over TCP?, client address) -> reply, or None to send nothing
Responder = Callable[[bytes, bool, str], "bytes | Awaitable[bytes | None] | None"]


# A synchronous first try for an asynchronous responder (a resolver's answer cache):
# bytes to send, or None to go the asynchronous way.
FastPath = Callable[[bytes, bool, str], "bytes | None"]


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, respond: Responder, ctx: Context, fast: FastPath | None = None) -> None:
        self.respond, self.ctx, self.fast = respond, ctx, fast
        self.is_async = inspect.iscoroutinefunction(respond)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        started = time.perf_counter()
        if self.is_async:
            quick = self.fast(data, False, addr[0]) if self.fast else None
            if quick is not None:
                self._send(quick, addr, started)
                return
            _spawn(self._later(data, addr, started))
            return
        self._send(self.respond(data, False, addr[0]), addr, started)  # type: ignore[arg-type]

    async def _later(self, data: bytes, addr: tuple, started: float) -> None:
        self._send(await self.respond(data, False, addr[0]), addr, started)  # type: ignore[misc]

    def _send(self, reply: bytes | None, addr: tuple, started: float) -> None:
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
            self.ctx.metrics.observe("dns", "udp", str(reply[3] & 0xF), started)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a client that went away: nothing to do


class TcpProtocol(asyncio.Protocol):
    """RFC 7766: two-byte length prefix, several queries per connection, idle timeout."""

    def __init__(self, respond: Responder, ctx: Context) -> None:
        self.respond, self.ctx = respond, ctx
        self.is_async = inspect.iscoroutinefunction(respond)
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()

    def _arm(self) -> None:
        if self.idle:
            self.idle.cancel()
        assert self.transport is not None
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm()
        while len(self.buffer) >= 2:
            (size,) = struct.unpack_from("!H", self.buffer)
            if len(self.buffer) < 2 + size:
                return
            message, self.buffer = self.buffer[2 : 2 + size], self.buffer[2 + size :]
            started = time.perf_counter()
            assert self.transport is not None
            client = (self.transport.get_extra_info("peername") or ("",))[0]
            if self.is_async:
                _spawn(self._later(message, client, started))
                continue
            self._send(self.respond(message, True, client), started)  # type: ignore[arg-type]

    async def _later(self, message: bytes, client: str, started: float) -> None:
        self._send(await self.respond(message, True, client), started)  # type: ignore[misc]

    def _send(self, reply: bytes | None, started: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if reply is None:
            self.transport.close()  # no header to answer to: the stream is garbage
            return
        self.transport.write(struct.pack("!H", len(reply)) + reply)
        self.ctx.metrics.observe("dns", "tcp", str(reply[3] & 0xF), started)


class DnsServer:
    """UDP and TCP on one address and port; a component."""

    def __init__(self, ctx: Context, respond: Responder, fast: FastPath | None = None) -> None:
        self.ctx, self.respond, self.fast = ctx, respond, fast
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.AbstractServer | None = None
        self.side = metrics_listener(ctx)

    async def start(self) -> None:
        s, loop = self.ctx.settings, asyncio.get_running_loop()
        if self.side is not None:
            await self.side.start()
        udp = bind_socket(s.address, s.port, socket.SOCK_DGRAM)
        try:
            tcp = bind_socket(s.address, s.port)
        except BaseException:
            udp.close()
            raise
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(self.respond, self.ctx, self.fast), sock=udp
        )
        self.tcp = await loop.create_server(lambda: TcpProtocol(self.respond, self.ctx), sock=tcp)

    async def stop(self, grace: float) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
        if self.side is not None:
            await self.side.stop(grace)
