"""HTTP services: an aiohttp app with tracing, metrics, ``/healthz`` and ``/metrics`` built in."""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from infra.service import LISTEN_BACKLOG, Context, bind_socket
from infra.telemetry import PROMETHEUS_CONTENT_TYPE, mark_error, server_span

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths that are about the service, not work for it: not traced, not counted.
_HOUSEKEEPING = frozenset({"/healthz", "/metrics"})

CTX_KEY: web.AppKey[Context] = web.AppKey("d11_context", Context)


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
    with server_span(f"{request.method} {route}", request.headers, attributes, ctx.tracer) as span:
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
        status, body = ctx.health()
        return web.json_response(body, status=status)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=ctx.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


class HttpServer:
    """Serves an aiohttp app on one address; ``ssl_context`` makes it HTTPS."""

    def __init__(
        self,
        app: web.Application,
        address: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.app, self.address, self.port = app, address, port
        self.ssl_context = ssl_context
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self.runner.setup()
        sock = bind_socket(self.address, self.port)
        # asyncio calls listen() again with the site's backlog, so it is given here too.
        site = web.SockSite(self.runner, sock, ssl_context=self.ssl_context, backlog=LISTEN_BACKLOG)
        await site.start()

    async def stop(self, grace: float) -> None:
        if self.runner is not None:
            # Stops accepting, lets in-flight requests finish (bounded), then closes.
            await self.runner.cleanup()
