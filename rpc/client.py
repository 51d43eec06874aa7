"""Calling another Double-11 service over gRPC: one traced channel per target, failures
turned into :class:`DomainError`, deadlines honoured, retries only when the caller says
the call is idempotent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

from infra.grpc_service import channel
from rpc.errors import Code, DomainError, from_grpc

S = TypeVar("S")

RETRY_BACKOFF_S = 0.05


class GrpcClient(Generic[S]):
    """A component: the channel opens at start and closes at stop."""

    def __init__(
        self,
        target: str,
        stub: Callable[[grpc.aio.Channel], S],
        timeout: float,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self.target, self._stub_factory, self.timeout = target, stub, timeout
        self._channel: grpc.aio.Channel | None = None
        self.stub: S | None = None
        # Backpressure: calls beyond this wait here (within their deadline) instead of
        # piling up inside the server.
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    async def start(self) -> None:
        self._channel = channel(self.target)
        self.stub = self._stub_factory(self._channel)

    async def stop(self, grace: float) -> None:
        if self._channel is not None:
            await self._channel.close(grace)

    async def call(
        self, method: str, request: Any, *, timeout: float | None = None, retries: int = 0
    ) -> Any:
        """``timeout`` is what is left of the caller's deadline (default: the client's
        own); ``retries`` > 0 only for idempotent calls, and only on UNAVAILABLE."""
        budget = self.timeout if timeout is None else min(timeout, self.timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        if self._slots is None:
            return await self._call(method, request, deadline, retries)
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise DomainError(Code.DEADLINE_EXCEEDED, f"{method}: no free slot in time") from None
        try:
            return await self._call(method, request, deadline, retries)
        finally:
            self._slots.release()

    async def _call(self, method: str, request: Any, deadline: float, retries: int) -> Any:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise DomainError(Code.DEADLINE_EXCEEDED, f"no time left to call {method}")
            try:
                return await getattr(self.stub, method)(request, timeout=left)
            except grpc.aio.AioRpcError as error:
                failure = from_grpc(error)
                if failure.code is not Code.UNAVAILABLE or attempt >= retries:
                    raise failure from None
            attempt += 1
            await asyncio.sleep(RETRY_BACKOFF_S * attempt)
