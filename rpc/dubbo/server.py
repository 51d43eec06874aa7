"""An asyncio Dubbo 2 server: owns the sockets and nothing else. Frames come from
``codec.FrameDecoder``; each request runs as its own task, so many requests are in flight
on one connection and answers go back in the order they finish, matched by request id.

Errors, as Dubbo answers them: a body that does not decode is status 40 (the connection
stays); an unknown service or method is 60; a domain error is status 20 with an exception
payload; anything unexpected is 70. A body over the payload limit is answered 40 and the
connection is closed (the rest of it is never read); so is a stream with a wrong magic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from infra.http1 import metrics_listener
from infra.service import Context, PortInUse, is_addr_in_use
from infra.telemetry import mark_error, server_span
from rpc import deadline
from rpc.dubbo import codec
from rpc.dubbo.codec import Frame, Invocation, Status
from rpc.dubbo.hessian2 import HessianError
from rpc.errors import DomainError

log = logging.getLogger("d11.dubbo")

Method = Callable[..., Awaitable[Any]]


@dataclass
class Exported:
    path: str
    version: str
    methods: dict[str, Method]
    to_exception: Callable[[DomainError], Any]  # a DomainError as the payload Java expects


class Failure(Exception):
    """A request answered with a non-OK status."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


class DubboProtocol(asyncio.Protocol):
    def __init__(self, server: DubboServer) -> None:
        self.server = server
        self.decoder = codec.FrameDecoder(server.max_body)
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except codec.FrameError as error:
            log.warning("closing connection: %s", error)
            if error.request_id is not None:
                self.send(
                    Frame(
                        error.request_id,
                        False,
                        status=Status.BAD_REQUEST,
                        body=codec.error_body(str(error)),
                    )
                )
            assert self.transport is not None
            self.transport.close()
            return
        for frame in frames:
            if frame.event:
                if frame.is_request and frame.twoway:  # heartbeat: answer in kind
                    self.send(Frame(frame.request_id, False, event=True, body=b"N"))
                continue
            if not frame.is_request:
                continue  # we never send requests, so there is nothing to match
            task = asyncio.create_task(self.handle(frame))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()

    def send(self, frame: Frame) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(codec.encode_frame(frame))

    async def handle(self, frame: Frame) -> None:
        started = time.perf_counter()
        method, outcome = "?", "OK"
        try:
            if frame.serialization != codec.HESSIAN2:
                raise Failure(
                    Status.BAD_REQUEST, f"serialization {frame.serialization} unsupported"
                )
            try:
                invocation = codec.decode_invocation(frame.body)
            except HessianError as error:
                raise Failure(Status.BAD_REQUEST, f"undecodable request: {error}") from None
            method = invocation.method
            body = await self.server.invoke(invocation)
            reply = Frame(frame.request_id, False, body=body)
        except Failure as failure:
            outcome = failure.status.name
            reply = Frame(
                frame.request_id, False, status=failure.status, body=codec.error_body(str(failure))
            )
        except Exception as error:
            log.exception("dubbo request failed")
            outcome = Status.SERVICE_ERROR.name
            reply = Frame(
                frame.request_id,
                False,
                status=Status.SERVICE_ERROR,
                body=codec.error_body(f"{type(error).__name__}: {error}"),
            )
        self.server.ctx.metrics.observe("dubbo", method, outcome, started)
        if frame.twoway:
            self.send(reply)


class DubboServer:
    """A component serving exported services on the service's address and port; metrics
    and /healthz go to the metrics port over HTTP, as for gRPC services."""

    def __init__(self, ctx: Context, exported: list[Exported], max_body: int) -> None:
        self.ctx = ctx
        self.max_body = max_body
        self.services = {(e.path, e.version): e for e in exported}
        self.server: asyncio.base_events.Server | None = None
        self.side = metrics_listener(ctx)

    def _find(self, invocation: Invocation) -> Exported:
        exported = self.services.get((invocation.path, invocation.version or ""))
        if exported is None:  # an unversioned export answers any version, as Dubbo's default
            exported = self.services.get((invocation.path, ""))
        if exported is None:
            raise Failure(
                Status.SERVICE_NOT_FOUND,
                f"Not found exported service: {invocation.path}:{invocation.version}",
            )
        return exported

    async def invoke(self, invocation: Invocation) -> bytes:
        exported = self._find(invocation)
        carrier = {k: v for k, v in invocation.attachments.items() if isinstance(v, str)}
        attachments = {} if codec.supports_response_attachments(invocation.dubbo_version) else None
        if invocation.method == "$echo":  # Dubbo's built-in EchoService, used as health check
            if len(invocation.args) != 1:
                raise Failure(Status.BAD_REQUEST, "$echo takes one argument")
            return codec.encode_result(invocation.args[0], exception=False, attachments=attachments)
        method = exported.methods.get(invocation.method)
        if method is None:
            raise Failure(
                Status.SERVICE_NOT_FOUND,
                f"No such method {invocation.method} in service {invocation.path}",
            )
        attributes = {
            "rpc.system": "apache_dubbo",
            "rpc.service": invocation.path,
            "rpc.method": invocation.method,
        }
        with server_span(f"{invocation.path}/{invocation.method}", carrier, attributes) as span:
            try:
                # Dubbo consumers send their timeout (ms) as an attachment: the call's deadline.
                with deadline.scope(deadline.parse_ms(invocation.attachments.get("timeout"))):
                    value = await method(*invocation.args)
            except DomainError as error:
                span.set_attribute("d11.error_code", error.code.value)
                mark_error(span, str(error))
                return codec.encode_result(
                    exported.to_exception(error), exception=True, attachments=attachments
                )
            except TypeError as error:  # wrong number of arguments for the method
                raise Failure(Status.BAD_REQUEST, str(error)) from None
        return codec.encode_result(value, exception=False, attachments=attachments)

    async def start(self) -> None:
        s = self.ctx.settings
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(
                lambda: DubboProtocol(self), s.address, s.port, backlog=4096
            )
        except OSError as exc:
            if is_addr_in_use(exc):
                raise PortInUse(s.address, s.port) from None
            raise
        if self.side is not None:
            await self.side.start()

    async def stop(self, grace: float) -> None:
        if self.side is not None:
            await self.side.stop(grace)
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), grace)
