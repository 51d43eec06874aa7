"""The phone: one simulated handset placed in an ISP's network and a region (an address of
the IP database's phone subnets), doing what the Double-11 app does:

1. resolve ``api.shop.example`` and ``img.shop.example`` through its ISP's resolver
   (LocalDNS, UDP from its own address) or through HTTPDNS (which resolves for the phone's
   address), caching answers for their TTL;
2. open HTTPS to the entry address it was given (the lab CA, SNI ``api.shop.example``);
3. read the item page, then its image from the CDN edge it was given (the signed URL);
4. place the order with an ``Idempotency-Key`` and read it back.

Every journey is one trace that the phone starts: spans for each resolution, the item
page, the CDN fetch (edge HIT/MISS and the tiers behind it), the TLS connect and the order,
whose ``traceparent`` the gateway and everything behind it continue.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from dnslib import QTYPE, DNSRecord

from infra.telemetry import client_span, format_trace_id, tracer

API_NAME, IMG_NAME = "api.shop.example", "img.shop.example"
# The entry's HTTPS port: the gateway's own in process mode, the NAT's 443 in Docker mode.
HTTPS_PORT = int(os.environ.get("D11_API_PORT") or 8443)
REFERER = "https://www.shop.example/"
# The app's retry policy: a connect failure, a reset, or 502/503/504 is sent again (an order
# with the same Idempotency-Key) on the next address resolved, after a jittered backoff;
# at most RETRY_ATTEMPTS tries in all, each bounded by its own timeout.
RETRY_ATTEMPTS = 5
RETRY_BACKOFF_S = (0.15, 0.3, 0.6, 1.2)
RETRY_STATUSES = frozenset({502, 503, 504})
# An address that refused a connection is tried last for this long, as the vendors' HTTPDNS
# SDKs do: a phone whose site is gone goes straight to the address that answered.
UNREACHABLE_S = 10.0
ATTEMPT_TIMEOUT_S = {"GET": 4.0, "POST": 12.0}

# Phone subnets of dns/gslb/ipdb.csv: (ISP, region) → the block its phones live in. Docker
# mode sets D11_PHONE_PLACES ("telecom/east=198.19.1.0/27,...") to the container's blocks.
PLACES: dict[tuple[str, str], ipaddress.IPv4Network] = {
    ("telecom", "east"): ipaddress.IPv4Network("127.100.0.0/16"),
    ("telecom", "north"): ipaddress.IPv4Network("127.101.0.0/16"),
    ("unicom", "east"): ipaddress.IPv4Network("127.102.0.0/16"),
    ("unicom", "north"): ipaddress.IPv4Network("127.103.0.0/16"),
}
if os.environ.get("D11_PHONE_PLACES"):
    PLACES = {}
    for item in os.environ["D11_PHONE_PLACES"].split(","):
        place, _, block = item.partition("=")
        isp, _, region = place.strip().partition("/")
        PLACES[(isp, region)] = ipaddress.IPv4Network(block.strip())


class _Retryable(Exception):
    """A gateway's or edge's 502/503/504: the app sends the request again."""


class StepError(Exception):
    """A journey step failed; ``kind`` is what the report counts it as."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class Journey:
    """What one purchase did and how long each step took (seconds)."""

    phone: str
    isp: str
    region: str
    mode: str  # localdns | httpdns
    protocol: str
    item_id: int
    steps: dict[str, float] = field(default_factory=dict)
    api_address: str = ""
    edge: str = ""
    cdn_chain: str = ""
    cdn_cache: str = ""
    status: int = 0  # the order's HTTP status (0: no order placed)
    outcome: str = ""  # ok | sold-out | browse | error kind
    order_id: str = ""
    key: str = ""
    quantity: int = 1
    trace_id: str = ""
    sampled: bool = False  # whether the trace is recorded (the load's --trace-ratio)
    total: float = 0.0
    retries: int = 0  # requests sent again (same Idempotency-Key) after a fault
    fallbacks: int = 0  # HTTPDNS failed and LocalDNS answered instead
    error: str = ""  # why a failed visit failed, as the phone saw it
    served_by: str = ""  # the gateway that answered the last API request (X-Served-By)
    due: float = 0.0  # seconds into the run when the visit was due


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, reply: asyncio.Future[bytes]) -> None:
        self.reply = reply

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


def order_body(user: str, item_id: int, coupon: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": user, "lines": [{"item_id": item_id, "quantity": 1}]}
    if coupon:
        body["coupon_code"] = coupon
    return body


class Phone:
    def __init__(
        self,
        address: str,
        isp: str,
        region: str,
        mode: str,
        resolver: str,
        httpdns: str,
        ca_file: Path,
        timeout: float = 15.0,
        coupon: str = "",
    ) -> None:
        self.address, self.isp, self.region, self.mode = address, isp, region, mode
        self.coupon = coupon  # a coupon code every order of this phone redeems
        self.resolver, self.httpdns = resolver, httpdns
        self.user = f"phone-{address}"
        self.dns_cache: dict[str, tuple[list[str], float]] = {}
        self.api_addresses: list[str] = []
        self.unreachable: dict[str, float] = {}  # address → until when it is tried last
        context = ssl.create_default_context(cafile=str(ca_file))
        self.connects, self.last_connect = 0, 0.0  # connections opened, the latest's time
        trace_config = aiohttp.TraceConfig()
        trace_config.on_connection_create_start.append(self._connect_start)
        trace_config.on_connection_create_end.append(self._connect_end)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(address, 0), ssl=context, limit=8),
            timeout=aiohttp.ClientTimeout(total=timeout),
            trace_configs=[trace_config],
        )

    async def _connect_start(self, session, ctx, params) -> None:
        ctx.started = time.perf_counter()
        # TCP and the TLS handshake, a span of its own under the request that needed it.
        ctx.span = tracer().start_span(
            "TCP+TLS connect", attributes={"client.address": self.address}
        )

    async def _connect_end(self, session, ctx, params) -> None:
        self.connects += 1
        self.last_connect = time.perf_counter() - ctx.started
        ctx.span.end()

    async def close(self) -> None:
        await self.session.close()

    # -- name resolution -----------------------------------------------------------------
    async def resolve(self, journey: Journey, names: tuple[str, ...]) -> dict[str, list[str]]:
        now = time.monotonic()
        out: dict[str, list[str]] = {}
        missing = []
        for name in names:
            cached = self.dns_cache.get(name)
            if cached and cached[1] > now:
                out[name] = cached[0]
            else:
                missing.append(name)
        if not missing:
            journey.steps["dns"] = 0.0
            return out
        started = time.perf_counter()
        attrs = {"d11.dns.mode": self.mode, "d11.dns.names": ",".join(missing),
                 "client.address": self.address}  # fmt: skip
        with client_span(f"DNS {self.mode}", attrs) as (span, carrier):
            found = None
            if self.mode == "httpdns":
                try:
                    found = await self._httpdns(missing, carrier)
                except StepError:
                    # As the vendors' SDKs do: HTTPDNS failing, ask the system's LocalDNS.
                    journey.fallbacks += 1
                    span.set_attribute("d11.dns.fallback", "localdns")
            if found is None:
                found = dict(
                    zip(
                        missing, await asyncio.gather(*(self._udp(n) for n in missing)), strict=True
                    )
                )
            for name, (addresses, ttl) in found.items():
                if not addresses:
                    raise StepError("dns", f"no address for {name}")
                self.dns_cache[name] = (addresses, now + max(ttl, 1))
                out[name] = addresses
                span.set_attribute(f"d11.dns.answer.{name}", ",".join(addresses))
            server = self.httpdns if self.mode == "httpdns" else self.resolver
            span.set_attribute("server.address", server)
        journey.steps["dns"] = time.perf_counter() - started
        return out

    async def _udp(self, name: str) -> tuple[list[str], int]:
        """An A query to the ISP's resolver, sent from the phone's own address."""
        query = DNSRecord.question(name, "A")
        query.header.id = secrets.randbelow(65536)
        loop = asyncio.get_running_loop()
        # A stub resolver's retries: a resolver that restarts is back within a second or two.
        for wait in (0.5, 1.0, 1.5):
            reply: asyncio.Future[bytes] = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(
                lambda future=reply: _Receiver(future),
                local_addr=(self.address, 0),
                remote_addr=(self.resolver, 53),
            )
            try:
                transport.sendto(bytes(query.pack()))
                async with asyncio.timeout(wait):
                    data = await reply
            except TimeoutError:
                continue
            except OSError:  # ICMP port unreachable: nobody listens there right now
                await asyncio.sleep(wait)
                continue
            finally:
                transport.close()
            answer = DNSRecord.parse(data)
            records = [rr for rr in answer.rr if rr.rtype == QTYPE.A]
            return [str(rr.rdata) for rr in records], min((rr.ttl for rr in records), default=0)
        raise StepError("dns", f"{self.resolver} did not answer for {name}")

    async def _httpdns(
        self, names: list[str], carrier: dict[str, str]
    ) -> dict[str, tuple[list[str], int]]:
        """DNSPod style: one request for the batch, answered for this phone's address; the
        trace goes with it, so HTTPDNS's own resolution steps join the phone's trace."""
        url = f"http://{self.httpdns}/d"
        query = {"dn": ",".join(names), "ttl": "1"}
        try:
            timeout = aiohttp.ClientTimeout(total=2.0, connect=0.5)
            async with self.session.get(url, params=query, headers=carrier, timeout=timeout) as r:
                text = await r.text()
                if r.status != 200:
                    raise StepError("dns", f"httpdns: HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StepError("dns", f"httpdns: {exc}") from None
        lines = text.splitlines() if len(names) > 1 else [f"{names[0]}.:{text}"]
        out: dict[str, tuple[list[str], int]] = {}
        for line in lines:
            name, _, answer = line.partition(":")
            ips, _, ttl = answer.partition(",")
            addresses = [ip for ip in ips.split(";") if ip and ip != "0"]
            out[name.rstrip(".")] = (addresses, int(ttl) if ttl.isdigit() else 0)
        return out

    # -- the journey ------------------------------------------------------------------------
    async def purchase(self, journey: Journey, *, order: bool, image_index: int = 1) -> Journey:
        """One visit: resolve, item page, image, and (if ``order``) the order and its
        read-back. Raises nothing: failures are recorded in the journey (its ``total`` is the
        driver's to set: it counts from when the visit was due)."""
        with tracer().start_as_current_span(
            "phone purchase" if order else "phone browse",
            attributes={"client.address": self.address, "d11.phone.isp": self.isp,
                        "d11.phone.region": self.region, "d11.dns.mode": self.mode,
                        "d11.order.protocol": journey.protocol, "d11.item.id": journey.item_id},
        ) as root:  # fmt: skip
            journey.trace_id = format_trace_id(root)
            journey.sampled = root.get_span_context().trace_flags.sampled
            try:
                await self._journey(journey, order, image_index)
            except StepError as exc:
                journey.outcome, journey.error = exc.kind, str(exc)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                journey.outcome, journey.error = "network", repr(exc)
            except Exception as exc:  # a phone's own bug is one failed visit, not the run's end
                journey.outcome, journey.error = f"phone-{type(exc).__name__}", repr(exc)
            if journey.error:
                root.set_attribute("d11.phone.error", journey.error)
            root.set_attribute("d11.phone.outcome", journey.outcome)
        return journey

    async def _journey(self, journey: Journey, order: bool, image_index: int) -> None:
        found = await self.resolve(journey, (API_NAME, IMG_NAME))
        self.api_addresses = found[API_NAME]
        now = time.monotonic()
        journey.api_address = next((a for a in self.api_addresses
                                    if self.unreachable.get(a, 0.0) <= now),
                                   self.api_addresses[0])  # fmt: skip
        journey.edge = found[IMG_NAME][0]
        connects = self.connects
        item = await self._json("GET", f"/api/items/{journey.item_id}", journey, "item")
        if self.connects > connects:  # this request opened the connection: TCP + TLS
            journey.steps["tls"] = self.last_connect
        images = item.get("images") or []
        if images:
            await self._image(journey, images[min(image_index, len(images) - 1)])
        if not order:
            journey.outcome = "browse"
            return
        journey.key = str(uuid.uuid4())
        body = order_body(self.user, journey.item_id, self.coupon)
        placed = await self._json(
            "POST", "/api/orders", journey, "order", body=body,
            headers={"Idempotency-Key": journey.key, "X-Order-Protocol": journey.protocol},
        )  # fmt: skip
        if journey.status == 409:
            journey.outcome = "sold-out"
            return
        if journey.status not in (200, 201):
            journey.outcome = f"http-{journey.status}"
            # The problem+json's own words, so the report says what failed (who and why).
            words = placed.get("detail") or placed.get("title") or ""
            journey.error = f"order: HTTP {journey.status} {str(words)[:200]}".rstrip()
            return
        journey.order_id = str(placed.get("order_id", ""))
        back = await self._json("GET", f"/api/orders/{journey.order_id}", journey, "read")
        journey.outcome = "ok" if back.get("order_id") == journey.order_id else "lost"

    async def _retrying(self, journey: Journey, attempt) -> Any:
        """Run ``attempt(n)`` until it succeeds, as the app does: on a network fault or a
        gateway's 502/503/504 (raised as _Retryable) it waits a jittered backoff and goes
        again; the last failure is raised."""
        for n in range(RETRY_ATTEMPTS):
            try:
                return await attempt(n)
            except (_Retryable, aiohttp.ClientConnectionError, TimeoutError, OSError):
                if n == RETRY_ATTEMPTS - 1:
                    raise
            except RuntimeError as exc:
                # uvloop, under resets, may find a reused descriptor still held by a closed
                # transport ("File descriptor N is used by transport"): a socket error for
                # the app, so tried again on a new socket.
                if "used by transport" not in str(exc) or n == RETRY_ATTEMPTS - 1:
                    raise
            journey.retries += 1
            await asyncio.sleep(RETRY_BACKOFF_S[n] * (0.5 + secrets.randbelow(1000) / 1000))
        raise AssertionError("unreachable")

    async def _json(
        self,
        method: str,
        path: str,
        journey: Journey,
        step: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> dict:
        started = time.perf_counter()

        async def attempt(n: int) -> tuple[int, bytes]:
            # The next address the name resolved to, for each new try.
            api = self.api_addresses[(self.api_addresses.index(journey.api_address) + n)
                                     % len(self.api_addresses)]  # fmt: skip
            url = f"https://{api}:{HTTPS_PORT}{path}"
            attrs = {"http.request.method": method, "url.full": url, "server.address": api,
                     "server.port": HTTPS_PORT, "d11.phone.attempt": n + 1}  # fmt: skip
            timeout = aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S.get(method, 4.0), connect=1.0)
            with client_span(f"{method} {step}", attrs) as (span, carrier):
                send = {"Host": API_NAME, "X-User-Id": self.user, **(headers or {}), **carrier}
                try:
                    async with self.session.request(
                        method, url, json=body, headers=send, server_hostname=API_NAME,
                        timeout=timeout,
                    ) as r:  # fmt: skip
                        data = await r.read()
                        journey.served_by = r.headers.get("X-Served-By", journey.served_by)
                        span.set_attribute("http.response.status_code", r.status)
                        if r.status in RETRY_STATUSES and n < RETRY_ATTEMPTS - 1:
                            raise _Retryable(r.status)
                except aiohttp.ClientConnectorError:
                    self.unreachable[api] = time.monotonic() + UNREACHABLE_S
                    raise
                journey.api_address = api  # the visit's next requests go where this one went
                return r.status, data

        status, data = await self._retrying(journey, attempt)
        if step == "order":
            journey.status = status
        elif status != 200:
            raise StepError(f"{step}-{status}")
        journey.steps[step] = time.perf_counter() - started
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            raise StepError(f"{step}-bad-json") from None
        return parsed if isinstance(parsed, dict) else {}

    async def _image(self, journey: Journey, signed: str) -> None:
        """The image from the edge the CDN's GSLB gave this phone (Host keeps the name);
        after a failure the name is resolved again (the GSLB leaves a dead edge out)."""
        started = time.perf_counter()

        async def attempt(n: int) -> None:
            if n:
                self.dns_cache.pop(IMG_NAME, None)
                journey.edge = (await self.resolve(journey, (IMG_NAME,)))[IMG_NAME][0]
            url = signed.replace(f"//{IMG_NAME}", f"//{journey.edge}", 1)
            attrs = {"http.request.method": "GET", "url.full": signed,
                     "server.address": journey.edge, "d11.phone.attempt": n + 1}  # fmt: skip
            timeout = aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S["GET"], connect=1.0)
            with client_span("CDN GET", attrs) as (span, carrier):
                async with self.session.get(
                    url, headers={"Host": IMG_NAME, "Referer": REFERER, **carrier},
                    timeout=timeout,
                ) as r:  # fmt: skip
                    await r.read()
                    journey.cdn_cache = r.headers.get("X-Cache", "")
                    journey.cdn_chain = r.headers.get("X-Cache-Chain", "")
                    span.set_attribute("http.response.status_code", r.status)
                    span.set_attribute("d11.cdn.cache", journey.cdn_cache)
                    span.set_attribute("d11.cdn.chain", journey.cdn_chain)
                    if r.status in RETRY_STATUSES and n < RETRY_ATTEMPTS - 1:
                        raise _Retryable(r.status)
                    if r.status != 200:
                        raise StepError(f"cdn-{r.status}")

        await self._retrying(journey, attempt)
        journey.steps["cdn"] = time.perf_counter() - started
