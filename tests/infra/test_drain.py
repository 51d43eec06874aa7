"""SIGTERM drains in-flight work: a gateway in front of a deliberately slow upstream (an
HTTP server in this test) is told to stop while requests are in flight; every one of them
still gets its answer, new connections are refused, and the process exits."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
from aiohttp import web

from infra.procs import PidDir
from tests.conftest import d11, one_host_env, wait_for

UPSTREAM = ("127.10.8.51", 8080)
GATEWAY = ("127.10.8.50", 8080)


def slow_upstream(stop: threading.Event) -> threading.Thread:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({"served": True})

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{tail:.*}", slow)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, *UPSTREAM).start()
        await asyncio.to_thread(stop.wait)  # a threading.Event: set from the test's thread
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    return thread


def test_sigterm_lets_in_flight_requests_finish(tmp_path):
    stop = threading.Event()
    upstream = slow_upstream(stop)
    env = one_host_env(
        tmp_path,
        {
            "name": "gateway-drain",
            "role": "gateway",
            "address": GATEWAY[0],
            "port": GATEWAY[1],
            "protocol": "http",
            "module": "gateway",
            # The shipped gateway.conf, both controller slots pointed at the slow upstream.
            "env": {
                "D11_UPSTREAM_CONTROLLERS": f"{UPSTREAM[0]}:{UPSTREAM[1]}," * 2,
                "D11_GATEWAY_EXTENSIONS": "",
            },
        },
    )
    env["OTEL_TRACES_EXPORTER"] = "none"
    d11("up", "--detach", env=env)
    try:
        record = PidDir(tmp_path / "run" / "pids").read_all()["gateway-drain"]
        url = f"http://{GATEWAY[0]}:{GATEWAY[1]}/api/slow"

        async def scenario():
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                in_flight = [asyncio.create_task(client.get(url)) for _ in range(20)]
                await asyncio.sleep(0.4)  # all accepted, all waiting on the upstream
                os.killpg(record.pid, signal.SIGTERM)
                await asyncio.sleep(0.2)
                try:
                    late = await client.get(url, headers={"Connection": "close"})
                    late_status = late.status_code
                except httpx.TransportError:
                    late_status = None  # refused: the listener is closed
                return await asyncio.gather(*in_flight), late_status

        started = time.monotonic()
        answers, late_status = asyncio.run(scenario())
        assert [r.status_code for r in answers] == [200] * 20
        assert all(r.json() == {"served": True} for r in answers)
        assert late_status in (None, 503)  # refused, or told it is draining
        wait_for(lambda: not record.alive(), timeout=10, what="the gateway to exit")
        assert time.monotonic() - started < 10
    finally:
        d11("down", env=env, check=False)
        stop.set()
        upstream.join(5)
