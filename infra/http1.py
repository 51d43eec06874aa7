"""HTTP/1.1 for the gateway and the CDN cache nodes, on asyncio protocols and httptools
(llhttp, the parser Node.js uses): the client side (keep-alive, pipelining, nginx's header, body and
keep-alive timeouts, size limits) and pooled keep-alive connections to upstreams.

A general framework (aiohttp) spends most of a proxied request's time on things a proxy
does not need; here a request is parsed once, handed to the handler as a ``Request``, and
its answer written as one buffer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, unquote

import httptools
from multidict import CIMultiDict, MultiDict

from infra.service import Context, bind_socket
from infra.telemetry import PROMETHEUS_CONTENT_TYPE

log = logging.getLogger("d11.http1")

MAX_HEADER_BYTES = 32 * 1024  # nginx: large_client_header_buffers 4 8k
MAX_LINE = 8 * 1024
REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Not Allowed",
    408: "Request Time-out", 409: "Conflict", 410: "Gone", 411: "Length Required",
    413: "Request Entity Too Large", 414: "Request-URI Too Large", 415: "Unsupported Media Type",
    422: "Unprocessable Entity", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}  # fmt: skip


SERVER_HEADER = "double-11"


def error_page(status: int) -> Response:
    reason = REASONS.get(status, "Error")
    # The same page nginx sends for its own errors.
    html = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>{SERVER_HEADER}</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    page = Response(status, html.encode(), [("Content-Type", "text/html")])
    page.own = True
    return page


def problem_page(status: int, request_id: str = "") -> Response:
    """The same error as an RFC 9457 problem, for clients of a JSON API."""
    reason = REASONS.get(status, "Error")
    body = {"type": f"/problems/http-{status}", "title": reason, "status": status,
            "detail": f"{SERVER_HEADER} gateway: {reason.lower()}"}  # fmt: skip
    if request_id:
        body["request_id"] = request_id
    headers = [("Content-Type", "application/problem+json")]
    if status in (429, 503):
        headers.append(("Retry-After", "1"))
    page = Response(status, json.dumps(body).encode(), headers)
    page.own = True
    return page


class Request:
    """A parsed client request."""

    __slots__ = (
        "_cookies",
        "_query",
        "body",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "raw_path",
        "remote_addr",
        "remote_port",
        "server_port",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        self.raw_path = ""
        self.path = ""
        self.query_string = ""
        self.version = "1.1"
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.body = b""
        self.keep_alive = True
        self.remote_addr = ""
        self.remote_port = 0
        self.server_port = 0
        self._query: MultiDict[str] | None = None
        self._cookies: dict[str, str] | None = None

    @property
    def host(self) -> str:
        return self.headers.get("Host", "")

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        return int(raw) if raw and raw.isdigit() else None

    @property
    def query(self) -> MultiDict[str]:
        if self._query is None:
            self._query = MultiDict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            jar: SimpleCookie = SimpleCookie()
            # A malformed cookie header is no cookies, as in nginx.
            with contextlib.suppress(Exception):
                jar.load(self.headers.get("Cookie", ""))
            self._cookies = {k: m.value for k, m in jar.items()}
        return self._cookies


class Response:
    __slots__ = ("body", "headers", "own", "status", "wire")

    def __init__(
        self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ) -> None:
        self.status, self.body = status, body
        self.headers = headers if headers is not None else []
        # Already encoded (a keep-alive answer to a GET), sent as it is.
        self.wire: bytes | None = None
        self.own = False  # this server's own error page, not a relayed answer

    def set(self, name: str, value: str) -> None:
        lower = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lower]
        self.headers.append((name, value))


def encode_response(r: Response, keep_alive: bool, head: bool, date: str) -> bytes:
    if r.wire is not None and keep_alive and not head:
        return r.wire
    lines = [f"HTTP/1.1 {r.status} {REASONS.get(r.status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in r.headers]
    if not any(k == "Date" for k, _ in r.headers):  # a cache passes the origin's Date on
        lines.insert(1, f"Date: {date}")
    if r.status >= 200 and r.status not in (204, 304):
        lines.append(f"Content-Length: {len(r.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return head_bytes if head or r.status in (204, 304) else head_bytes + r.body


def metrics_listener(ctx: Context) -> Listener | None:
    """``/metrics`` and ``/healthz`` on the metrics port, for services whose own port is not
    HTTP (gRPC, Dubbo, DNS); None without a metrics port. On this module's light HTTP, so a
    DNS server starts without importing aiohttp."""
    s = ctx.settings
    if not s.metrics_port:
        return None

    async def handle(request: Request) -> Response:
        if request.path in HOUSEKEEPING:
            return housekeeping(ctx, request.path)
        return error_page(404)

    return Listener(handle, Limits(10.0, 10.0, 75.0, 0), bind_socket(s.address, s.metrics_port))


class Limits:
    """Per-listener limits: nginx's client_header_timeout, client_body_timeout,
    keepalive_timeout and the largest client_max_body_size of its locations (each
    location's own limit is checked by the handler)."""

    def __init__(self, header_timeout: float, body_timeout: float, keepalive: float, body: int):
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.keepalive, self.max_body = keepalive, body


Handler = Callable[[Request], Awaitable[Response]]
HOUSEKEEPING = frozenset({"/healthz", "/metrics"})


def housekeeping(ctx: Context, path: str) -> Response:
    """The service's own ``/healthz`` and ``/metrics``, as infra.http serves them."""
    if path == "/metrics":
        return Response(200, ctx.metrics.render(), [("Content-Type", PROMETHEUS_CONTENT_TYPE)])
    status, body = ctx.health()
    return Response(status, json.dumps(body).encode(), [("Content-Type", "application/json")])


class ClientProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer them in order, enforce timeouts."""

    def __init__(self, handler: Handler, limits: Limits, server: Listener) -> None:
        self.handler, self.limits, self.server = handler, limits, server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Request] = collections.deque()
        self.current: Request | None = None
        self.header_bytes = 0
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.headers_done = False
        self.worker: asyncio.Task[None] | None = None
        self.deadline = 0.0  # when the current timeout expires (0: none); see Listener
        self.peer: tuple[str, int] = ("", 0)
        self.port = 0
        self.closing = False

    # -- connection --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1])
        sock = transport.get_extra_info("sockname")
        self.port = sock[1] if sock else 0
        sock_obj = transport.get_extra_info("socket")
        if sock_obj is not None:
            with contextlib.suppress(OSError):
                sock_obj.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()

    def _arm(self, seconds: float) -> None:
        # A deadline, not a timer per request: the listener sweeps expired connections
        # a few times a second (nginx's timers are as coarse).
        self.deadline = self.loop.time() + seconds

    def timed_out(self, now: float) -> bool:
        # A client that does not finish its headers or body in time, or stays idle past
        # keepalive_timeout, is closed, as nginx closes it (slowloris goes nowhere).
        busy = self.worker is not None and not self.worker.done()
        return bool(self.deadline) and now > self.deadline and not busy

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.headers_done:
            self.header_bytes += len(data)
            if self.header_bytes > MAX_HEADER_BYTES + self.limits.max_body + MAX_LINE:
                self._refuse(400)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400)
        except httptools.HttpParserError:
            self._refuse(400)

    def _refuse(self, status: int, body: bytes = b"") -> None:
        """Answer a request we will not read to the end, then close (as nginx does)."""
        if self.transport is None or self.transport.is_closing():
            return
        page = error_page(status)
        self.transport.write(encode_response(page, False, False, self.server.date()))
        self.close()

    # -- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = Request()
        self.current.remote_addr, self.current.remote_port = self.peer
        self.current.server_port = self.port
        self.headers_done = False
        self.header_bytes = 0
        self.body_parts, self.body_size = [], 0
        self._url = b""
        if self.worker is None or self.worker.done():
            self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE:
            self._refuse(400)  # nginx: 400 Request Header Or Cookie Too Large
            raise httptools.HttpParserError("header too long")
        assert self.current is not None
        self.current.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        r = self.current
        assert r is not None
        self.headers_done = True
        r.method = self.parser.get_method().decode("ascii", "replace")
        r.version = self.parser.get_http_version()
        r.keep_alive = self.parser.should_keep_alive()
        raw = self._url.decode("latin-1")
        r.raw_path = raw
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise httptools.HttpParserError("bad request target") from None
        r.path = unquote((parsed.path or b"/").decode("latin-1"))
        r.query_string = (parsed.query or b"").decode("latin-1")
        length = r.content_length
        if length is not None and length > self.limits.max_body:
            self._refuse(413)
            raise httptools.HttpParserError("body too large")
        self._arm(self.limits.body_timeout)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limits.max_body:
            self._refuse(413)
            raise httptools.HttpParserError("body too large")
        self.body_parts.append(body)
        self._arm(self.limits.body_timeout)

    def on_message_complete(self) -> None:
        r = self.current
        assert r is not None
        r.body = b"".join(self.body_parts)
        self.body_parts = []
        self.current = None
        self.deadline = 0.0
        idle = self.worker is None or self.worker.done()
        fast = self.server.fast
        if idle and not self.queue and fast is not None:
            response = fast(r)
            if response is not None:
                self._write(r, response)
                if not self.closing:
                    self._arm(self.limits.keepalive)
                return
        self.queue.append(r)
        if idle:
            self.worker = self.loop.create_task(self._serve())

    # -- answering -----------------------------------------------------------------------
    async def _serve(self) -> None:
        while self.queue and not self.closing:
            request = self.queue.popleft()
            self.server.in_flight += 1
            self.server.idle.clear()
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("request failed")
                response = error_page(500)
            finally:
                self.server.in_flight -= 1
                if not self.server.in_flight:
                    self.server.idle.set()
            if self.transport is None or self.transport.is_closing():
                return
            if not self._write(request, response):
                return
        if not self.closing:
            self._arm(self.limits.keepalive)

    def _write(self, request: Request, response: Response) -> bool:
        """Send one answer; False when the connection is closed after it."""
        keep = request.keep_alive and not self.server.draining
        assert self.transport is not None
        data = encode_response(response, keep, request.method == "HEAD", self.server.date())
        self.transport.write(data)
        if not keep:
            self.close()
        return keep


class Listener:
    """A listening socket served with ClientProtocol; a component (start/stop)."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        sock: socket.socket,
        ssl_context=None,
        fast: Callable[[Request], Response | None] | None = None,
    ):
        self.handler, self.limits, self.sock, self.ssl_context = handler, limits, sock, ssl_context
        # Answers what it can without awaiting (None: not this one), so the common case
        # costs no task; the handler gets the rest.
        self.fast = fast
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[ClientProtocol] = set()
        self.in_flight = 0
        self.idle = asyncio.Event()  # set while no request is being handled
        self.idle.set()
        self.draining = False
        self._date = ("", -1.0)
        self.sweeper: asyncio.Task[None] | None = None

    def date(self) -> str:
        # One formatted Date per second, as nginx caches its time strings.
        now = int(asyncio.get_running_loop().time())
        if self._date[1] != now:
            from email.utils import formatdate

            self._date = (formatdate(usegmt=True), now)
        return self._date[0]

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: ClientProtocol(self.handler, self.limits, self),
            sock=self.sock,
            ssl=self.ssl_context,
            ssl_handshake_timeout=10 if self.ssl_context else None,
        )
        self.sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.25)
            now = loop.time()
            for conn in [c for c in self.connections if c.timed_out(now)]:
                conn.close()

    async def stop(self, grace: float) -> None:
        self.draining = True
        if self.sweeper is not None:
            self.sweeper.cancel()
        if self.server is not None:
            self.server.close()  # stop accepting; the master keeps the socket open
        for conn in list(self.connections):
            if conn.worker is None or conn.worker.done():
                conn.close()  # idle keep-alive connections go at once
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.idle.wait()
        for conn in list(self.connections):
            conn.close()


# -- upstream side ---------------------------------------------------------------------------


class UpstreamError(Exception):
    """The exchange with an upstream failed; ``sent`` says whether the request had gone."""

    def __init__(self, kind: str, sent: bool, message: str) -> None:
        super().__init__(message)
        self.kind, self.sent = kind, sent  # kind: error | timeout


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.response: Response | None = None
        self.body_parts: list[bytes] = []
        self.keep_alive = False
        self.closed = False
        self.got_bytes = False
        self.head = False
        self.framed = True  # the response says where its body ends
        self.deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.response is not None and self.head:
                return
            r = self.response
            if r is not None and r.status and not self.framed:
                # A body delimited by the close (no length, not chunked) is complete now.
                r.body = b"".join(self.body_parts)
                self.waiter.set_result(r)
                return
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(
                    UpstreamError("error", True, "upstream prematurely closed connection")
                )

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(
                    UpstreamError("invalid_header", True, f"upstream sent invalid response: {exc}")
                )
            self.close()

    def on_message_begin(self) -> None:
        self.response = Response(0)
        self.body_parts = []

    def on_status(self, status: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        names = {k.lower() for k, _ in self.response.headers}
        self.framed = (
            "content-length" in names
            or "transfer-encoding" in names
            or self.response.status in (204, 304)
            or self.response.status < 200
        )
        if (
            self.head
            and self.response.status >= 200  # an interim response is not the answer
            and self.waiter is not None
            and not self.waiter.done()
        ):
            self.keep_alive = False  # llhttp would wait for a body a HEAD never gets
            self.waiter.set_result(self.response)

    def on_body(self, body: bytes) -> None:
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.response is None:
            return
        if 100 <= self.response.status < 200:
            self.response = None  # an interim response; the real one follows
            return
        self.response.body = b"".join(self.body_parts)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.response)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections per upstream address, at most ``keepalive`` idle ones each
    (nginx's ``keepalive N``; 0 = a connection per request)."""

    def __init__(self, keepalive: int) -> None:
        self.keepalive = keepalive
        self.idle: dict[str, collections.deque[UpstreamProtocol]] = {}
        self.busy: set[UpstreamProtocol] = set()
        self.sweeper: asyncio.Task[None] | None = None

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.1)
            now = loop.time()
            for proto in [p for p in self.busy if now > p.deadline]:
                if proto.waiter is not None:
                    _expire(proto.waiter)

    async def _connect(self, host: str, port: int, timeout: float) -> UpstreamProtocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, proto = await loop.create_connection(UpstreamProtocol, host, port)
        except TimeoutError:
            raise UpstreamError("timeout", False, "upstream timed out while connecting") from None
        except OSError as exc:
            raise UpstreamError("error", False, f"connect() failed ({exc.strerror})") from None
        return proto

    async def exchange(
        self,
        address: str,
        host: str,
        port: int,
        data: bytes,
        *,
        head: bool,
        connect_timeout: float,
        read_timeout: float,
    ) -> Response:
        idle = self.idle.get(address)
        reused = False
        proto = None
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                proto, reused = candidate, True
                break
        if proto is None:
            proto = await self._connect(host, port, connect_timeout)
        try:
            return await self._send(proto, address, data, head, read_timeout)
        except UpstreamError as exc:
            # An idle keep-alive connection the upstream closed meanwhile fails before any
            # byte of an answer: that is not the upstream failing, so use a fresh one.
            if reused and exc.kind == "error" and not proto.got_bytes:
                fresh = await self._connect(host, port, connect_timeout)
                return await self._send(fresh, address, data, head, read_timeout)
            raise

    async def _send(
        self, proto: UpstreamProtocol, address: str, data: bytes, head: bool, read_timeout: float
    ) -> Response:
        loop = asyncio.get_running_loop()
        proto.waiter = loop.create_future()
        proto.head, proto.got_bytes, proto.response = head, False, None
        assert proto.transport is not None
        proto.transport.write(data)
        waiter = proto.waiter
        # A deadline the pool's sweeper enforces, not a timer per proxied request.
        proto.deadline = loop.time() + read_timeout
        self.busy.add(proto)
        if self.sweeper is None:
            self.sweeper = loop.create_task(self._sweep())
        try:
            response = await waiter
        except asyncio.CancelledError:
            proto.close()
            raise
        except UpstreamError:
            proto.close()
            raise
        finally:
            self.busy.discard(proto)
            proto.waiter = None
        if proto.keep_alive and self.keepalive and not proto.closed:
            idle = self.idle.setdefault(address, collections.deque())
            if len(idle) < self.keepalive:
                idle.append(proto)
            else:
                proto.close()
        else:
            proto.close()
        return response

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        for idle in self.idle.values():
            for proto in idle:
                proto.close()
        self.idle.clear()


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError("timeout", True, "upstream timed out while reading"))


def encode_request(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body
