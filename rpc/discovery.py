"""Both sides of service discovery against ``rpc.registry``.

- :class:`Registration` (a component every discoverable service adds): registers the
  instance at start, heartbeats, re-registers after a registry restart, deregisters on a
  clean stop.
- :class:`Discovery`: the live instances of one service, polled in the background (cheap:
  the registry answers 304 while nothing changed). Callers read ``endpoints``. A registry
  that is down, or back but still empty, leaves the last known instances in place.

Both are background chatter, not visits: their calls say "not sampled" (W3C traceparent
flags 00), so the registry records no trace of them.
"""

from __future__ import annotations

import contextlib
import logging

import aiohttp

from infra.config import Settings
from infra.tasks import Periodic
from infra.telemetry import untraced_headers

log = logging.getLogger("d11.discovery")

TIMEOUT = aiohttp.ClientTimeout(total=2)


class Registration(Periodic):
    def __init__(self, registry: str, service: str, settings: Settings, interval: float = 1.0):
        super().__init__("registry-heartbeat", interval, self._beat)
        self.base = f"http://{registry}/v1/services/{service}/instances/{settings.name}"
        self.body = {
            "address": settings.address,
            "port": settings.port,
            "metadata": {"role": settings.role, "host": settings.name},
        }
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=TIMEOUT, headers=untraced_headers())
        await self._register()
        await super().start()

    async def _register(self) -> bool:
        assert self.session is not None
        try:
            async with self.session.put(self.base, json=self.body) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("registry unreachable: %s", exc)
            return False

    async def _beat(self) -> None:
        assert self.session is not None
        try:
            async with self.session.put(self.base + "/heartbeat") as r:
                if r.status == 404:  # the registry restarted or evicted us
                    await self._register()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("heartbeat failed: %s", exc)

    async def stop(self, grace: float) -> None:
        await super().stop(grace)
        if self.session is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.delete(self.base):
                    pass
            await self.session.close()


class Discovery(Periodic):
    def __init__(self, registry: str, service: str, interval: float = 1.0) -> None:
        super().__init__(f"discovery-{service}", interval, self.refresh)
        self.url = f"http://{registry}/v1/services/{service}"
        self.service = service
        self.endpoints: list[str] = []
        self._etag = ""
        self.session: aiohttp.ClientSession | None = None

    async def refresh(self) -> None:
        assert self.session is not None
        headers = {"If-None-Match": self._etag} if self._etag else {}
        try:
            async with self.session.get(self.url, headers=headers) as r:
                if r.status == 200:
                    body = await r.json()
                    found = [i["endpoint"] for i in body["instances"]]
                    if not found and self.endpoints:
                        # A registry that just restarted knows nobody until the instances'
                        # next heartbeats: keep what we knew (Eureka's self-preservation).
                        log.warning("registry lists no %s; keeping the last known", self.service)
                        return
                    self.endpoints = found
                    self._etag = r.headers.get("ETag", "")
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            # Keep the last known instances: a registry outage must not stop traffic.
            log.warning("discovery of %s failed: %s", self.service, exc)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=TIMEOUT, headers=untraced_headers())
        await self.refresh()
        await super().start()

    async def stop(self, grace: float) -> None:
        await super().stop(grace)
        if self.session is not None:
            await self.session.close()


def registration(settings: Settings) -> list[Registration]:
    """The registration component for a discoverable service (registered under its role),
    or none when no registry is configured (D11_REGISTRY)."""
    registry = settings.get("REGISTRY", "")
    return [Registration(registry, settings.role, settings)] if registry else []
