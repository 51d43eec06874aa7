"""Startup CPU boost in Docker mode: a container the engine restarts gets a larger share of
the CPU for its first seconds, as Google's kube-startup-cpu-boost does for Kubernetes pods.

Why: the engine's restart policy brings a killed container back, but with both cores busy
its start (runc's init, the interpreter, ~0.2 s of imports) gets a fair share among a dozen
busy containers, and a restart that takes 1 s at rest took 3-5 s (docs/benchmarks.md).

How: it follows the engine's events for the Compose project's containers (the Docker
Engine API on its unix socket; the container runs as root with the socket mounted, and no
network). On ``die`` it raises the container's CPU shares (cgroup ``cpu.shares``; an update
of a container that is down applies to its next start, runc's init included);
``D11_BOOST_SECONDS`` after the ``start`` that follows, it puts back the shares the container
had. A container that stays down (``docker stop``) gets its shares back after
``D11_BOOST_WAIT`` seconds. Started, it resets a container left boosted by an earlier run of
itself. ``GET /healthz`` on 127.0.0.1 answers 200 while the event stream is open.

    python -m infra.boost                      (compose.yaml's `boost` service)

Settings: ``D11_BOOST_SHARES`` (32768, 32 times the default weight), ``D11_BOOST_SECONDS``
(3), ``D11_BOOST_WAIT`` (120), ``DOCKER_HOST`` (``unix:///var/run/docker.sock``),
``D11_BOOST_PROJECT`` (default: the project of the container it runs in).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import aiohttp

from infra.config import Settings
from infra.http import HttpServer, make_app
from infra.service import Component, Context, run
from infra.tasks import cancel

log = logging.getLogger("d11.boost")

DEFAULT_SHARES = 1024  # the kernel's and Docker's default weight (0 in HostConfig)
API = "http://docker/v1.41"  # Docker 20.10's API version; newer engines serve it too


class EngineError(Exception):
    pass


class Engine:
    """The few Docker Engine API calls the booster needs, on the unix socket."""

    def __init__(self, docker_host: str) -> None:
        if not docker_host.startswith("unix://"):
            raise ValueError(f"DOCKER_HOST={docker_host!r}: only a unix:// socket is supported")
        self.socket = docker_host.removeprefix("unix://")
        self.session: aiohttp.ClientSession | None = None

    def open(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.UnixConnector(path=self.socket)
            self.session = aiohttp.ClientSession(connector=connector)
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=10)
        async with self.open().request(method, API + path, json=body, timeout=timeout) as r:
            text = await r.text()
            if r.status >= 300:
                raise EngineError(f"{method} {path}: {r.status} {text.strip()}")
            return json.loads(text) if text.strip() else None

    async def shares(self, cid: str) -> int:
        info = await self.call("GET", f"/containers/{cid}/json")
        return int(info["HostConfig"].get("CpuShares") or 0) or DEFAULT_SHARES

    async def set_shares(self, cid: str, shares: int) -> None:
        await self.call("POST", f"/containers/{cid}/update", {"CpuShares": shares})


class Booster:
    """A component: the event stream and the boosts it starts and ends."""

    def __init__(self, settings: Settings) -> None:
        self.engine = Engine(settings.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
        self.boost = settings.get_int("BOOST_SHARES", 32 * DEFAULT_SHARES)
        self.seconds = settings.get_float("BOOST_SECONDS", 3.0)
        self.wait = settings.get_float("BOOST_WAIT", 120.0)
        self.project = settings.get("BOOST_PROJECT", "")
        self.connected = False
        self.task: asyncio.Task[None] | None = None
        # container id -> set when it starts again
        self.boosted: dict[str, asyncio.Event] = {}
        self.pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._follow(), name="boost-events")

    async def stop(self, grace: float) -> None:
        await cancel(self.task)
        for task in list(self.pending):
            await cancel(task)
        await self.engine.close()

    async def _own_project(self) -> str:
        # Compose names the project (a directory's name, or -p): read it off our container.
        me = await self.engine.call("GET", f"/containers/{os.uname().nodename}/json")
        return str(me["Config"]["Labels"]["com.docker.compose.project"])

    async def _reset_leftovers(self) -> None:
        """Containers still at the boost weight were boosted by an earlier run of the
        booster that died before it could reset them: the default weight back."""
        filters = json.dumps({"label": [f"com.docker.compose.project={self.project}"]})
        for c in await self.engine.call("GET", f"/containers/json?all=1&filters={filters}"):
            if await self.engine.shares(c["Id"]) == self.boost:
                await self.engine.set_shares(c["Id"], DEFAULT_SHARES)
                log.info("reset a leftover boost", extra={"container": c["Names"][0]})

    async def _follow(self) -> None:
        while True:
            try:
                self.project = self.project or await self._own_project()
                await self._reset_leftovers()
                filters = json.dumps({
                    "type": ["container"], "event": ["die", "start"],
                    "label": [f"com.docker.compose.project={self.project}"],
                })  # fmt: skip
                timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
                url = f"{API}/events?filters={filters}"
                async with self.engine.open().get(url, timeout=timeout) as r:
                    if r.status != 200:
                        raise EngineError(f"events: {r.status}")
                    self.connected = True
                    log.info("following the engine's events", extra={"project": self.project})
                    async for line in r.content:
                        if line.strip():
                            self._on_event(json.loads(line))
            except (aiohttp.ClientError, EngineError, OSError, KeyError, ValueError) as exc:
                log.warning("engine unreachable: %s", exc)
            self.connected = False
            await asyncio.sleep(1)

    def _on_event(self, event: dict[str, Any]) -> None:
        cid, action = event.get("id", ""), event.get("Action") or event.get("status")
        if action == "die" and cid not in self.boosted:
            # Registered now: at rest the engine starts it again within ~0.1 s.
            self.boosted[cid] = asyncio.Event()
            self._spawn(self._boost(cid, event["Actor"]["Attributes"].get("name", cid)))
        elif action == "start" and cid in self.boosted:
            self.boosted[cid].set()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _boost(self, cid: str, name: str) -> None:
        started = self.boosted[cid]
        try:
            own = await self.engine.shares(cid)
            if own >= self.boost:
                return
            await self.engine.set_shares(cid, self.boost)
            log.info("boosted", extra={"container": name, "shares": self.boost})
            try:
                await asyncio.wait_for(started.wait(), self.wait)
                await asyncio.sleep(self.seconds)
            except TimeoutError:
                pass  # stopped on purpose: nothing to hurry
            await self.engine.set_shares(cid, own)
            log.info("boost ended", extra={"container": name, "shares": own})
        except (aiohttp.ClientError, EngineError, OSError, KeyError) as exc:
            log.warning("boost of %s: %s", name, exc)
        finally:
            self.boosted.pop(cid, None)

    def health(self) -> tuple[int, dict[str, str]]:
        if self.connected:
            return 200, {"status": "ok", "project": self.project}
        return 503, {"status": "engine unreachable"}


async def build(ctx: Context) -> list[Component]:
    booster = Booster(ctx.settings)
    ctx.health = booster.health  # type: ignore[method-assign]
    app = make_app(ctx)
    return [booster, HttpServer(app, ctx.settings.address, ctx.settings.port)]


def main() -> None:
    run(build, name="boost", role="boost", port=9000)


if __name__ == "__main__":
    main()
