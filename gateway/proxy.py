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

from gateway.balancer import Balancer, Peer
from gateway.config import Config, Location, Server, Upstream, UpstreamServer
from gateway.limit import Zone
from gateway.logfmt import AccessLog, Template, Vars
from infra.http1 import (
    REASONS,
    SERVER_HEADER,
    Limits,
    Listener,
    Request,
    Response,
    UpstreamError,
    UpstreamPool,
    encode_request,
    error_page,
    housekeeping,
    problem_page,
)
from infra.pki import ensure_server_cert, load_chain, pki_dir
from infra.service import Component, Context
from infra.telemetry import (
    TRACE_HEADERS,
    client_span,
    mark_error,
    server_span,
    tracing_enabled,
)

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


class Upstreams:
    """Balancers for every upstream (and for each literal ``proxy_pass host:port``), and
    the keep-alive connection pool they share."""

    def __init__(self, config: Config) -> None:
        self.balancers = {name: Balancer(u) for name, u in config.upstreams.items()}
        for server in config.servers:
            for location in server.locations:
                target = location.proxy_pass
                if target and target not in self.balancers:
                    single = Upstream(target, [UpstreamServer(target, max_fails=0)])
                    self.balancers[target] = Balancer(single)
        keepalive = max((u.keepalive for u in config.upstreams.values()), default=0)
        self.pool = UpstreamPool(keepalive)

    async def start(self) -> None:
        pass

    async def stop(self, grace: float) -> None:
        self.pool.close()


class HealthChecks:
    """Active probes (extensions.conf ``health_check``): a peer failing ``fails`` probes
    in a row is taken out until it passes ``passes`` in a row."""

    def __init__(self, config: Config, upstreams: Upstreams) -> None:
        self.checks = [
            (u.health_check, upstreams.balancers[name])
            for name, u in config.upstreams.items()
            if u.health_check is not None
        ]
        self.pool = UpstreamPool(0)
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for check, balancer in self.checks:
            for peer in balancer.peers:
                self.tasks.append(asyncio.create_task(self._probe(check, peer)))

    async def _probe(self, check, peer: Peer) -> None:
        bad = good = 0
        probe = encode_request(
            "GET", check.uri, [("Host", peer.address), ("Connection", "close")], b""
        )
        while True:
            try:
                r = await self.pool.exchange(
                    peer.address, peer.host, peer.port, probe, head=False,
                    connect_timeout=check.timeout, read_timeout=check.timeout,
                )  # fmt: skip
                ok = 200 <= r.status < 400
            except UpstreamError:
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
        self.pool.close()


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
        self.upstreams = Upstreams(config)
        self.access_logs = AccessLog(ctx.settings.run_dir, config.log_formats)
        self.header_templates: dict[int, list[tuple[str, Template]]] = {}
        # Traced, the gateway's own span is the parent it sends on; untraced, it passes
        # the client's trace headers through untouched.
        self.strip = HOP_BY_HOP | TRACE_HEADERS if tracing_enabled() else HOP_BY_HOP
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
    def handler(self, servers: list[Server], scheme: str, address: str, port: int) -> Callable:
        by_name = {name: s for s in servers for name in s.names}
        default = servers[0]
        ctx = self.ctx
        # Behind a NAT (Docker mode) the address phones dial is the NAT's, not ours: the
        # span names the client, the public entry and the private address it was DNATed to.
        public = ctx.settings.get("PUBLIC_ADDRESS", "") or address

        async def handle(request: Request) -> Response:
            if request.path in ("/healthz", "/metrics"):
                return housekeeping(self.ctx, request.path)
            server = by_name.get(request.host.rsplit(":", 1)[0], default)
            v = Vars(request, scheme)
            started = time.perf_counter()
            attributes = {
                "http.request.method": request.method,
                "url.path": request.path,
                "server.address": address,
                "server.port": port,
                "client.address": request.remote_addr,
                "d11.net.public_address": public,
                "d11.net.private_address": address,
                "d11.request_id": v.request_id,
            }
            with server_span(f"{request.method}", request.headers, attributes) as span:
                response = await self._handle(request, server, v, span)
                if response.status >= 400 and response.own and request.path.startswith(
                    self.config.problem_prefixes
                ):
                    response = problem_page(response.status, v.request_id)
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    mark_error(span, f"HTTP {response.status}")
            v.status = response.status
            v.body_bytes_sent = len(response.body)
            response.headers.append(("Server", SERVER_HEADER))
            settings = v.location.settings if v.location else server.settings
            for name, template, always in self.add_headers.get(id(settings), ()):
                if always or response.status in ADD_HEADER_STATUSES:
                    value = template.render(v)
                    if value:  # nginx adds nothing for an empty value
                        response.set(name, value)
            self.access_logs.write(settings.access_log, v)
            route = v.location.route() if v.location else "unmatched"
            ctx.metrics.observe("http", f"{request.method} {route}", str(response.status), started)
            return response

        return handle

    async def _handle(self, request: Request, server: Server, v: Vars, span) -> Response:
        location = match_location(server, request.path)
        if location is None:
            return server_return(server) or error_page(404)
        v.location = location
        span.update_name(f"{request.method} {location.route()}")
        span.set_attribute("http.route", location.route())
        if location.ret is not None:
            return returned(*location.ret)
        if len(request.body) > location.settings.client_max_body_size:
            return error_page(413)
        rejected = await self._limit(location, v, span)
        if rejected is not None:
            return rejected
        return await self._proxy(request, location, v, span)

    async def _limit(self, location: Location, v: Vars, span) -> Response | None:
        """Apply every limit_req of the location; a rejection returns its error page."""
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

    async def _proxy(self, request: Request, location: Location, v: Vars, span) -> Response:
        settings = location.settings
        assert location.proxy_pass is not None
        balancer = self.upstreams.balancers[location.proxy_pass]
        pool = self.upstreams.pool
        headers = self._upstream_headers(request, location, v)
        target = request.raw_path
        if location.proxy_uri is not None and location.modifier in ("", "^~", "="):
            target = location.proxy_uri + target[len(location.path) :]
        next_upstream = settings.proxy_next_upstream
        max_tries = settings.proxy_next_upstream_tries or balancer.tries
        retry_after_send = request.method in IDEMPOTENT or "non_idempotent" in next_upstream
        key = v.render_key(balancer.hash_key) if balancer.hash_key else ""
        head = request.method == "HEAD"
        tried: set[Peer] = set()
        status = 502
        last: Response | None = None
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
                data = encode_request(
                    request.method, target, [*headers, *carrier.items()], request.body
                )
                try:
                    upstream = await pool.exchange(
                        peer.address, peer.host, peer.port, data, head=head,
                        connect_timeout=settings.proxy_connect_timeout,
                        read_timeout=settings.proxy_read_timeout,
                    )  # fmt: skip
                    status = upstream.status
                    aspan.set_attribute("http.response.status_code", status)
                    v.upstream_status.append(str(status))
                    reply = [(k, val) for k, val in upstream.headers if k.lower() not in HIDDEN]
                    last = Response(status, upstream.body, reply)
                    listed = f"http_{status}" in next_upstream
                    failed = listed and f"http_{status}" in FAILURES
                    retry = listed
                except UpstreamError as exc:
                    sent = exc.sent
                    status = 504 if exc.kind == "timeout" else 502
                    retry = exc.kind in next_upstream or (
                        exc.kind == "invalid_header" and "error" in next_upstream
                    )
                    v.upstream_status.append(str(status))
                    last = None
                    mark_error(aspan, str(exc))
                finally:
                    v.upstream_response_time.append(time.perf_counter() - started)
                    balancer.free(peer, failed)
            if not retry or (sent and not retry_after_send):
                break
        span.set_attribute("d11.upstream.attempts", len(tried))
        if tried:
            span.set_attribute("d11.upstream.address", v.upstream_addr[-1])
        if last is not None:
            return last
        if not tried:
            log.error("no live upstreams", extra={"upstream": balancer.name})
        return error_page(status)

    def _upstream_headers(
        self, request: Request, location: Location, v: Vars
    ) -> list[tuple[str, str]]:
        headers = {k.lower(): (k, val) for k, val in request.headers.items()
                   if k.lower() not in self.strip}  # fmt: skip
        # nginx's defaults: Host is the upstream's name, and the connection is closed
        # after the request unless the config says otherwise (Connection "").
        headers["host"] = ("Host", location.proxy_pass or "")
        headers["connection"] = ("Connection", "close")
        for name, template in self.header_templates[id(location)]:
            value = template.render(v)
            if value:
                headers[name.lower()] = (name, value)
            else:
                headers.pop(name.lower(), None)  # an empty value removes the header
        return list(headers.values())

    # -- listeners ---------------------------------------------------------------------
    def listeners(self, ctx: Context, sockets: dict) -> list[Component]:
        """One HTTP(S) listener per (address, port) in the config, shared by its server
        blocks (virtual hosts by ``server_name``), on the master's sockets."""
        from gateway.main import host_addresses, listen_groups

        out: list[Component] = []
        for key, servers in listen_groups(self.config, host_addresses(ctx.settings)).items():
            address, port, tls = key
            settings = servers[0].settings
            limits = Limits(
                settings.client_header_timeout,
                settings.client_body_timeout,
                settings.keepalive_timeout,
                max(
                    (loc.settings.client_max_body_size for s in servers for loc in s.locations),
                    default=settings.client_max_body_size,
                ),
            )
            handle = self.handler(servers, "https" if tls else "http", address, port)
            context = self._tls(ctx, servers[0], address) if tls else None
            out.append(Listener(handle, limits, sockets[key], context))
        return out

    def _tls(self, ctx: Context, server: Server, address: str) -> ssl.SSLContext:
        assert server.ssl_certificate and server.ssl_certificate_key
        cert, key = Path(server.ssl_certificate), Path(server.ssl_certificate_key)
        if not cert.is_absolute():
            cert, key = ctx.settings.run_dir / cert, ctx.settings.run_dir / key
        directory = pki_dir(ctx.settings.env, ctx.settings.run_dir)
        if not cert.exists() or cert.parent.resolve() == directory.resolve():
            # The lab CA's: issued at first start, and reissued when this listener's address
            # is not in it yet (two gateways share the name; each adds its addresses).
            made_cert, made_key = ensure_server_cert(
                directory, cert.stem, [*server.names, address, "localhost"]
            )
            cert.parent.mkdir(parents=True, exist_ok=True)
            if made_cert != cert:
                cert.write_bytes(made_cert.read_bytes())
                key.write_bytes(made_key.read_bytes())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_chain(context, cert, key)
        context.set_alpn_protocols(["http/1.1"])
        return context


def returned(code: int, text: str) -> Response:
    if code in (301, 302, 303, 307, 308):
        return Response(code, b"", [("Location", text)])
    if not text and code in REASONS and code >= 400:
        return error_page(code)
    return Response(code, text.encode(), [("Content-Type", "text/plain")])


def server_return(server: Server) -> Response | None:
    return returned(*server.ret) if server.ret else None


async def start_gateway(
    ctx: Context, config: Config, zones: dict[str, Zone], sockets: dict
) -> Sequence[Component]:
    gateway = Gateway(ctx, config, zones)
    return [gateway.upstreams, HealthChecks(config, gateway.upstreams), gateway.access_logs,
            *gateway.listeners(ctx, sockets)]  # fmt: skip
