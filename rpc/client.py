"""Calling another Double-11 service over gRPC: traced channels, failures turned into
:class:`DomainError`, deadlines honoured, retries only when the caller says the call is
idempotent, and round robin over the instances a :class:`Discovery` finds (or one fixed
address)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

from infra.grpc_service import channel
from rpc.discovery import Discovery
from rpc.errors import Code, DomainError, from_grpc

S = TypeVar("S")

RETRY_BACKOFF_S = 0.05


class GrpcClient(Generic[S]):
    """A component: channels open on first use and close at stop. ``target`` is a
    ``host:port`` or a Discovery (which the caller starts before this client)."""

    def __init__(
        self,
        target: str | Discovery,
        stub: Callable[[grpc.aio.Channel], S],
        timeout: float,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self.target, self._stub_factory, self.timeout = target, stub, timeout
        self._stubs: dict[str, tuple[grpc.aio.Channel, S]] = {}
        self._turn = itertools.count()
        # Backpressure: calls beyond this wait here (within their deadline) instead of
        # piling up inside the server.
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    def endpoints(self) -> list[str]:
        return self.target.endpoints if isinstance(self.target, Discovery) else [self.target]

    def _stub(self, endpoint: str) -> S:
        if endpoint not in self._stubs:
            ch = channel(endpoint)
            self._stubs[endpoint] = (ch, self._stub_factory(ch))
        return self._stubs[endpoint][1]

    def _pick(self, avoid: str | None) -> str:
        endpoints = self.endpoints()
        if not endpoints:
            raise DomainError(Code.UNAVAILABLE, f"no instance of {self._describe()} is up")
        turn = next(self._turn)
        choice = endpoints[turn % len(endpoints)]
        if choice == avoid and len(endpoints) > 1:
            choice = endpoints[(turn + 1) % len(endpoints)]
        return choice

    def _describe(self) -> str:
        return self.target.service if isinstance(self.target, Discovery) else self.target

    async def start(self) -> None:
        pass  # channels are made on first use, per instance

    async def stop(self, grace: float) -> None:
        for ch, _ in self._stubs.values():
            await ch.close(grace)
        self._stubs.clear()

    async def call(
        self, method: str, request: Any, *, timeout: float | None = None, retries: int = 0
    ) -> Any:
        """``timeout`` is what is left of the caller's deadline (default: the client's
        own); ``retries`` > 0 only for idempotent calls, and only on UNAVAILABLE, each on
        another instance when there is one."""
        budget = self.timeout if timeout is None else min(timeout, self.timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        if isinstance(self.target, Discovery) and not self.target.endpoints:
            await self.target.refresh()  # just started, or everything went away: ask now
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
        failed: str | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise DomainError(Code.DEADLINE_EXCEEDED, f"no time left to call {method}")
            endpoint = self._pick(avoid=failed)
            try:
                return await getattr(self._stub(endpoint), method)(request, timeout=left)
            except grpc.aio.AioRpcError as error:
                failure = from_grpc(error)
                if failure.code is not Code.UNAVAILABLE or attempt >= retries:
                    raise failure from None
                failed = endpoint
            attempt += 1
            await asyncio.sleep(RETRY_BACKOFF_S * attempt)
