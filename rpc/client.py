"""Calling another Double-11 service: deadlines honoured, retries only when the caller
says the call is idempotent, round robin over the instances a :class:`Discovery` finds
(or one fixed address), and a bound on calls in flight. :class:`BalancedClient` holds that
logic once; :class:`GrpcClient` (here) and ``rpc.dubbo.client.DubboClient`` add the wire."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

from infra.grpc_service import TracedChannel, channel
from rpc.discovery import Discovery
from rpc.errors import Code, DomainError, from_grpc

S = TypeVar("S")
R = TypeVar("R")
P = TypeVar("P", bound="PersistentConnection[Any]")


class PersistentConnection(asyncio.Protocol, Generic[R]):
    """What :class:`Connections` keeps: one stream that multiplexes calls, each reply
    matched to its call by a key (Dubbo's request id, ONC RPC's xid). A subclass parses
    the stream in ``data_received`` and hands each reply to :meth:`resolve`."""

    lost_message = "connection lost"

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pending: dict[int, asyncio.Future[R]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(DomainError(Code.UNAVAILABLE, self.lost_message))

    def fail(self, error: DomainError) -> None:
        """Every call still waiting gets ``error``; the connection is not used again."""
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()

    def resolve(self, key: int, reply: R) -> None:
        future = self.pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(reply)

    async def call(self, key: int, data: bytes, timeout: float, method: str) -> R:
        """Send ``data`` and wait for the reply keyed ``key``; past ``timeout`` the call
        is forgotten (a late reply is dropped) and DEADLINE_EXCEEDED raised."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        assert self.transport is not None
        self.transport.write(data)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.pending.pop(key, None)
            raise DomainError(Code.DEADLINE_EXCEEDED, f"{method} timed out") from None


class Connections(Generic[P]):
    """One long-lived connection per instance for wires that multiplex calls on it (Dubbo,
    ONC RPC): opened on first use, and again once it has closed; concurrent callers wait
    for the one being opened."""

    def __init__(self, factory: Callable[[], P]) -> None:
        self.factory = factory
        self.open: dict[str, P] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def get(self, endpoint: str) -> P:
        conn = self.open.get(endpoint)
        if conn is not None and not conn.closed:
            return conn
        async with self._opening.setdefault(endpoint, asyncio.Lock()):
            conn = self.open.get(endpoint)
            if conn is None or conn.closed:
                host, _, port = endpoint.rpartition(":")
                try:
                    _, conn = await asyncio.get_running_loop().create_connection(
                        self.factory, host, int(port)
                    )
                except OSError as exc:
                    raise DomainError(Code.UNAVAILABLE, f"cannot reach {endpoint}: {exc}") from None
                self.open[endpoint] = conn
        return conn

    def close(self) -> None:
        for conn in self.open.values():
            if conn.transport is not None:
                conn.transport.close()
        self.open.clear()


RETRY_BACKOFF_S = 0.05
RETRY_BACKOFF_MAX_S = 0.4
# An idempotent call's attempt gets this share of what is left of its deadline (at least
# ATTEMPT_MIN_S), so a hung instance costs a share, not all of it.
ATTEMPT_SHARE = 0.4
ATTEMPT_MIN_S = 0.5


class BalancedClient:
    """A component. ``target`` is a ``host:port`` or a Discovery (started before this)."""

    def __init__(
        self, target: str | Discovery, timeout: float, *, max_in_flight: int | None = None
    ) -> None:
        self.target, self.timeout = target, timeout
        self._turn = itertools.count()
        # Backpressure: calls beyond this wait here (within their deadline) instead of
        # piling up inside the server.
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    # -- for subclasses ------------------------------------------------------------
    async def invoke(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        """One attempt at one instance; raises DomainError (UNAVAILABLE when retryable)."""
        raise NotImplementedError

    async def start(self) -> None:
        pass

    async def stop(self, grace: float) -> None:
        pass

    # -- shared ----------------------------------------------------------------------
    def endpoints(self) -> list[str]:
        return self.target.endpoints if isinstance(self.target, Discovery) else [self.target]

    def describe(self) -> str:
        return self.target.service if isinstance(self.target, Discovery) else self.target

    def _pick(self, avoid: str | None) -> str:
        endpoints = self.endpoints()
        if not endpoints:
            raise DomainError(Code.UNAVAILABLE, f"no instance of {self.describe()} is up")
        turn = next(self._turn)
        choice = endpoints[turn % len(endpoints)]
        if choice == avoid and len(endpoints) > 1:
            choice = endpoints[(turn + 1) % len(endpoints)]
        return choice

    async def call(
        self, method: str, request: Any, *, timeout: float | None = None, retries: int = 0
    ) -> Any:
        """``timeout`` is what is left of the caller's deadline (default: the client's
        own). ``retries`` > 0 marks the call idempotent: it is then retried, each time on
        another instance when there is one, for as long as the deadline allows (at least
        ``retries`` times), after UNAVAILABLE or after an attempt that outlived its share
        of the deadline (a hung instance). A call that is not idempotent is tried once."""
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
            # An idempotent call gives one attempt part of the time, so a hung instance
            # costs a share of the deadline and the rest goes to another.
            share = max(ATTEMPT_MIN_S, left * ATTEMPT_SHARE) if retries else left
            try:
                return await self.invoke(endpoint, method, request, min(left, share))
            except DomainError as failure:
                retryable = failure.code is Code.UNAVAILABLE or (
                    failure.code is Code.DEADLINE_EXCEEDED and share < left
                )
                if not retryable or not retries:
                    raise
                failed = endpoint
            attempt += 1
            pause = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * 2 ** (attempt - 1))
            if loop.time() + pause >= deadline:
                raise DomainError(Code.UNAVAILABLE, f"{method}: {self.describe()} did not answer"
                                  f" within the deadline ({attempt} attempts)")  # fmt: skip
            await asyncio.sleep(pause * (0.5 + random.random() / 2))


class GrpcClient(BalancedClient, Generic[S]):
    """gRPC: one traced channel per instance, made on first use."""

    def __init__(
        self,
        target: str | Discovery,
        stub: Callable[[Any], S],  # a generated stub class, given a TracedChannel
        timeout: float,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        super().__init__(target, timeout, max_in_flight=max_in_flight)
        self._stub_factory = stub
        self._stubs: dict[str, tuple[TracedChannel, S]] = {}

    def _stub(self, endpoint: str) -> S:
        if endpoint not in self._stubs:
            ch = channel(endpoint)
            self._stubs[endpoint] = (ch, self._stub_factory(ch))
        return self._stubs[endpoint][1]

    async def invoke(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        try:
            return await getattr(self._stub(endpoint), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise from_grpc(error) from None

    async def stop(self, grace: float) -> None:
        for ch, _ in self._stubs.values():
            await ch.close(grace)
        self._stubs.clear()
