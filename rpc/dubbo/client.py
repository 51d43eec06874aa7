"""An asyncio Dubbo 2 client: one connection per instance (Dubbo's default), many requests
in flight on it, answers matched by request id, heartbeats answered, the trace context
sent in the attachments. Balancing, deadlines and retries come from BalancedClient."""

from __future__ import annotations

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


class Connection(PersistentConnection[Frame]):
    lost_message = "connection to the order service lost"

    def __init__(self) -> None:
        super().__init__()
        self.decoder = codec.FrameDecoder()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except codec.FrameError as error:
            self.fail(DomainError(Code.UNAVAILABLE, f"bad stream from server: {error}"))
            assert self.transport is not None
            self.transport.close()
            return
        for frame in frames:
            if frame.event:
                if frame.is_request and frame.twoway:
                    self.write(Frame(frame.request_id, False, event=True, body=b"N"))
                continue
            self.resolve(frame.request_id, frame)

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
            span.set_attribute("rpc.request.size", len(body) + codec.HEADER_SIZE)
            data = codec.encode_frame(Frame(request_id, True, body=body))
            try:
                reply = await connection.call(request_id, data, timeout, method)
            except DomainError as error:
                if error.code is Code.DEADLINE_EXCEEDED:
                    mark_error(span, "deadline exceeded")
                raise
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
