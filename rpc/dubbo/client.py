"""An asyncio Dubbo 2 client: one connection per instance (Dubbo's default), many requests
in flight on it, answers matched by request id, heartbeats answered, the trace context
sent in the attachments. Balancing, deadlines and retries come from BalancedClient."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from infra.telemetry import client_span, mark_error
from rpc.client import BalancedClient, Connections, PersistentConnection
from rpc.discovery import Discovery
from rpc.dubbo import codec
from rpc.dubbo.codec import Frame, Invocation, Status
from rpc.dubbo.hessian2 import Decoder, HessianError, JavaObject
from rpc.errors import Code, DomainError

STATUS_CODES = {
    Status.CLIENT_TIMEOUT: Code.DEADLINE_EXCEEDED,
    Status.SERVER_TIMEOUT: Code.DEADLINE_EXCEEDED,
    Status.BAD_REQUEST: Code.INVALID_ARGUMENT,
    # Another instance may export what this one does not, and an exhausted pool is busy.
    Status.SERVICE_NOT_FOUND: Code.UNAVAILABLE,
    Status.SERVER_THREADPOOL_EXHAUSTED_ERROR: Code.UNAVAILABLE,
}


class Connection(PersistentConnection):
    def __init__(self) -> None:
        self.decoder = codec.FrameDecoder()
        self.pending: dict[int, asyncio.Future[Frame]] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except codec.FrameError as error:
            self._fail(DomainError(Code.UNAVAILABLE, f"bad stream from server: {error}"))
            assert self.transport is not None
            self.transport.close()
            return
        for frame in frames:
            if frame.event:
                if frame.is_request and frame.twoway:
                    self.write(Frame(frame.request_id, False, event=True, body=b"N"))
                continue
            future = self.pending.pop(frame.request_id, None)
            if future is not None and not future.done():
                future.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(DomainError(Code.UNAVAILABLE, "connection to the order service lost"))

    def _fail(self, error: DomainError) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()

    def write(self, frame: Frame) -> None:
        assert self.transport is not None
        self.transport.write(codec.encode_frame(frame))


class DubboClient(BalancedClient):
    def __init__(
        self,
        target: str | Discovery,
        path: str,
        version: str,
        timeout: float,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        super().__init__(target, timeout, max_in_flight=max_in_flight)
        self.path, self.version = path, version
        self._ids = itertools.count(1)
        self._connections = Connections(Connection)

    async def invoke(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        attributes = {
            "rpc.system": "apache_dubbo",
            "rpc.service": self.path,
            "rpc.method": method,
            "server.address": endpoint,
        }
        with client_span(f"{self.path}/{method}", attributes) as (span, carrier):
            connection = await self._connections.get(endpoint)
            args, descriptor = request
            # The deadline travels as Dubbo's own `timeout` attachment (milliseconds).
            attachments = {**carrier, "timeout": str(max(1, int(timeout * 1000)))}
            body = codec.encode_invocation(
                Invocation(method, self.path, self.version, list(args), descriptor, attachments)
            )
            request_id = next(self._ids)
            future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
            connection.pending[request_id] = future
            connection.write(Frame(request_id, True, body=body))
            span.set_attribute("rpc.request.size", len(body) + codec.HEADER_SIZE)
            try:
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                connection.pending.pop(request_id, None)
                mark_error(span, "deadline exceeded")
                raise DomainError(Code.DEADLINE_EXCEEDED, f"{method} timed out") from None
            span.set_attribute("rpc.response.size", len(reply.body) + codec.HEADER_SIZE)
            span.set_attribute("rpc.dubbo.status", reply.status)
            try:
                return self._result(method, reply)
            except DomainError as error:
                mark_error(span, str(error))
                raise

    def _result(self, method: str, reply: Frame) -> Any:
        try:
            if reply.status != Status.OK:
                message = Decoder(reply.body).read() if reply.body else ""
                code = STATUS_CODES.get(reply.status, Code.INTERNAL)
                raise DomainError(code, f"{method}: status {reply.status}: {message}")
            result = codec.decode_result(reply.body)
        except HessianError as error:
            raise DomainError(Code.INTERNAL, f"undecodable reply to {method}: {error}") from None
        if result.exception is not None:
            raise exception_error(result.exception)
        return result.value

    async def stop(self, grace: float) -> None:
        self._connections.close()


def exception_error(exception: Any) -> DomainError:
    """An exception payload as the domain error it stands for."""
    if isinstance(exception, JavaObject):
        message = str(exception.get("detailMessage") or exception.type)
        try:
            code = Code(exception.get("code"))
        except ValueError:
            code = Code.INTERNAL
        detail = exception.get("detail")
        return DomainError(code, message, detail if isinstance(detail, dict) else {})
    return DomainError(Code.INTERNAL, f"remote exception: {exception!r}")
