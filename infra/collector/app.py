"""Collector service: OTLP/HTTP in, SQLite store, JSON API and the waterfall viewer out.

- ``POST /v1/traces``: OTLP/HTTP, protobuf or JSON (the exporter's default port is 4318)
- ``GET /api/traces?service=&attr=KEY=VALUE&limit=``: recent traces, newest first
- ``GET /api/traces/{trace_id}``: every span of one trace (404 when unknown)
- ``GET /`` and ``GET /traces/{trace_id}``: the web viewer
- ``GET /topology`` and ``GET /api/topology``: the lab's hosts and networks (the topology
  file) with each host's live health (probed by protocol at each request), drawn as a page
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from infra.collector import otlp
from infra.collector.store import SpanStore
from infra.db import ThreadOwned
from infra.http import HttpServer, make_app
from infra.service import Component, Context, run
from infra.tasks import Periodic
from infra.topology import Topology, TopologyError
from infra.topology import load as load_topology

log = logging.getLogger("d11.collector")

MAX_BODY = 16 * 1024 * 1024
VIEWER = Path(__file__).with_name("viewer.html")
TOPOLOGY_PAGE = Path(__file__).with_name("topology.html")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@dataclass(frozen=True)
class Retention:
    """How long and how much the store keeps (``D11_TRACE_MAX_AGE`` seconds,
    ``D11_TRACE_MAX_MB``): the oldest traces go first."""

    max_age_s: float = 6 * 3600.0
    max_mb: float = 256.0

    def describe(self) -> str:
        return f"traces are kept {self.max_age_s:g} s and {self.max_mb:g} MB at most"


PRUNE_TO = 0.95  # of the size bound


class Pruner(Periodic):
    def __init__(
        self, storage: ThreadOwned[SpanStore], retention: Retention, every: float = 10.0
    ) -> None:
        super().__init__("span-retention", every, self._prune)
        self.storage, self.retention = storage, retention

    async def _prune(self) -> None:
        r = self.retention
        # Pruned to 95 % of the bound: a flash sale adds ~2 % of the default bound between
        # two prunes (60 traced visits/s for 10 s), so the store stays under it throughout.
        dropped = await self.storage.run(SpanStore.prune, time.time_ns(), r.max_age_s,
                                         int(r.max_mb * 2**20 * PRUNE_TO))  # fmt: skip
        if dropped:
            log.info("retention dropped %d traces", dropped, extra={"dropped": dropped})


def routes(
    storage: ThreadOwned[SpanStore], name: str = "collector", retention: Retention | None = None
) -> web.RouteTableDef:
    retention = retention or Retention()
    api = web.RouteTableDef()

    @api.post("/v1/traces")
    async def export(request: web.Request) -> web.Response:
        content_type = request.content_type
        if content_type not in (otlp.PROTOBUF, otlp.JSON):
            return _json_error(415, f"unsupported content type {content_type!r}")
        try:
            body = await request.read()
            records, rejected = otlp.spans(otlp.parse_request(body, content_type))
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, f"body over {MAX_BODY} bytes")
        except otlp.MalformedPayload as exc:
            return _json_error(400, str(exc))
        await storage.run(SpanStore.add, records)
        message = f"{rejected} span(s) with invalid ids or times" if rejected else ""
        return web.Response(
            body=otlp.response(rejected, message, content_type), content_type=content_type
        )

    @api.get("/api/traces")
    async def list_traces(request: web.Request) -> web.Response:
        try:
            limit = min(max(int(request.query.get("limit", "20")), 1), 1000)
        except ValueError:
            return _json_error(400, "limit must be an integer")
        attribute = None
        if "attr" in request.query:
            key, sep, value = request.query["attr"].partition("=")
            if not sep or not key:
                return _json_error(400, "attr must be KEY=VALUE")
            attribute = (key, value)
        found = await storage.run(
            SpanStore.traces,
            service=request.query.get("service") or None,
            attribute=attribute,
            limit=limit,
        )
        return web.json_response({"traces": found})

    @api.get("/api/traces/{trace_id}")
    async def get_trace(request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"].lower()
        if not TRACE_ID.match(trace_id):
            return _json_error(400, "a trace id is 32 hex digits")
        spans = await storage.run(SpanStore.trace, trace_id)
        if not spans:
            aged = await storage.run(SpanStore.aged_out, trace_id)
            if aged is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(aged / 1e9))
                return _json_error(410, f"trace {trace_id} aged out of the store at {when}"
                                        f" ({retention.describe()})")  # fmt: skip
            return _json_error(404, f"no trace {trace_id}")
        return web.json_response({"trace_id": trace_id, "spans": spans})

    @api.get("/")
    @api.get("/traces/{trace_id}")
    async def viewer(request: web.Request) -> web.FileResponse:
        return web.FileResponse(VIEWER, headers={"Cache-Control": "no-cache"})

    @api.get("/topology")
    async def topology_page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(TOPOLOGY_PAGE, headers={"Cache-Control": "no-cache"})

    traffic: dict[str, Any] = {}  # the scraper of the sites' hosts, kept across refreshes

    @api.get("/api/topology")
    async def topology_api(request: web.Request) -> web.Response:
        from infra.health import probe_all  # grpc is heavy; only this page needs it

        try:
            topo = load_topology()
        except TopologyError as exc:
            return _json_error(500, str(exc))
        # In Docker mode a VPC's hosts answer only inside it: the collector sees its own
        # VPC's (it joins the shop's), and another tenant's is isolated (health null).
        own_vpc = next((h.vpc[0] for h in topo.hosts if h.name == name and h.vpc),
                       None)  # fmt: skip
        own = topo.tenant_of(own_vpc) if own_vpc else None
        visible = [h for h in topo.hosts if h.vpc is None or topo.tenant_of(h.vpc[0]) == own]
        health = await probe_all(visible, timeout=0.5)
        rates, links = await site_traffic(topo, traffic)
        hosts = [
            {"name": h.name, "role": h.role, "site": h.site or None, "az": h.az or None,
             "address": h.address, "port": h.port,
             "protocol": h.protocol, "networks": list(h.networks), "addresses": h.addresses,
             "vpc": h.vpc[0] if h.vpc else None, "vpc_address": h.vpc[1] if h.vpc else None,
             "vni": topo.segment(h)[0] if h.vpc else None,
             "healthy": health.get(h.name), "rps": rates.get(h.name)}
            for h in topo.hosts
        ]  # fmt: skip
        return web.json_response({"mode": topo.mode, "networks": topo.networks,
                                  "vpcs": topo.vpcs, "sites": topo.sites, "links": links,
                                  "hosts": hosts})  # fmt: skip

    return api


async def site_traffic(topo: Topology, state: dict[str, Any]
                       ) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Requests/s of the sites' gateways and controllers since the previous call (their own
    /metrics, as ``./d11 top`` reads them), and the traffic on the diagram's links: into
    each site through its gateways, and from an access site's controllers to the main
    site's order services (every order they take is written there)."""
    import aiohttp

    from infra.top import Top

    hosts = [h for h in topo.hosts if h.site and h.role in ("gateway", "controller")]
    if not hosts:
        return {}, {}
    top = state.get("top")
    if top is None or [h.name for h in top.hosts] != [h.name for h in hosts]:
        top = state["top"] = Top(topo, hosts)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        rows = await top.scrape(session)
    rates = {n: r["rps"] for n, r in rows.items() if r.get("rps") is not None}
    links: dict[str, float] = {}
    for h in hosts:
        if h.name not in rates:
            continue
        if h.role == "gateway":
            key = f"gslb:{h.site}"
        elif h.site != topo.main_site:
            key = f"inter-site:{h.site}>{topo.main_site}"
        else:
            continue
        links[key] = round(links.get(key, 0.0) + rates[h.name], 1)
    return rates, links


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    path = s.data_dir / "spans.sqlite3"
    storage = ThreadOwned(lambda: SpanStore(path), "spanstore")
    retention = Retention(s.get_float("TRACE_MAX_AGE", Retention.max_age_s),
                          s.get_float("TRACE_MAX_MB", Retention.max_mb))  # fmt: skip
    app = make_app(ctx, client_max_size=MAX_BODY)
    app.add_routes(routes(storage, s.name, retention))
    pruner = Pruner(storage, retention, s.get_float("TRACE_PRUNE_EVERY", 10.0))
    return [storage, pruner, HttpServer(app, s.address, s.port)]


def main() -> None:
    # The collector is the sink: exporting its own spans to itself would loop.
    os.environ["OTEL_TRACES_EXPORTER"] = "none"
    run(build, name="collector", role="collector", port=4318)
