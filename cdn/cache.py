"""A CDN cache node (role ``cdn-cache``): one tier of center → region → edge, a shared cache
as RFC 9111 describes it. ``python -m cdn.cache``.

On each GET/HEAD the node looks up the URL (without its signing parameters) and answers:

* ``HIT``: a fresh stored response; ``Age`` is its current age (§4.2.3), so it grows tier by
  tier;
* ``MISS``: fetched from the parent tier (or the origin) and stored if it may be;
* ``REVALIDATED``: stale, and the parent said 304 to ``If-None-Match``/``If-Modified-Since``
  (the stored headers are freshened);
* ``EXPIRED``: stale, and the parent sent a new representation;
* ``STALE``: stale but served, within ``stale-while-revalidate`` (refreshed in the
  background) or ``stale-if-error`` (the parent failed).

Many concurrent misses or revalidations of one URL make exactly one upstream request; the
others wait for it and are answered from the cache (nginx's ``proxy_cache_lock``). Every
answer has ``X-Cache``, ``Via`` and ``Age``; ``X-Cache-Chain`` says what each tier behind
this one answered when the object was fetched. Ranges and conditional requests are
answered from the stored full object.

An edge (``D11_CDN_SIGNING`` set) checks the anti-leech token first: nginx ``secure_link``
(``md5``/``expires``) and Alibaba type A (``auth_key``): forged 403, expired 410; and the
Referer allow-list (``D11_CDN_REFERERS``, ``D11_CDN_EMPTY_REFERER=allow|deny``).

Operations, under ``/_cdn/`` (mutations need ``X-Admin-Token: $D11_ADMIN_TOKEN``):
``POST /_cdn/purge`` ``{"urls": [...]}`` or ``{"prefix": "/img/"}`` (cascades to the
parent tiers unless ``"cascade": false``), ``POST /_cdn/prefetch`` ``{"urls": [...]}``,
``GET /_cdn/stats``, ``GET /_cdn/load`` (what the CDN's GSLB reads).

Settings: ``D11_CDN_TIER`` (edge|region|center), ``D11_CDN_REGION``, ``D11_CDN_PARENT``
(host:port of the next tier up, or the origin), ``D11_CDN_MEMORY_MB``, ``D11_CDN_DISK_MB``,
``D11_CDN_CONNECT_TIMEOUT``, ``D11_CDN_READ_TIMEOUT``, ``D11_CDN_CAPACITY`` (requests/s
that count as full load), ``D11_CDN_SECRET``, ``D11_CDN_TYPE_A_KEY``, ``D11_CDN_TYPE_A_TTL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hmac
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from cdn import semantics, signing
from cdn.semantics import AgeClock, bad_path, format_http_date
from cdn.store import Entry, Store
from infra.config import LAB_ADMIN_TOKEN, ConfigError
from infra.http1 import (
    HOUSEKEEPING,
    SERVER_HEADER,
    Limits,
    Listener,
    Request,
    Response,
    UpstreamError,
    UpstreamPool,
    encode_request,
    encode_response,
    error_page,
    housekeeping,
)
from infra.service import Component, Context, bind_socket, run
from infra.telemetry import TRACE_HEADERS, client_span, mark_error, server_span

log = logging.getLogger("d11.cdn")

SIGNING_PARAMS = frozenset({"md5", "expires", "auth_key"})
# Request headers a cache node never passes up: its own conditionals and ranges replace the
# client's, hop-by-hop ones are per connection.
NOT_FORWARDED = semantics.HOP_BY_HOP | {
    "host", "content-length", "range", "if-range", "if-none-match", "if-modified-since",
    "if-match", "if-unmodified-since", "cache-control", "pragma",
    "x-forwarded-for", "via",  # extended with this hop, not passed as they came
}  # fmt: skip
# Response headers not stored (hop-by-hop) or replaced per answer.
NOT_STORED = semantics.HOP_BY_HOP | {"age", "content-length", "x-cache", "x-cache-chain", "date"}
# A 304 never changes these in the stored response (RFC 9111 §3.2).
NOT_FRESHENED = {"content-length", "content-encoding", "content-range", "content-type"}
ERROR_STATUSES = frozenset({500, 502, 503, 504})
CONDITIONAL = ("If-None-Match", "If-Modified-Since", "Range")


@dataclass(frozen=True)
class Guard:
    """The edge's anti-leech rules."""

    schemes: frozenset[str]  # secure_link, type_a
    secret: str
    type_a_key: str
    type_a_ttl: int
    referers: tuple[str, ...]
    empty_referer: bool

    def check(self, request: Request, now: float) -> int:
        """0 when the request may be served, else the status to refuse it with."""
        if self.referers:
            referer = request.headers.get("Referer", "")
            if not referer:
                if not self.empty_referer:
                    return 403
            else:
                host = (urlsplit(referer).hostname or "").lower()
                if not any(fnmatch.fnmatchcase(host, p) for p in self.referers):
                    return 403
        if not self.schemes:
            return 0
        query = request.query
        if "auth_key" in query and "type_a" in self.schemes:
            verdict = signing.verify_type_a(
                request.path, query.get("auth_key"), self.type_a_key, self.type_a_ttl, now
            )
        elif "secure_link" in self.schemes:
            verdict = signing.verify_secure_link(
                request.path, query.get("md5"), query.get("expires"), self.secret, now
            )
        else:
            return 403
        return 0 if verdict is signing.Verdict.VALID else verdict.http_status


class Stats:
    def __init__(self) -> None:
        # PASS: an unsafe or unknown method, passed through and never stored.
        self.outcomes = dict.fromkeys(
            ("HIT", "MISS", "STALE", "REVALIDATED", "EXPIRED", "PASS"), 0
        )
        self.invalidations = 0  # stored responses dropped after a successful unsafe request
        self.bytes_served = 0
        self.upstream_fetches = 0
        self.upstream_errors = 0
        self.refused = 0
        # Requests per second, as an exponentially weighted average over ~5 s.
        self.rate = 0.0
        self._window_start = time.monotonic()
        self._window_count = 0

    def count(self) -> None:
        self._window_count += 1
        self.current_rate()

    def current_rate(self) -> float:
        """The average, folding in the window just past once it is a second old."""
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            current = self._window_count / elapsed
            self.rate = current if self.rate == 0 else 0.8 * self.rate + 0.2 * current
            self._window_start, self._window_count = now, 0
        return self.rate


class CacheNode:
    def __init__(self, ctx: Context) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.name = s.name
        self.tier = s.get("CDN_TIER", "edge")
        if self.tier not in ("edge", "region", "center"):
            raise ConfigError(f"D11_CDN_TIER={self.tier!r}: edge, region or center")
        self.region = s.get("CDN_REGION", "")
        parent = s.get("CDN_PARENT")
        self.parent_host, _, port = parent.rpartition(":")
        self.parent_port = int(port)
        self.parent = parent
        disk_mb = s.get_int("CDN_DISK_MB", 256)
        self.store = Store(
            s.get_int("CDN_MEMORY_MB", 64) * 1024 * 1024,
            s.data_dir / "cache" if disk_mb else None,
            disk_mb * 1024 * 1024,
        )
        self.pool = UpstreamPool(keepalive=64)
        self.connect_timeout = s.get_float("CDN_CONNECT_TIMEOUT", 2.0)
        self.read_timeout = s.get_float("CDN_READ_TIMEOUT", 5.0)
        self.capacity = s.get_float("CDN_CAPACITY", 5000.0)
        self.admin_token = s.get("ADMIN_TOKEN", LAB_ADMIN_TOKEN)
        schemes = frozenset(s.get_list("CDN_SIGNING", []))
        if schemes - {"secure_link", "type_a"}:
            raise ConfigError("D11_CDN_SIGNING: a list of secure_link, type_a")
        self.guard = Guard(
            schemes,
            s.get("CDN_SECRET", "double-11-lab-secret"),
            s.get("CDN_TYPE_A_KEY", "double-11-lab-secret"),
            s.get_int("CDN_TYPE_A_TTL", 1800),
            tuple(p.lower() for p in s.get_list("CDN_REFERERS", [])),
            s.get("CDN_EMPTY_REFERER", "allow") == "allow",
        )
        # Methods this tier accepts (None: any; GET and HEAD are cached, the rest passed
        # through). D11_CDN_METHODS=GET,HEAD makes a read-only public edge.
        methods = {m.strip().upper() for m in s.get_list("CDN_METHODS", []) if m.strip()}
        self.methods = frozenset(methods | {"GET", "HEAD"}) if methods else None
        self.via = f"1.1 {self.name} ({SERVER_HEADER})"
        self.stats = Stats()
        self.inflight: dict[str, asyncio.Future[None]] = {}
        self.background: set[asyncio.Task[None]] = set()

    # -- components --------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.store.load_index)

    async def stop(self, grace: float) -> None:
        for task in list(self.background):
            task.cancel()
        await self.store.flush()
        self.pool.close()

    # -- request path --------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.path
        if path in HOUSEKEEPING:
            return housekeeping(self.ctx, path)
        if path.startswith("/_cdn/"):
            return await self.operations(request)
        started = time.perf_counter()
        with self._span(request) as span:
            response, outcome = await self._answer(request)
            self._finish(span, request, response, outcome, started)
        return response

    def fast(self, request: Request) -> Response | None:
        """A fresh HIT in memory, the flash sale's common case, answered at once (no task);
        None sends the request down the full path."""
        headers = request.headers
        if (
            request.method not in ("GET", "HEAD")
            or "Authorization" in headers
            or "Cache-Control" in headers
            or bad_path(request.path)
            or self.guard.check(request, time.time())
        ):
            return None
        slot = self.store.slot_for(cache_key(request.path, request.query_string), headers)
        entry = self.store.get_memory(slot) if slot is not None else None
        now = time.time()
        if entry is None or entry.no_cache or entry.staleness(now) >= 0:
            return None
        started = time.perf_counter()
        with self._span(request) as span:
            if (
                request.method == "GET"
                and entry.status == 200
                and request.keep_alive
                and not any(h in headers for h in CONDITIONAL)
            ):
                # A plain GET: the same bytes for everyone while the Age is the same, so
                # they are encoded once per second per object, as DNS answers are kept.
                age = int(entry.age(now))
                if entry.wire is None or entry.wire[0] != age:
                    full = self._from_entry(entry, request, "HIT", now)
                    full.headers += [("X-Cache", "HIT"), ("Server", SERVER_HEADER)]
                    entry.wire = (age, encode_response(full, True, False, format_http_date(now)))
                response = Response(200, entry.body)
                response.wire = entry.wire[1]
                self._account(span, "GET", 200, "HIT", len(entry.body), started)
                return response
            response = self._from_entry(entry, request, "HIT", now)
            self._finish(span, request, response, "HIT", started)
        return response

    def _span(self, request: Request):
        attributes = {
            "http.request.method": request.method,
            "url.path": request.path,
            "client.address": request.remote_addr,
            "d11.cdn.node": self.name,
            "d11.cdn.tier": self.tier,
        }
        return server_span(
            f"CDN {self.tier} {request.method}", request.headers, attributes, self.ctx.tracer
        )

    def _finish(self, span, request: Request, response: Response, outcome: str, started: float):
        if outcome:
            response.headers.append(("X-Cache", outcome))
        response.headers.append(("Server", SERVER_HEADER))
        self._account(span, request.method, response.status, outcome, len(response.body), started)

    def _account(
        self, span, method: str, status: int, outcome: str, size: int, started: float
    ) -> None:
        """The answer in the span, the stats and the metrics."""
        span.set_attribute("http.response.status_code", status)
        if outcome:
            span.set_attribute("d11.cdn.cache", outcome)
        if status >= 500:
            mark_error(span, f"HTTP {status}")
        self.stats.count()
        if outcome:
            self.stats.outcomes[outcome] += 1
        else:
            self.stats.refused += 1
        self.stats.bytes_served += size
        self.ctx.metrics.observe("http", f"{method} {outcome or 'refused'}", str(status), started)

    async def _answer(self, request: Request) -> tuple[Response, str]:
        if self.methods is not None and request.method not in self.methods:
            page = error_page(405)
            page.headers.append(("Allow", ", ".join(sorted(self.methods))))
            return page, ""
        if bad_path(request.path):
            return error_page(400), ""
        refusal = self.guard.check(request, time.time())
        if refusal:
            return error_page(refusal), ""
        key = cache_key(request.path, request.query_string)
        if request.method not in ("GET", "HEAD"):
            return await self._pass_through(key, request)
        headers = request.headers
        if "Authorization" in headers:
            # §3.5: never answered from what another user's request stored.
            return await self._fetch_and_store(key, request, collapse=False)
        request_cc = semantics.cache_control(headers.get("Cache-Control"))  # mostly empty
        for _ in range(3):  # a waiter looks again once the request it waited for is done
            entry = await self._lookup(key, headers)
            if entry is None:
                if "only-if-cached" in request_cc:
                    return error_page(504), ""
                leader = self.inflight.get(key)
                if leader is not None:
                    await _wait(leader)
                    continue
                return await self._fetch_and_store(key, request, collapse=True)
            now = time.time()
            staleness = entry.staleness(now)
            client_no_cache = "no-cache" in request_cc or request_cc.get("max-age") == "0"
            if staleness < 0 and not client_no_cache and not entry.no_cache:
                return self._from_entry(entry, request, "HIT", now), "HIT"
            swr = entry.directive_seconds("stale-while-revalidate")
            if (
                swr is not None
                and staleness <= swr
                and not client_no_cache
                and not entry.no_stale
            ):
                self._revalidate_in_background(key, entry, request)
                return self._from_entry(entry, request, "STALE", now), "STALE"
            leader = self.inflight.get(key)
            if leader is not None:
                await _wait(leader)
                continue
            return await self._revalidate(key, entry, request)
        return await self._fetch_and_store(key, request, collapse=False)

    async def _lookup(self, key: str, headers: Mapping[str, str]) -> Entry | None:
        slot = self.store.slot_for(key, headers)
        if slot is None:
            return None
        entry = self.store.get_memory(slot)
        if entry is None and self.store.on_disk(slot):
            entry = await self.store.get_disk(slot)
        return entry

    def _from_entry(self, entry: Entry, request: Request, outcome: str, now: float) -> Response:
        served = entry.served
        if served is None:
            # The headers every answer from this entry carries, worked out once.
            via = semantics.header_all(entry.headers, "Via")
            served = [(k, v) for k, v in entry.headers if k.lower() not in ("via", "accept-ranges")]
            served.append(("Via", f"{via}, {self.via}" if via else self.via))
            if entry.status == 200:
                served.append(("Accept-Ranges", "bytes"))
            entry.served = served
        rh = request.headers
        if entry.status == 200 and not any(h in rh for h in CONDITIONAL):
            status, headers, body = 200, served, entry.body  # the common case, a plain GET
        else:
            status, headers, body = semantics.answer(rh, entry.status, served, entry.body)
        chain = f"{self.name}={outcome}"
        if entry.chain and outcome != "HIT":
            chain = f"{chain}, {entry.chain}"
        return Response(
            status, body, [*headers, ("Age", str(int(entry.age(now)))), ("X-Cache-Chain", chain)]
        )

    # -- upstream --------------------------------------------------------------------------
    def _upstream_headers(self, request: Request) -> list[tuple[str, str]]:
        headers = request.headers
        out = [("Host", request.host or self.parent_host)]
        out += [(k, v) for k, v in headers.items() if k.lower() not in NOT_FORWARDED]
        forwarded, via = headers.get("X-Forwarded-For"), headers.get("Via")
        out.append(("X-Forwarded-For", f"{forwarded}, {request.remote_addr}" if forwarded
                    else request.remote_addr))  # fmt: skip
        out.append(("Via", f"{via}, {self.via}" if via else self.via))
        return out

    async def _pass_through(self, key: str, request: Request) -> tuple[Response, str]:
        """An unsafe or unknown method (POST, PUT, DELETE, PATCH, M-SEARCH, ...) goes to the
        parent as it came and its answer is never stored. A non-error answer invalidates
        what this tier holds for the target URI and for Location and Content-Location on
        the same host (RFC 9111 §4.4); every tier on the way back does the same."""
        try:
            response, _, _ = await self._exchange(
                key, request, [], method=request.method, body=request.body
            )
        except UpstreamError as exc:
            return error_page(504 if exc.kind == "timeout" else 502), "PASS"
        if response.status < 400:
            invalid = [key]
            for name in ("Location", "Content-Location"):
                target = semantics.same_origin_target(
                    semantics.header(response.headers, name), request.host, key
                )
                if target is not None:
                    path, _, query = target.partition("?")
                    invalid.append(cache_key(path, query))
            self.stats.invalidations += self.store.purge(invalid)
        headers = [(k, v) for k, v in response.headers if k.lower() not in NOT_STORED]
        via = semantics.header_all(headers, "Via")
        headers = [(k, v) for k, v in headers if k.lower() != "via"]
        headers.append(("Via", f"{via}, {self.via}" if via else self.via))
        return Response(response.status, response.body, headers), "PASS"

    async def _exchange(
        self,
        key: str,
        request: Request,
        extra: list[tuple[str, str]],
        *,
        method: str = "GET",
        body: bytes = b"",
    ) -> tuple[Response, float, float]:
        """One request to the parent; returns (response, request time, response time)."""
        self.stats.upstream_fetches += 1
        attrs = {"server.address": self.parent_host, "server.port": self.parent_port,
                 "d11.cdn.parent": self.parent}  # fmt: skip
        with client_span(f"CDN fetch {self.tier}", attrs, self.ctx.tracer) as (span, carrier):
            headers = self._upstream_headers(request)
            if carrier:  # traced: this fetch is the parent the next tier continues
                headers = [(k, v) for k, v in headers if k.lower() not in TRACE_HEADERS]
            headers += [*extra, *carrier.items()]
            if method != "GET":  # passed through: the client's own body and its type
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            data = encode_request(method, key, headers, body)
            sent = time.time()
            try:
                response = await self.pool.exchange(
                    self.parent, self.parent_host, self.parent_port, data, head=method == "HEAD",
                    connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                )  # fmt: skip
            except UpstreamError as exc:
                self.stats.upstream_errors += 1
                mark_error(span, str(exc))
                raise
            span.set_attribute("http.response.status_code", response.status)
            upstream_cache = semantics.header(response.headers, "X-Cache")
            if upstream_cache:
                span.set_attribute("d11.cdn.parent_cache", upstream_cache)
        return response, sent, time.time()

    def _entry(
        self, key: str, request: Request, response: Response, sent: float, received: float
    ) -> Entry:
        dropped = NOT_STORED | semantics.connection_listed(response.headers)
        headers = [(k, v) for k, v in response.headers if k.lower() not in dropped]
        date = semantics.header(response.headers, "Date")
        if date is not None:
            headers.append(("Date", date))  # spelt as encode_response looks for it
        clock = AgeClock.of(response.headers, sent, received)
        vary = semantics.vary_names(headers)
        chain = semantics.header(response.headers, "X-Cache-Chain") or ""
        if not chain and (upstream := semantics.header(response.headers, "X-Cache")):
            chain = f"{self.parent}={upstream}"
        return Entry(
            key,
            vary,
            semantics.vary_key(vary, request.headers),
            response.status,
            headers,
            response.body,
            clock,
            semantics.freshness_lifetime(response.status, semantics.cdn_policy(headers)),
            chain,
        )

    @contextlib.contextmanager
    def _leading(self, key: str) -> Iterator[None]:
        """This request goes upstream for ``key``; others asking meanwhile wait for it
        (nginx's proxy_cache_lock) and then look in the cache again."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inflight[key] = done
        try:
            yield
        finally:
            self.inflight.pop(key, None)
            done.set_result(None)

    async def _fetch_and_store(
        self, key: str, request: Request, *, collapse: bool
    ) -> tuple[Response, str]:
        with self._leading(key) if collapse else contextlib.nullcontext():
            try:
                response, sent, received = await self._exchange(key, request, [])
            except UpstreamError as exc:
                return error_page(504 if exc.kind == "timeout" else 502), "MISS"
            entry = self._entry(key, request, response, sent, received)
            if self._worth_storing(entry, request):
                self.store.put(entry)
            return self._from_entry(entry, request, "MISS", time.time()), "MISS"

    async def _revalidate(self, key: str, entry: Entry, request: Request) -> tuple[Response, str]:
        with self._leading(key):
            return await self._revalidate_now(key, entry, request)

    async def _revalidate_now(
        self, key: str, entry: Entry, request: Request
    ) -> tuple[Response, str]:
        conditions = []
        if etag := semantics.header(entry.headers, "ETag"):
            conditions.append(("If-None-Match", etag))
        if modified := semantics.header(entry.headers, "Last-Modified"):
            conditions.append(("If-Modified-Since", modified))
        try:
            response, sent, received = await self._exchange(key, request, conditions)
        except UpstreamError as exc:
            return self._on_error(entry, request, 504 if exc.kind == "timeout" else 502)
        if response.status in ERROR_STATUSES:
            stale = self._on_error(entry, request, response.status)
            if stale[1] == "STALE":
                return stale
        if response.status == 304:
            freshened = self._freshen(entry, response, sent, received)
            self.store.put(freshened)
            return self._from_entry(freshened, request, "REVALIDATED", time.time()), "REVALIDATED"
        fresh = self._entry(key, request, response, sent, received)
        if self._worth_storing(fresh, request):
            self.store.put(fresh)
        else:
            self.store.remove(entry.slot)
        return self._from_entry(fresh, request, "EXPIRED", time.time()), "EXPIRED"

    def _worth_storing(self, entry: Entry, request: Request) -> bool:
        policy = semantics.cdn_policy(entry.headers)
        if not semantics.storable("GET", entry.status, request.headers, policy):
            return False
        # Stale on arrival, nothing to revalidate with and no stale-* allowance: storing it
        # would only make the next request an EXPIRED instead of a MISS.
        return (
            entry.lifetime > 0
            or any(semantics.header(entry.headers, h) for h in ("ETag", "Last-Modified"))
            or "stale-if-error" in entry.directives
        )

    def _freshen(self, entry: Entry, response: Response, sent: float, received: float) -> Entry:
        """RFC 9111 §4.3.4: the 304's headers replace the stored ones of the same name."""
        dropped = NOT_STORED | NOT_FRESHENED | semantics.connection_listed(response.headers)
        updates = [(k, v) for k, v in response.headers if k.lower() not in dropped]
        names = {k.lower() for k, _ in updates}
        headers = [(k, v) for k, v in entry.headers if k.lower() not in names] + updates
        date = semantics.header(response.headers, "Date")
        if date is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "date"] + [("Date", date)]
        clock = AgeClock.of(response.headers, sent, received)
        return Entry(
            entry.key, entry.vary, entry.vary_values, entry.status, headers, entry.body, clock,
            semantics.freshness_lifetime(entry.status, semantics.cdn_policy(headers)), entry.chain,
        )  # fmt: skip

    def _on_error(self, entry: Entry, request: Request, status: int) -> tuple[Response, str]:
        """The parent failed during revalidation: stale-if-error (RFC 5861 §4), from the
        response or the request, else the error."""
        now = time.time()
        allowed = [entry.directive_seconds("stale-if-error")]
        request_cc = semantics.cache_control(request.headers.get("Cache-Control"))
        allowed.append(semantics.seconds(request_cc, "stale-if-error"))
        limit = max((a for a in allowed if a is not None), default=None)
        if limit is not None and entry.staleness(now) <= limit and not entry.no_stale:
            return self._from_entry(entry, request, "STALE", now), "STALE"
        return error_page(status), "EXPIRED"

    def _revalidate_in_background(self, key: str, entry: Entry, request: Request) -> None:
        if key in self.inflight:
            return

        async def refresh() -> None:
            with contextlib.suppress(Exception):
                await self._revalidate(key, entry, request)

        task = asyncio.get_running_loop().create_task(refresh())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- operations --------------------------------------------------------------------------
    async def operations(self, request: Request) -> Response:
        op = request.path.removeprefix("/_cdn/")
        if op == "stats" and request.method == "GET":
            return _json(200, self.stats_report())
        if op == "load" and request.method == "GET":
            return _json(200, self.load_report())
        if op not in ("purge", "prefetch"):
            return _json(404, {"error": f"no operation {op!r}"})
        if request.method != "POST":
            return _json(405, {"error": "use POST"})
        if not self.admin_token or not hmac.compare_digest(
            request.headers.get("X-Admin-Token", ""), self.admin_token
        ):
            return _json(401, {"error": "needs X-Admin-Token"})
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return _json(400, {"error": "the body is not JSON"})
        urls = body.get("urls", []) if isinstance(body, dict) else None
        prefix = body.get("prefix") if isinstance(body, dict) else None
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            return _json(400, {"error": 'the body is an object whose "urls" is a list of strings'})
        if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/")):
            return _json(400, {"error": '"prefix" is a path starting with "/"'})
        if not urls and prefix is None:
            return _json(400, {"error": 'give "urls" or "prefix"'})
        if op == "purge":
            return await self.purge(request, body, urls, prefix)
        return await self.prefetch(request, urls)

    async def purge(
        self, request: Request, body: dict, urls: list[str], prefix: str | None
    ) -> Response:
        keys = [cache_key(*_split(u)) for u in urls]
        count = self.store.purge(keys, prefix)
        result = {"node": self.name, "purged": count}
        if body.get("cascade", True) and self.tier != "center":
            headers = [("Host", self.parent_host), ("X-Admin-Token", self.admin_token),
                       ("Content-Type", "application/json")]  # fmt: skip
            data = encode_request("POST", "/_cdn/purge", headers, request.body)
            try:
                answer = await self.pool.exchange(
                    self.parent, self.parent_host, self.parent_port, data, head=False,
                    connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                )  # fmt: skip
                result["parent"] = (
                    json.loads(answer.body) if answer.status == 200 else answer.status
                )
            except (UpstreamError, ValueError) as exc:
                result["parent"] = f"failed: {exc}"
        return _json(200, result)

    async def prefetch(self, request: Request, urls: list[str]) -> Response:
        results = {}
        for url in urls:
            path, query = _split(url)
            if bad_path(path):
                results[url] = "refused"
                continue
            warm = Request()
            warm.method, warm.path, warm.query_string = "GET", path, query
            warm.raw_path = url
            warm.headers.add("Host", request.host)
            warm.remote_addr = request.remote_addr
            key = cache_key(path, query)
            entry = await self._lookup(key, warm.headers)
            if entry is not None and entry.staleness(time.time()) < 0:
                results[url] = "HIT"
                continue
            response, outcome = await self._fetch_and_store(key, warm, collapse=True)
            results[url] = outcome if response.status < 400 else f"{outcome} {response.status}"
        return _json(200, {"node": self.name, "prefetched": results})

    def stats_report(self) -> dict:
        outcomes = self.stats.outcomes
        served = sum(v for k, v in outcomes.items() if k != "PASS")  # cacheable requests
        hits = outcomes["HIT"] + outcomes["STALE"] + outcomes["REVALIDATED"]
        return {
            "node": self.name,
            "tier": self.tier,
            "region": self.region,
            **{k.lower(): v for k, v in outcomes.items()},
            "requests": served,
            "hit_ratio": round(hits / served, 4) if served else 0.0,
            "bytes_served": self.stats.bytes_served,
            "refused": self.stats.refused,
            "upstream_fetches": self.stats.upstream_fetches,
            "upstream_errors": self.stats.upstream_errors,
            "invalidations": self.stats.invalidations,
            "objects": self.store.objects(),
            "memory_bytes": self.store.memory_bytes,
            "disk_bytes": self.store.disk_bytes,
            "evictions": self.store.evictions,
        }

    def load_report(self) -> dict:
        rate = self.stats.current_rate()
        return {
            "node": self.name,
            "tier": self.tier,
            "region": self.region,
            "healthy": not self.ctx.draining,
            "requests_per_s": round(rate, 1),
            "capacity": self.capacity,
            "load": round(min(1.0, rate / self.capacity), 4) if self.capacity else 0.0,
        }


def cache_key(path: str, query_string: str) -> str:
    """The URL a response is stored under: path and query without the signing parameters
    (every phone's URL is signed differently; the object is one)."""
    if not query_string:
        return path
    kept = [
        (k, v)
        for k, v in parse_qsl(query_string, keep_blank_values=True)
        if k not in SIGNING_PARAMS
    ]
    return f"{path}?{urlencode(kept)}" if kept else path


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.path or "/", parts.query


async def _wait(leader: asyncio.Future[None]) -> None:
    # Shielded: a waiter that gives up must not cancel the request the others wait for.
    await asyncio.shield(leader)


def _json(status: int, body: dict) -> Response:
    return Response(status, json.dumps(body).encode(), [("Content-Type", "application/json")])


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    node = CacheNode(ctx)
    # nginx's defaults: 60 s header/body timeouts are too generous for an edge under a
    # flash sale; 10 s each, 75 s keep-alive as nginx.
    limits = Limits(10.0, 10.0, 75.0, 64 * 1024)
    return [node, Listener(node.handle, limits, bind_socket(s.address, s.port), fast=node.fast)]


def main() -> None:
    run(build, name="cdn-cache", role="cdn-cache", port=8091)


if __name__ == "__main__":
    main()
