"""HTTP services: an aiohttp app with tracing, metrics, ``/healthz`` and ``/metrics`` built in."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from infra.service import Context, PortInUse, is_addr_in_use
from infra.telemetry import PROMETHEUS_CONTENT_TYPE, mark_error, server_span

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths that are about the service, not work for it: not traced, not counted.
_HOUSEKEEPING = frozenset({"/healthz", "/metrics"})

CTX_KEY: web.AppKey[Context] = web.AppKey("d11_context", Context)
LISTEN_BACKLOG = 8192


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def telemetry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _HOUSEKEEPING:
        return await handler(request)
    ctx = request.app[CTX_KEY]
    route = _route_name(request)
    started = time.perf_counter()
    peer = request.transport.get_extra_info("peername") if request.transport else None
    attributes = {
        "http.request.method": request.method,
        "url.path": request.path,
        "http.route": route,
        "server.address": ctx.settings.address,
        "server.port": ctx.settings.port,
    }
    if peer:
        attributes["client.address"] = peer[0]
    status = 500
    with server_span(f"{request.method} {route}", request.headers, attributes) as span:
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                mark_error(span, f"HTTP {status}")
            ctx.metrics.observe("http", f"{request.method} {route}", str(status), started)


def make_app(ctx: Context, *, client_max_size: int = 1024**2) -> web.Application:
    app = web.Application(middlewares=[telemetry_middleware], client_max_size=client_max_size)
    app[CTX_KEY] = ctx

    async def healthz(request: web.Request) -> web.Response:
        s = ctx.settings
        body = {"status": "draining" if ctx.draining else "ok", "service": s.name, "role": s.role}
        return web.json_response(body, status=503 if ctx.draining else 200)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=ctx.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


class HttpServer:
    """Serves an aiohttp app on one address; ``reuse_port`` lets worker processes share it."""

    def __init__(self, app: web.Application, address: str, port: int, *, reuse_port: bool = False):
        self.app, self.address, self.port, self.reuse_port = app, address, port, reuse_port
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self.runner.setup()
        # Bind the socket ourselves so a taken port is reported as such, not as a traceback.
        sock = socket.socket(socket.AF_INET6 if ":" in self.address else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.address, self.port))
        except OSError as exc:
            sock.close()
            if is_addr_in_use(exc):
                raise PortInUse(self.address, self.port) from None
            raise
        # A flash sale is thousands of simultaneous connects: a short accept queue overflows
        # and the kernel resets them. The kernel caps this at net.core.somaxconn.
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        # asyncio calls listen() again with the site's backlog, so it is given here too.
        await web.SockSite(self.runner, sock, backlog=LISTEN_BACKLOG).start()

    async def stop(self, grace: float) -> None:
        if self.runner is not None:
            # Stops accepting, lets in-flight requests finish (bounded), then closes.
            await self.runner.cleanup()


def metrics_listener(ctx: Context) -> HttpServer | None:
    """``/metrics`` and ``/healthz`` over HTTP on the metrics port, for services whose own
    port speaks something else (gRPC, Dubbo); None when they have no metrics port."""
    s = ctx.settings
    return HttpServer(make_app(ctx), s.address, s.metrics_port) if s.metrics_port else None
