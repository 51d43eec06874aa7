"""Peers for the tests and benchmarks: our services as processes started the way the
launcher starts them, real nginx, headless Chromium, and plain HTTP upstreams that say who
they are.

``python -m bench.peers ADDR:PORT[,ADDR:PORT…] [--sick-dir DIR]`` serves, on every
address: ``/who`` (its own address), ``/status/N`` (that status), ``/slow/MS`` (answers
after MS milliseconds), ``/echo`` (method, path, headers and body length as JSON) and
``/slowon?addr=A`` (one second late, on address A only), ``/healthz`` (503 while
``DIR/PORT.sick`` or ``DIR/ADDRESS.sick`` exists), and for the CDN's tests
``/respond?status=N&h=Name:+value&body=TEXT&delay=MS&count=K&fail_after=F`` (exactly the
status, headers and body asked for, 500 after F requests; honours If-None-Match against its
ETag with a 304) with
``/count?count=K`` (how many requests named ``count=K`` arrived). Any other path answers
like ``/who``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra import ROOT


def wait_port(address: str, timeout: float = 15.0) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on {address} after {timeout}s") from None
            time.sleep(0.05)


@contextmanager
def upstreams(*addresses: str, sick_dir: Path | None = None) -> Iterator[subprocess.Popen]:
    """Start the plain upstreams in one process (killable, to test failover)."""
    cmd = [sys.executable, "-m", "bench.peers", ",".join(addresses)]
    if sick_dir is not None:
        cmd += ["--sick-dir", str(sick_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        for address in addresses:
            wait_port(address)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def our_service(
    module: str, address: str, port: int, *, run_dir: Path, **env: str
) -> Iterator[subprocess.Popen]:
    """``python -m MODULE`` configured the way the launcher configures it (``D11_*``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("D11_", "OTEL_"))}
    clean.update(
        D11_ADDRESS=address,
        D11_PORT=str(port),
        D11_RUN_DIR=str(run_dir),
        D11_SERVICE=env.pop("D11_SERVICE", module.rsplit(".", 1)[-1]),
        OTEL_SDK_DISABLED="true",
    )
    clean.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=clean, start_new_session=True
    )
    try:
        wait_port(f"{address}:{port}")
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def our_gateway(
    conf: Path, address: str, port: int, *, run_dir: Path, extensions: Path | None = None
):
    """``python -m gateway`` on a config file."""
    return our_service(
        "gateway", address, port, run_dir=run_dir, D11_SERVICE="gateway",
        D11_GATEWAY_CONF=str(conf), D11_GATEWAY_EXTENSIONS=str(extensions or ""),
    )  # fmt: skip


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    assert found, "nginx missing: apt-get install nginx"
    return found


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a config, with the prefix its relative paths are resolved against."""
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(prefix), "-c", str(conf), "-g",
         f"pid {prefix}/nginx.pid; error_log stderr;"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@contextmanager
def real_nginx(conf_text: str, listen: str) -> Iterator[Path]:
    """Run real nginx (in the foreground of its own process) on a config text whose
    relative paths resolve in a fresh prefix directory."""
    prefix = Path(tempfile.mkdtemp(prefix="d11-nginx-"))
    (prefix / "logs").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    cmd = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-g",
           f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(listen)
        yield prefix
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(prefix, ignore_errors=True)


def chromium_dom(url: str, tmp_path: Path) -> str:
    """The DOM of a page after headless Chromium ran its scripts (the viewer's tests)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is required (Debian package 'chromium'; .ci/run installs it)"
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


# -- the upstream server ------------------------------------------------------------------


async def _serve(addresses: list[str], sick_dir: Path | None) -> None:
    from aiohttp import web

    runners = []
    counts: dict[str, int] = {}
    for address in addresses:
        host, _, port = address.rpartition(":")

        async def handle(
            request: web.Request, me: str = address, port: str = port, host: str = host
        ):
            path = request.path
            if path == "/healthz":
                sick = sick_dir is not None and (
                    (sick_dir / f"{port}.sick").exists() or (sick_dir / f"{host}.sick").exists()
                )
                return web.Response(status=503 if sick else 200, text=me)
            if path.startswith("/status/"):
                return web.Response(status=int(path.split("/")[2]), text=me)
            if path.startswith("/slow/"):
                await asyncio.sleep(int(path.split("/")[2]) / 1000)
                return web.Response(text=me)
            if path == "/slowon":  # slow only on the address named in ?addr=
                if request.query.get("addr") == me:
                    await asyncio.sleep(1.0)
                return web.Response(text=me)
            if path == "/respond":
                q = request.query
                counts[q.get("count", "")] = counts.get(q.get("count", ""), 0) + 1
                await asyncio.sleep(int(q.get("delay", "0")) / 1000)
                if counts[q.get("count", "")] > int(q.get("fail_after", "1000000")):
                    return web.Response(status=500, text="origin failing")
                headers = [tuple(h.split(":", 1)) for h in q.getall("h", [])]
                etag = next((v.strip() for k, v in headers if k.lower() == "etag"), None)
                if etag and request.headers.get("If-None-Match") == etag:
                    return web.Response(status=304, headers=[(k, v.strip()) for k, v in headers])
                response = web.Response(status=int(q.get("status", "200")), text=q.get("body", me))
                for k, v in headers:
                    response.headers.add(k, v.strip())
                return response
            if path == "/count":
                return web.json_response(counts.get(request.query.get("count", ""), 0))
            if path == "/echo":
                body = await request.read()
                info = {
                    "upstream": me,
                    "method": request.method,
                    "path": request.path_qs,
                    "headers": dict(request.headers),
                    "body_length": len(body),
                }
                return web.Response(text=json.dumps(info), content_type="application/json")
            await request.read()
            return web.Response(text=me)

        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, int(port), backlog=4096).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("addresses")
    parser.add_argument("--sick-dir", type=Path)
    args = parser.parse_args()
    import uvloop

    uvloop.run(_serve(args.addresses.split(","), args.sick_dir))


if __name__ == "__main__":
    main()
