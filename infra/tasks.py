"""Background work inside a service, as components: started with the service, cancelled
cleanly when it stops, and never killing it with an exception."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("d11.tasks")


async def cancel(task: asyncio.Task[object] | None) -> None:
    """Cancel a task and wait until it has finished."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Periodic:
    """Runs ``tick()`` every ``interval`` seconds (sweepers, heartbeats, polls). A failing
    tick is logged and retried at the next interval."""

    def __init__(self, name: str, interval: float, tick: Callable[[], Awaitable[None]]) -> None:
        self.name, self.interval, self.tick = name, interval, tick
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:
                log.exception("%s failed; retrying in %.1fs", self.name, self.interval)

    async def stop(self, grace: float) -> None:
        await cancel(self.task)
