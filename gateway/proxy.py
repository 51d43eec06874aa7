"""The gateway's request path (one worker process): pick the server block and location as
nginx does, apply limit_req, proxy to an upstream peer with nginx's retry rules, log.

Location matching follows nginx: an exact ``=`` match wins; otherwise the longest prefix
is remembered, and used at once if it is ``^~``; otherwise the regular expressions are
tried in the order written and the first match wins; otherwise the longest prefix.

Retries (``proxy_next_upstream``): a connect failure is retried on the next peer whatever
the method (nothing was sent); after the request has gone out, a timeout, error or listed
status is retried only for idempotent methods unless ``non_idempotent`` is listed, as
nginx does. ``max_fails`` counts errors, timeouts and listed 5xx, never 403/404.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
from aiohttp import web
from opentelemetry import trace

from gateway.balancer import Balancer, Peer
from gateway.config import Config, Location, Server, Upstream, UpstreamServer
from gateway.limit import Zone
from gateway.logfmt import AccessLog, Template, Vars
from infra.http import HttpServer, make_app
from infra.pki import ensure_server_cert
from infra.service import Component, Context
from infra.telemetry import client_span, mark_error

log = logging.getLogger("d11.gateway")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Host",
    )
)  # fmt: skip
# nginx hides these upstream headers and sends its own.
HIDDEN = HOP_BY_HOP | {"server", "date", "x-pad", "x-accel-redirect", "x-accel-buffering"}
ADD_HEADER_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
FAILURES = frozenset({"http_500", "http_502", "http_503", "http_504", "http_429"})
SERVER_HEADER = "double-11"

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    408: "Request Time-out",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def error_page(status: int) -> web.Response:
    reason = REASONS.get(status, "Error")
    # The same page nginx sends for its own errors.
    html = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>{SERVER_HEADER}</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return web.Response(status=status, text=html, content_type="text/html")


class UpstreamPool:
    """Balancers for every upstream (and for each literal ``proxy_pass host:port``), and
    one keep-alive client session shared by all of them."""

    def __init__(self, config: Config) -> None:
        self.balancers = {name: Balancer(u) for name, u in config.upstreams.items()}
        for server in config.servers:
            for location in server.locations:
                target = location.proxy_pass
                if target and target not in self.balancers:
                    single = Upstream(target, [UpstreamServer(target, max_fails=0)])
                    self.balancers[target] = Balancer(single)
        self.keepalive = max((u.keepalive for u in config.upstreams.values()), default=0)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Without ``keepalive`` nginx opens a connection per request; so do we.
        pooling = {"keepalive_timeout": 60} if self.keepalive else {"force_close": True}
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, **pooling)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def stop(self, grace: float) -> None:
        if self.session is not None:
            await self.session.close()


class HealthChecks:
    """Active probes (extensions.conf ``health_check``): a peer failing ``fails`` probes
    in a row is taken out until it passes ``passes`` in a row."""

    def __init__(self, config: Config, pool: UpstreamPool) -> None:
        self.checks = [
            (u.health_check, pool.balancers[name])
            for name, u in config.upstreams.items()
            if u.health_check is not None
        ]
        self.pool = pool
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for check, balancer in self.checks:
            for peer in balancer.peers:
                self.tasks.append(asyncio.create_task(self._probe(check, peer)))

    async def _probe(self, check, peer: Peer) -> None:
        bad = good = 0
        url = f"http://{peer.address}{check.uri}"
        timeout = aiohttp.ClientTimeout(total=check.timeout)
        while True:
            ok = False
            try:
                assert self.pool.session is not None
                async with self.pool.session.get(url, timeout=timeout) as r:
                    ok = 200 <= r.status < 400
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            bad, good = (0, good + 1) if ok else (bad + 1, 0)
            if peer.healthy and bad >= check.fails:
                peer.healthy = False
                log.warning("peer is unhealthy", extra={"peer": peer.address})
            elif not peer.healthy and good >= check.passes:
                peer.healthy = True
                log.info("peer is healthy again", extra={"peer": peer.address})
            await asyncio.sleep(check.interval)

    async def stop(self, grace: float) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def match_location(server: Server, path: str) -> Location | None:
    best: Location | None = None
    for loc in server.locations:
        if loc.modifier == "=":
            if loc.path == path:
                return loc
        elif (
            loc.modifier in ("", "^~")
            and path.startswith(loc.path)
            and (best is None or len(loc.path) > len(best.path))
        ):
            best = loc
    if best is not None and best.modifier == "^~":
        return best
    for loc in server.locations:
        if loc.regex is not None and loc.regex.search(path):
            return loc
    return best


class Gateway:
    def __init__(self, ctx: Context, config: Config, zones: dict[str, Zone]) -> None:
        self.ctx, self.config, self.zones = ctx, config, zones
        self.pool = UpstreamPool(config)
        self.access_logs = AccessLog(ctx.settings.run_dir, config.log_formats)
        self.header_templates: dict[int, list[tuple[str, Template]]] = {}
        self.served: set[int] = set()
        self.add_headers: dict[int, list[tuple[str, Template, bool]]] = {}
        for server in config.servers:
            for loc in server.locations:
                for block in (server.settings, loc.settings):
                    self.add_headers[id(block)] = [
                        (name, Template(value), always) for name, value, always in block.add_header
                    ]
                self.header_templates[id(loc)] = [
                    (name, Template(value)) for name, value in loc.settings.proxy_set_header
                ]

    # -- request path ------------------------------------------------------------------
    def handler(self, servers: list[Server], scheme: str) -> Callable:
        by_name = {name: s for s in servers for name in s.names}
        default = servers[0]

        async def handle(request: web.Request) -> web.StreamResponse:
            self.served.add(id(request.protocol))
            server = by_name.get(request.host.rsplit(":", 1)[0], default)
            v = Vars(request, scheme)
            response = await self._handle(request, server, v)
            v.status = response.status
            v.body_bytes_sent = (
                response.content_length or len(response.body or b"")
                if isinstance(response, web.Response)
                else 0
            )
            response.headers["Server"] = SERVER_HEADER
            settings = v.location.settings if v.location else server.settings
            for name, template, always in self.add_headers.get(id(settings), ()):
                if always or response.status in ADD_HEADER_STATUSES:
                    value = template.render(v)
                    if value:  # nginx adds nothing for an empty value
                        response.headers[name] = value
            self.access_logs.write(settings.access_log, v)
            return response

        return handle

    async def _handle(self, request: web.Request, server: Server, v: Vars) -> web.StreamResponse:
        span = trace.get_current_span()
        location = match_location(server, request.path)
        if location is None:
            return server_return(server) or error_page(404)
        v.location = location
        span.update_name(f"{request.method} {location.route()}")
        span.set_attribute("http.route", location.route())
        if location.ret is not None:
            return returned(*location.ret)
        settings = location.settings
        length = request.content_length
        if length is not None and length > settings.client_max_body_size:
            return error_page(413)
        decision = await self._limit(location, v, span)
        if decision is not None:
            return error_page(settings.limit_req_status)
        try:
            async with asyncio.timeout(settings.client_body_timeout):
                body = await read_body(request, settings.client_max_body_size)
        except TimeoutError:
            return error_page(408)
        if body is None:
            return error_page(413)  # a chunked body that grew past the limit
        return await self._proxy(request, location, v, body, span)

    async def _limit(self, location: Location, v: Vars, span) -> web.Response | None:
        """Apply every limit_req of the location; a rejection returns non-None."""
        delay = 0.0
        for limit in location.settings.limit_req:
            zone = self.zones[limit.zone]
            key = v.key(zone.key)
            if not key:
                continue  # nginx does not account requests whose key is empty
            decision = zone.check(key, limit)
            v.limit_req_status = decision.status
            span.set_attribute("d11.limit_req.zone", zone.name)
            span.set_attribute("d11.limit_req.status", decision.status)
            if not decision.allowed:
                return error_page(location.settings.limit_req_status)
            delay = max(delay, decision.delay)
        if delay > 0 and delay != math.inf:
            span.set_attribute("d11.limit_req.delay_ms", round(delay * 1000, 3))
            await asyncio.sleep(delay)
        return None

    async def _proxy(
        self, request: web.Request, location: Location, v: Vars, body: bytes, span
    ) -> web.StreamResponse:
        settings = location.settings
        assert location.proxy_pass is not None and self.pool.session is not None
        balancer = self.pool.balancers[location.proxy_pass]
        headers = self._upstream_headers(request, location, v)
        path = request.rel_url.raw_path_qs
        if location.proxy_uri is not None and location.modifier in ("", "^~", "="):
            path = location.proxy_uri + path[len(location.path) :]
        next_upstream = settings.proxy_next_upstream
        max_tries = settings.proxy_next_upstream_tries or balancer.tries
        retry_after_send = request.method in IDEMPOTENT or "non_idempotent" in next_upstream
        key = v.render_key(balancer.hash_key) if balancer.hash_key else ""
        timeout = aiohttp.ClientTimeout(
            sock_connect=settings.proxy_connect_timeout, sock_read=settings.proxy_read_timeout
        )
        tried: set[Peer] = set()
        status = 502
        last: web.Response | None = None
        while len(tried) < max_tries:
            peer = balancer.get(tried, key)
            if peer is None:
                break
            tried.add(peer)
            v.upstream_addr.append(peer.address)
            started = time.perf_counter()
            attrs = {
                "server.address": peer.host,
                "server.port": peer.port,
                "d11.upstream.attempt": len(tried),
                "d11.upstream.name": balancer.name,
            }
            failed, retry, sent = True, False, True
            with client_span(f"proxy {balancer.name}", attrs) as (aspan, carrier):
                try:
                    async with self.pool.session.request(
                        request.method,
                        f"http://{peer.address}{path}",
                        headers={**headers, **carrier},
                        data=body or None,
                        allow_redirects=False,
                        timeout=timeout,
                    ) as upstream:
                        payload = await upstream.read()
                        status = upstream.status
                        aspan.set_attribute("http.response.status_code", status)
                        v.upstream_status.append(str(status))
                        reply = {
                            k: val for k, val in upstream.headers.items() if k.lower() not in HIDDEN
                        }
                        last = web.Response(status=status, body=payload, headers=reply)
                        listed = f"http_{status}" in next_upstream
                        failed = listed and f"http_{status}" in FAILURES
                        retry = listed
                        if not listed:
                            failed = False
                except aiohttp.ClientConnectorError as exc:
                    # Nothing reached the upstream: any method may go to the next peer.
                    sent, status, retry = False, 502, "error" in next_upstream
                    v.upstream_status.append("502")
                    mark_error(aspan, f"connect() failed: {exc.os_error}")
                except aiohttp.ConnectionTimeoutError:
                    sent, status, retry = False, 504, "timeout" in next_upstream
                    v.upstream_status.append("504")
                    mark_error(aspan, "upstream timed out while connecting")
                except TimeoutError:
                    status, retry = 504, "timeout" in next_upstream
                    v.upstream_status.append("504")
                    mark_error(aspan, "upstream timed out while reading the response")
                except aiohttp.ClientError as exc:
                    status, retry = 502, "error" in next_upstream
                    v.upstream_status.append("502")
                    mark_error(aspan, f"upstream error: {exc}")
                finally:
                    v.upstream_response_time.append(time.perf_counter() - started)
                    balancer.free(peer, failed)
            if not retry or (sent and not retry_after_send):
                break
            last = None if last is None or last.status != status else last
        span.set_attribute("d11.upstream.attempts", len(tried))
        if tried:
            span.set_attribute("d11.upstream.address", next(reversed(v.upstream_addr)))
        if last is not None:
            return last
        if not tried:
            log.error("no live upstreams", extra={"upstream": balancer.name})
        return error_page(status)

    def _upstream_headers(self, request: web.Request, location: Location, v: Vars) -> dict:
        headers = {k: val for k, val in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.pop("traceparent", None)
        headers.pop("tracestate", None)
        for name, template in self.header_templates[id(location)]:
            value = template.render(v)
            if value:
                headers[name] = value
            else:
                headers.pop(name, None)  # an empty value removes the header, as in nginx
        return headers

    # -- servers -----------------------------------------------------------------------
    def listeners(self, ctx: Context, sockets: dict) -> list[Component]:
        """One HTTP(S) listener per (address, port) in the config, shared by its server
        blocks (virtual hosts by ``server_name``), on the master's sockets."""
        from gateway.main import listen_groups

        groups = listen_groups(self.config, ctx.settings.address)
        out: list[Component] = []
        max_body = max(
            (loc.settings.client_max_body_size for s in self.config.servers for loc in s.locations),
            default=1024**2,
        )
        for key, servers in groups.items():
            address, port, tls = key
            app = make_app(ctx, client_max_size=max_body + 1)
            app.router.add_route(
                "*", "/{tail:.*}", self.handler(servers, "https" if tls else "http")
            )
            context = self._tls(ctx, servers[0], address) if tls else None
            out.append(
                GuardedServer(
                    app,
                    address,
                    port,
                    ssl_context=context,
                    sock=sockets[key],
                    server=servers[0],
                    gateway=self,
                )
            )
        return out

    def _tls(self, ctx: Context, server: Server, address: str) -> ssl.SSLContext:
        from infra.pki import pki_dir

        assert server.ssl_certificate and server.ssl_certificate_key
        cert, key = Path(server.ssl_certificate), Path(server.ssl_certificate_key)
        if not cert.is_absolute():
            cert, key = ctx.settings.run_dir / cert, ctx.settings.run_dir / key
        if not cert.exists():
            # First start: the lab CA issues this server's certificate.
            directory = pki_dir(ctx.settings.env, ctx.settings.run_dir)
            made_cert, made_key = ensure_server_cert(
                directory, cert.stem, [*server.names, address, "localhost"]
            )
            cert.parent.mkdir(parents=True, exist_ok=True)
            if made_cert != cert:
                cert.write_bytes(made_cert.read_bytes())
                key.write_bytes(made_key.read_bytes())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["http/1.1"])
        return context


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds ``limit``."""
    if not request.can_read_body:
        return b""
    parts, size = [], 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def returned(code: int, text: str) -> web.Response:
    if code in (301, 302, 303, 307, 308):
        return web.Response(status=code, headers={"Location": text})
    if not text and code in REASONS:
        return error_page(code)
    return web.Response(status=code, text=text, content_type="text/plain")


def server_return(server: Server) -> web.Response | None:
    return returned(*server.ret) if server.ret else None


class GuardedServer(HttpServer):
    """An HTTP(S) listener that closes connections which have not sent a complete request
    within ``client_header_timeout`` (slowloris), and that times out idle keep-alive."""

    def __init__(self, app, address, port, *, ssl_context, sock, server: Server, gateway: Gateway):
        super().__init__(app, address, port, ssl_context=ssl_context, sock=sock)
        self.header_timeout = server.settings.client_header_timeout
        self.keepalive = server.settings.keepalive_timeout
        self.gateway = gateway

    def runner_kwargs(self) -> dict:
        return {"keepalive_timeout": self.keepalive}

    def protocol_factory(self, factory: Callable[[], asyncio.Protocol]) -> Callable:
        loop = asyncio.get_running_loop()
        served = self.gateway.served

        def check(protocol: asyncio.Protocol) -> None:
            if id(protocol) in served:
                served.discard(id(protocol))
                return
            transport = getattr(protocol, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()

        def make() -> asyncio.Protocol:
            protocol = factory()
            loop.call_later(self.header_timeout, check, protocol)
            return protocol

        return make


async def start_gateway(
    ctx: Context, config: Config, zones: dict[str, Zone], sockets: dict
) -> Sequence[Component]:
    gateway = Gateway(ctx, config, zones)
    return [gateway.pool, HealthChecks(config, gateway.pool), gateway.access_logs,
            *gateway.listeners(ctx, sockets)]  # fmt: skip
