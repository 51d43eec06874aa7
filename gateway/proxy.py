"""Walking-skeleton gateway: a reverse proxy with round robin over ``D11_UPSTREAMS``.

It already behaves as nginx does where it has a feature: ``X-Request-ID`` generated or kept,
``X-Forwarded-For``, hop-by-hop headers dropped, a failed connect moves on to the next
upstream (the request was never sent, so even a POST is safe to retry), 502/504 otherwise.
The nginx-syntax configuration, TLS, balancing methods, health checks and limit_req replace
this module's internals while its entry point stays.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from infra.http import HttpServer, make_app
from infra.service import Component, Context, run
from infra.telemetry import client_span, mark_error

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Host",
    )
)
MAX_BODY = 1024 * 1024


def error_page(status: int, reason: str) -> web.Response:
    # The same shape of body nginx sends for its own errors.
    html = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>double-11</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return web.Response(status=status, text=html, content_type="text/html")


class Upstreams:
    """Round robin over upstream addresses, with a pooled keep-alive client session."""

    def __init__(self, addresses: list[str], connect_timeout: float, read_timeout: float):
        if not addresses:
            raise ValueError("no upstreams")
        self.addresses = addresses
        self._next = itertools.cycle(range(len(addresses)))
        self.timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        self.session: aiohttp.ClientSession | None = None

    def order(self) -> list[str]:
        first = next(self._next)
        return self.addresses[first:] + self.addresses[:first]

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=self.timeout, auto_decompress=False
        )

    async def stop(self, grace: float) -> None:
        if self.session is not None:
            await self.session.close()


def proxy_handler(upstreams: Upstreams):
    async def handle(request: web.Request) -> web.StreamResponse:
        assert upstreams.session is not None
        request_id = request.headers.get("X-Request-ID") or secrets.token_hex(16)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_page(413, "Request Entity Too Large")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.pop("traceparent", None)
        headers.pop("tracestate", None)
        peer = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
        headers["X-Real-IP"] = peer
        headers["X-Request-ID"] = request_id
        headers["Host"] = request.host
        target = request.rel_url
        attempts = 0
        for address in upstreams.order():
            attempts += 1
            attributes = {
                "http.request.method": request.method,
                "server.address": address,
                "d11.upstream.attempt": attempts,
            }
            with client_span(f"proxy {address}", attributes) as (span, carrier):
                try:
                    async with upstreams.session.request(
                        request.method,
                        f"http://{address}{target}",
                        headers={**headers, **carrier},
                        data=body or None,
                        allow_redirects=False,
                    ) as upstream:
                        payload = await upstream.read()
                        span.set_attribute("http.response.status_code", upstream.status)
                        reply = {
                            k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
                        }
                        reply["X-Request-ID"] = request_id
                        reply["X-Upstream-Addr"] = address
                        return web.Response(status=upstream.status, body=payload, headers=reply)
                except aiohttp.ClientConnectorError as exc:
                    # Nothing reached the upstream: safe to try the next one, as nginx does.
                    mark_error(span, f"connect failed: {exc.os_error}")
                    continue
                except TimeoutError:
                    mark_error(span, "upstream timed out")
                    return error_page(504, "Gateway Time-out")
                except aiohttp.ClientError as exc:
                    mark_error(span, f"upstream error: {exc}")
                    return error_page(502, "Bad Gateway")
        return error_page(502, "Bad Gateway")

    return handle


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    upstreams = Upstreams(
        s.get_list("UPSTREAMS"),
        connect_timeout=s.get_float("CONNECT_TIMEOUT", 5.0),
        read_timeout=s.get_float("READ_TIMEOUT", 15.0),
    )
    app = make_app(ctx, client_max_size=MAX_BODY)
    app.router.add_route("*", "/api/{tail:.*}", proxy_handler(upstreams))
    return [upstreams, HttpServer(app, s.address, s.port)]


def main() -> None:
    run(build, name="gateway", role="gateway", port=8080)
