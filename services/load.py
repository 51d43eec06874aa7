"""``./d11 load``: simulated phones drive a flash sale through the whole chain, then the
run is audited against what the services themselves say.

Phones are spread over the IP database's ISPs and regions, each resolving through LocalDNS
or HTTPDNS (``--httpdns-share``), loading the item page and its image from the CDN edge
the GSLB gave them, and ordering over HTTPS through the gateway (services/phone.py).

Closed loop by default (``--concurrency`` phones, each starting a new visit when the last
one ends). With ``--rate R`` arrivals are open-loop: visit *i* is due at start + i/R, and
its latency counts from that moment even when every phone was still busy, so a slow
system cannot hide its queueing (no coordinated omission). Always bounded by ``--orders``
(visits) and ``--duration`` (seconds).

The report: totals, throughput, latency percentiles per step and per protocol, outcomes,
CDN hit ratio per tier (from the cache nodes' own stats), GSLB placement (which edge and
which entry address each ISP/region got, by LocalDNS and by HTTPDNS), the audit, and the
trace ids of the slowest order and of a sample one. ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.table import Table

from infra import topology as topo
from infra.config import LAB_ADMIN_TOKEN, Settings
from infra.launcher import run_dir
from infra.pki import pki_dir
from infra.telemetry import setup_tracing
from services.phone import PLACES, Journey, Phone, order_body
from services.wires import PROTOCOLS

STEPS = ("dns", "tls", "item", "cdn", "order", "read")


ADMIN_PATIENCE_S = 20.0
# A visit's attempts and retries take seconds; one still running this long after the run's
# --duration is stuck (a run once waited on one for minutes), and is cut off.
STRAGGLER_S = 60.0
RUN_OVERHEAD_S = 300.0  # the set-up and the audit, on top of the visits
# Visit outcomes that are not failures: an order, a clean "sold out", a browse.
SUCCESSES = frozenset({"ok", "sold-out", "browse"})
SETTLE_S = 15.0


class AuditError(Exception):
    """The audit could not read what it checks (no controller answered in time)."""


def stock_checks(
    start: dict[str, int], level: dict[str, int], confirmed_units: int
) -> dict[str, bool]:
    """What an item's stock must satisfy after a run that began at ``start``: no unit
    created or lost (available + reserved + sold unchanged; the database's CHECK only keeps
    each number >= 0, so this can fail where that cannot), and every unit taken from the
    shelf belongs to an order confirmed in the run (confirmed orders' units are reserved
    until their batch commits, then sold)."""

    def total(x: dict[str, int]) -> int:
        return x["available"] + x["reserved"] + x["sold"]

    taken = (level["reserved"] + level["sold"]) - (start["reserved"] + start["sold"])
    return {
        "stock conserved": total(level) == total(start),
        "units taken equal confirmed order lines": taken == confirmed_units,
    }


WINDOW_S = 5.0
_provider: Any = None  # the phones' tracer provider, set up by the first run


def windows(journeys: list[Journey], seconds: float, site_of: dict[str, str] | None = None
            ) -> list[dict[str, Any]]:  # fmt: skip
    """Visits and failures per WINDOW_S of the run, by when each visit was due, and which
    site served each region's visits (``region>site``: a failover shows as north>east)."""
    rows = []
    for n in range(int(seconds // WINDOW_S) + 1):
        inside = [j for j in journeys if n * WINDOW_S <= j.due < (n + 1) * WINDOW_S]
        if inside:
            failed = [j for j in inside if j.outcome not in SUCCESSES]
            served = Counter(f"{j.region}>{(site_of or {}).get(j.served_by, '?')}"
                             for j in inside if j.served_by)  # fmt: skip
            rows.append({"from_s": n * WINDOW_S, "visits": len(inside), "failed": len(failed),
                         "errors": dict(Counter(j.outcome for j in failed)),
                         "served": dict(sorted(served.items()))})  # fmt: skip
    return rows


def percentile(values: list[float], q: float) -> float:
    """Exact percentile (nearest rank) over every recorded value; runs are bounded, so
    keeping them all is affordable and needs no bucketing error."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else 0.0,
    }


class Run:
    def __init__(self, args: argparse.Namespace, topology: topo.Topology) -> None:
        self.args, self.topology = args, topology
        self.journeys: list[Journey] = []
        self.in_flight = 0
        self.started = 0.0
        self.rng = random.Random(args.seed)
        self.protocols = itertools.cycle(PROTOCOLS if args.protocol == "mix" else (args.protocol,))

    def controllers(self) -> list[str]:
        return [f"http://{h.endpoint}" for h in self.topology.by_role("controller")]

    async def admin_call(
        self, session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Any]:
        """An operator's call through any controller that answers: the audit must survive
        the faults it measures. Retried on network errors and 5xx for ADMIN_PATIENCE_S."""
        deadline = time.monotonic() + ADMIN_PATIENCE_S
        controllers = self.controllers()
        turn = 0
        while True:
            base = controllers[turn % len(controllers)]
            turn += 1
            try:
                async with session.request(method, base + path, **kwargs) as r:
                    if r.status < 500:
                        return r.status, await r.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AuditError(f"no controller answered {method} {path}")
            await asyncio.sleep(0.2)

    # -- phones -----------------------------------------------------------------------------
    def phones(self, ca: Path) -> list[Phone]:
        resolvers = {
            h.name.removeprefix("resolver-"): h.address for h in self.topology.by_role("resolver")
        }
        httpdns = self.topology.by_role("httpdns")[0].endpoint
        places = list(PLACES.items())
        out = []
        for n in range(self.args.concurrency):
            (isp, region), block = places[n % len(places)]
            index = n // len(places) + 1  # skip the block's network address
            if index >= block.num_addresses - 1:
                raise SystemExit(f"--concurrency {self.args.concurrency}: {block} is full")
            address = str(block[index])
            # Spread evenly, so every place gets its share of each way of resolving.
            k = n // len(places)
            share = self.args.httpdns_share
            mode = "httpdns" if (k * share) % 1.0 < share else "localdns"
            out.append(Phone(address, isp, region, mode, resolvers[isp], httpdns, ca,
                             coupon=self.args.coupon))  # fmt: skip
        return out

    def next_visit(self, phone: Phone) -> tuple[Journey, bool]:
        a = self.args
        if a.scenario == "flash-sale":
            item, order = a.hot_item, True
        elif a.scenario == "browse":
            item, order = self.rng.randint(2, 300), False
        else:  # mixed: most visits browse and buy something, some go for the hot item
            hot = self.rng.random() < 0.3
            item, order = (a.hot_item if hot else self.rng.randint(2, 300)), True
        journey = Journey(phone.address, phone.isp, phone.region, phone.mode,
                          next(self.protocols), item)  # fmt: skip
        return journey, order

    # -- driving ------------------------------------------------------------------------------
    async def drive(self, phones: list[Phone]) -> None:
        """The visits, bounded in time whatever a phone does: a visit still running
        STRAGGLER_S after --duration is cut off and counted as failed ("unfinished")."""
        try:
            async with asyncio.timeout(self.args.duration + STRAGGLER_S):
                await self._drive(phones)
        except TimeoutError:
            cut = sum(j.outcome == "unfinished" for j in self.journeys)
            print(f"load: {cut} visit(s) still running {STRAGGLER_S:.0f} s after --duration;"
                  " cut off and counted as failed", file=sys.stderr)  # fmt: skip

    async def _drive(self, phones: list[Phone]) -> None:
        a = self.args
        deadline = time.monotonic() + a.duration
        self.started = time.monotonic()
        if a.rate:
            idle: asyncio.Queue[Phone] = asyncio.Queue()
            for p in phones:
                idle.put_nowait(p)
            tasks = []
            for i in range(a.orders):
                due = self.started + i / a.rate
                if due > deadline:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(self._open_visit(idle, due)))
            await asyncio.gather(*tasks)
            return
        remaining = itertools.count()

        async def worker(phone: Phone) -> None:
            while next(remaining) < a.orders and time.monotonic() < deadline:
                await self._visit(phone, time.monotonic())

        await asyncio.gather(*(worker(p) for p in phones))

    async def _open_visit(self, idle: asyncio.Queue[Phone], due: float) -> None:
        phone = await idle.get()
        try:
            await self._visit(phone, due)
        finally:
            idle.put_nowait(phone)

    async def _visit(self, phone: Phone, due: float) -> None:
        journey, order = self.next_visit(phone)
        self.in_flight += 1
        try:
            await phone.purchase(journey, order=order)
        except asyncio.CancelledError:  # drive()'s bound
            journey.outcome = "unfinished"
            journey.error = f"still running {STRAGGLER_S:.0f} s after the run's --duration"
            raise
        finally:
            self.in_flight -= 1
            journey.due = due - self.started
            journey.total = time.monotonic() - due  # from when it was due: queueing counts
            self.journeys.append(journey)

    def live(self) -> Table:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done = self.journeys
        orders = [j for j in done if j.outcome == "ok"]
        errors = Counter(j.outcome for j in done if j.outcome not in SUCCESSES)
        totals = [j.total for j in done[-2000:]]
        t = Table(title="Double-11 load", show_header=True)
        for col in ("visits", "orders ok", "orders/s", "in flight", "p50 ms", "p99 ms", "errors"):
            t.add_column(col, justify="right")
        t.add_row(
            str(len(done)), str(len(orders)), f"{len(orders) / elapsed:.1f}", str(self.in_flight),
            f"{percentile(totals, 50) * 1000:.0f}", f"{percentile(totals, 99) * 1000:.0f}",
            ", ".join(f"{k} {v}" for k, v in errors.most_common(3)) or "0",
        )  # fmt: skip
        return t

    # -- before and after -----------------------------------------------------------------------
    async def admin(self, session: aiohttp.ClientSession, item: int, stock: int) -> None:
        status, _ = await self.admin_call(
            session, "PUT", f"/api/admin/items/{item}/stock", json={"available": stock},
            headers={"X-Admin-Token": LAB_ADMIN_TOKEN},
        )  # fmt: skip
        if status != 200:
            raise SystemExit(f"could not set the stock of item {item}: HTTP {status}")

    async def stock_level(self, session: aiohttp.ClientSession, item: int) -> dict[str, int]:
        status, body = await self.admin_call(
            session, "GET", f"/api/admin/items/{item}/stock",
            headers={"X-Admin-Token": LAB_ADMIN_TOKEN},
        )  # fmt: skip
        if status != 200:
            raise AuditError(f"stock level of item {item}: HTTP {status}")
        return body

    async def cdn_stats(self, session: aiohttp.ClientSession) -> dict[str, dict]:
        out = {}
        for host in self.topology.by_role("cdn-cache"):
            try:
                async with session.get(f"http://{host.endpoint}/_cdn/stats") as r:
                    out[host.name] = await r.json()
            except (aiohttp.ClientError, TimeoutError):
                continue
        return out

    async def audit(
        self, session: aiohttp.ClientSession, before: dict[int, dict[str, int]]
    ) -> dict[str, Any]:
        """Read back from the services: every acknowledged order is there and confirmed,
        keys are not reused, units sold equal confirmed order lines, nothing oversold."""
        acknowledged = [j for j in self.journeys if j.status in (200, 201) and j.order_id]
        sem = asyncio.Semaphore(32)

        async def present(j: Journey) -> bool:
            async with sem:
                status, body = await self.admin_call(session, "GET", f"/api/orders/{j.order_id}")
            return status == 200 and body.get("status") == "CONFIRMED"

        found = await asyncio.gather(*(present(j) for j in acknowledged))
        missing = [j.order_id for j, ok in zip(acknowledged, found, strict=True) if not ok]
        by_key = Counter(j.key for j in acknowledged)
        by_order = Counter(j.order_id for j in acknowledged)
        # Replaying a sample of keys must give the same order back and take no more stock.
        replays_ok = 0
        sample = acknowledged[: min(20, len(acknowledged))]
        for j in sample:
            body = order_body(f"phone-{j.phone}", j.item_id, self.args.coupon)
            status, answer = await self.admin_call(
                session, "POST", "/api/orders", json=body,
                headers={"Idempotency-Key": j.key, "X-Order-Protocol": j.protocol},
            )  # fmt: skip
            replays_ok += status in (200, 201) and answer.get("order_id") == j.order_id
        units: dict[int, int] = defaultdict(int)
        for j, ok in zip(acknowledged, found, strict=True):
            if ok:
                units[j.item_id] += j.quantity
        items = {}
        for item, initial in before.items():
            # Settled: nothing left reserved by an order that is neither confirmed nor gone
            # (the sweepers pay what crashes left owed), or out of patience.
            settle_by = time.monotonic() + SETTLE_S
            while True:
                level = await self.stock_level(session, item)
                check = stock_checks(initial, level, units.get(item, 0))
                if all(check.values()) or time.monotonic() > settle_by:
                    break
                await asyncio.sleep(0.5)
            items[item] = {"stock_before": initial["available"], **level,
                           "confirmed_units": units.get(item, 0), "checks": check}  # fmt: skip
        ordering = self.args.scenario != "browse" and any(
            v["available"] > 0 for v in before.values()
        )
        checks = {
            # A run where nothing got through must not pass for want of anything to check.
            "orders went through": bool(acknowledged) or not ordering,
            "every acknowledged order present and confirmed": not missing,
            "one order per idempotency key": all(c == 1 for c in by_key.values())
            and all(c == 1 for c in by_order.values()),
            "replayed keys return the same order": replays_ok == len(sample),
            "units taken equal confirmed order lines": all(
                v["checks"]["units taken equal confirmed order lines"] for v in items.values()
            ),
            "stock conserved (available + reserved + sold = the start)": all(
                v["checks"]["stock conserved"] for v in items.values()
            ),
        }
        return {"passed": all(checks.values()), "checks": checks, "items": items,
                "acknowledged": len(acknowledged), "missing": missing[:10],
                "replayed": len(sample)}  # fmt: skip

    # -- the report -------------------------------------------------------------------------
    def report(self, elapsed: float, cdn_before: dict, cdn_after: dict, audit: dict) -> dict:
        js = self.journeys
        # The site that served each visit: the gateway named in X-Served-By, by the topology.
        site_of = {h.name: h.site for h in self.topology.by_role("gateway")}
        by_region: dict[str, Counter] = defaultdict(Counter)
        for j in js:
            if j.served_by:
                by_region[j.region][site_of.get(j.served_by, "?")] += 1
        ok = [j for j in js if j.outcome == "ok"]
        failed = [j for j in js if j.outcome not in SUCCESSES]
        steps = {s: summary([j.steps[s] for j in js if s in j.steps]) for s in STEPS}
        per_protocol = {
            p: {**summary([j.total for j in ok if j.protocol == p]),
                "order": summary([j.steps["order"] for j in ok if j.protocol == p])}
            for p in sorted({j.protocol for j in js if j.status})
        }  # fmt: skip
        tiers: dict[str, Counter] = defaultdict(Counter)
        for name, after in cdn_after.items():
            before = cdn_before.get(name, {})
            for k in ("hit", "miss", "stale", "revalidated", "expired"):
                tiers[after["tier"]][k] += after.get(k, 0) - before.get(k, 0)
        cdn = {}
        for tier, c in tiers.items():
            served = sum(c.values())
            hits = c["hit"] + c["stale"] + c["revalidated"]
            cdn[tier] = {**c, "hit_ratio": round(hits / served, 4) if served else None}
        placement: dict[str, Counter] = defaultdict(Counter)
        for j in js:
            if j.edge:
                placement[f"{j.isp}/{j.region}/{j.mode}"][
                    f"edge {j.edge}, api {j.api_address}"
                ] += 1
        traced = [j for j in ok if j.sampled]  # a trace id worth printing is one recorded
        slowest = max(traced, key=lambda j: j.steps.get("order", 0), default=None)
        sample = traced[len(traced) // 2] if traced else None
        slow = sample_ref = None
        if slowest is not None:
            slow = {"trace_id": slowest.trace_id, "order_id": slowest.order_id,
                    "order_ms": round(slowest.steps["order"] * 1000, 1)}  # fmt: skip
        if sample is not None:
            sample_ref = {"trace_id": sample.trace_id, "order_id": sample.order_id}
        return {
            "scenario": self.args.scenario,
            "trace_ratio": self.args.trace_ratio,
            "visits": len(js),
            "orders_ok": len(ok),
            "seconds": round(elapsed, 2),
            "orders_per_s": round(len(ok) / elapsed, 1) if elapsed else 0.0,
            "visits_per_s": round(len(js) / elapsed, 1) if elapsed else 0.0,
            "latency": summary([j.total for j in js]),
            "steps": steps,
            "protocols": per_protocol,
            "outcomes": dict(Counter(j.outcome for j in js)),
            "failed": len(failed),
            "failed_share": round(len(failed) / len(js), 5) if js else 0.0,
            "errors": first_errors(failed),
            "retries": sum(j.retries for j in js),
            "visits_retried": sum(1 for j in js if j.retries),
            "dns_fallbacks": sum(j.fallbacks for j in js),
            "windows": windows(js, elapsed, site_of),
            "sites": dict(sum(by_region.values(), Counter())),
            "sites_by_region": {r: dict(c) for r, c in sorted(by_region.items())},
            "statuses": dict(Counter(str(j.status) for j in js if j.status)),
            "cdn": cdn,
            "cdn_at_phone": dict(Counter(j.cdn_cache for j in js if j.cdn_cache)),
            "placement": {k: dict(v) for k, v in sorted(placement.items())},
            "audit": audit,
            "slowest_order": slow,
            "sample_order": sample_ref,
        }  # fmt: skip


def first_errors(failed: list[Journey], per_outcome: int = 3) -> dict[str, list[str]]:
    """A few distinct messages per failure outcome: what to look at first."""
    seen: dict[str, list[str]] = {}
    for j in failed:
        messages = seen.setdefault(j.outcome, [])
        if j.error and j.error not in messages and len(messages) < per_outcome:
            messages.append(j.error)
    return seen


def print_report(r: dict, console: Console) -> None:
    console.print(
        f"[bold]{r['scenario']}[/]: {r['visits']} visits, {r['orders_ok']} orders in "
        f"{r['seconds']} s: [bold]{r['orders_per_s']} orders/s[/], {r['visits_per_s']} visits/s"
    )
    t = Table(title="latency per step (ms)")
    for col in ("step", "count", "p50", "p90", "p99", "max"):
        t.add_column(col, justify="right")
    for name, s in [("visit", r["latency"]), *r["steps"].items()]:
        t.add_row(
            name,
            str(s["count"]),
            *(f"{s[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
        )
    console.print(t)
    t = Table(title="per protocol (confirmed orders)")
    for col in ("protocol", "orders", "visit p50", "visit p99", "order p50", "order p99"):
        t.add_column(col, justify="right")
    for p, s in r["protocols"].items():
        t.add_row(p, str(s["count"]), f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}",
                  f"{s['order']['p50_ms']:.1f}", f"{s['order']['p99_ms']:.1f}")  # fmt: skip
    console.print(t)
    console.print("outcomes: " + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()))
    served = "; ".join(f"{region} → " + ", ".join(f"{site} {n}" for site, n in sites.items())
                       for region, sites in r["sites_by_region"].items())  # fmt: skip
    console.print(f"served by site (the phone's region → the site): {served or '-'}")
    console.print(f"failed visits: {r['failed']} ({r['failed_share']:.2%}); retries: "
                  f"{r['retries']} (in {r['visits_retried']} visits); HTTPDNS → LocalDNS "
                  f"fallbacks: {r['dns_fallbacks']}")  # fmt: skip
    for outcome, messages in r["errors"].items():
        for message in messages:
            console.print(f"  {outcome}: {message}", markup=False, highlight=False)
    console.print("order statuses: " + ", ".join(f"{k} {v}" for k, v in r["statuses"].items()))
    t = Table(title="CDN by tier (this run)")
    for col in ("tier", "hit", "miss", "stale", "revalidated", "expired", "hit ratio"):
        t.add_column(col, justify="right")
    for tier, c in r["cdn"].items():
        ratio = "-" if c["hit_ratio"] is None else f"{c['hit_ratio']:.1%}"
        t.add_row(
            tier,
            *(str(c.get(k, 0)) for k in ("hit", "miss", "stale", "revalidated", "expired")),
            ratio,
        )
    console.print(t)
    t = Table(title="GSLB placement")
    t.add_column("ISP / region / resolution")
    t.add_column("answered with")
    for place, answers in r["placement"].items():
        t.add_row(place, "; ".join(f"{k} ×{v}" for k, v in answers.items()))
    console.print(t)
    audit = r["audit"]
    verdict = "[green]PASSED[/]" if audit["passed"] else "[red]FAILED[/]"
    console.print(f"audit {verdict}: {audit['acknowledged']} acknowledged orders")
    if audit.get("error"):
        console.print(f"  [red]{audit['error']}[/]")
    for check, passed in audit["checks"].items():
        console.print(f"  {'✓' if passed else '✗'} {check}")
    for item, v in audit["items"].items():
        console.print(f"  item {item}: available {v['stock_before']} → {v['available']}, "
                      f"reserved {v['reserved']}, sold {v['sold']}, "
                      f"confirmed units {v['confirmed_units']}")  # fmt: skip
    # In a container the viewer is the host's published one (compose.yaml), not ./d11's.
    docker = os.environ.get("D11_MODE") == "docker"

    def see(trace_id: str) -> str:
        return f"http://localhost:16686/traces/{trace_id}" if docker else f"./d11 trace {trace_id}"

    if r["slowest_order"]:
        s = r["slowest_order"]
        console.print(f"slowest order {s['order_id']} ({s['order_ms']} ms): {see(s['trace_id'])}")
    if r["sample_order"]:
        sample = r["sample_order"]
        console.print(f"sample order {sample['order_id']}: {see(sample['trace_id'])}")


def dump_tasks() -> None:
    """SIGUSR1: where every task waits, on stderr, for a load that seems stuck (`kill
    -USR1`). The chain of awaits down to the innermost one (a task's own stack shows only
    its outermost coroutine)."""
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}:", file=sys.stderr)
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                code = frame.f_code
                print(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    sys.stderr.flush()


async def main_async(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    # The whole run is bounded too (the set-up and the audit retry for a while): past the
    # bound it prints where each task waits and gives up, rather than hanging its caller.
    limit = args.duration + STRAGGLER_S + RUN_OVERHEAD_S
    main = asyncio.current_task()
    assert main is not None

    def give_up() -> None:
        print(f"load: still running {limit:.0f} s after it began; its tasks:", file=sys.stderr)
        dump_tasks()
        main.cancel()

    timer = loop.call_later(limit, give_up)
    try:
        report = await execute(args)
    except asyncio.CancelledError:
        print(f"load: gave up after {limit:.0f} s", file=sys.stderr)
        return 2
    finally:
        timer.cancel()
    report.pop("journeys")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, Console())
    return 0 if report["audit"]["passed"] else 1


async def execute(args: argparse.Namespace, *, live: bool | None = None) -> dict[str, Any]:
    """One audited run; the report as a dict (``./d11 chaos`` runs it beside its faults)."""
    topology = topo.load()
    ca = pki_dir(os.environ, run_dir()) / "ca.crt"
    if not ca.exists():
        raise SystemExit(f"no lab CA at {ca}: start the stack with ./d11 up first")
    collector = topology.by_role("collector")
    if collector and not os.environ.get("OTEL_SDK_DISABLED"):
        os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{collector[0].endpoint}")
        os.environ.setdefault("OTEL_SERVICE_NAME", "phone")
        if args.trace_ratio < 1:
            # Head sampling at the phone, where traces start; every service behind follows
            # the phone's decision (the SDK's default sampler is parent-based).
            os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(args.trace_ratio)
    settings = Settings(
        name="phone", role="client", address="127.100.0.1", port=0, env=dict(os.environ)
    )
    global _provider
    if _provider is None:  # once per process: ./d11 chaos runs several loads
        _provider = setup_tracing(settings)
    run = Run(args, topology)
    console = Console(stderr=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as admin:
        before: dict[int, dict[str, int]] = {}
        if args.scenario in ("flash-sale", "mixed"):
            prior = await run.stock_level(admin, args.hot_item)
            await run.admin(admin, args.hot_item, args.stock)
            before[args.hot_item] = await run.stock_level(admin, args.hot_item)
            if prior["available"] < before[args.hot_item]["available"]:
                # Restocked: an order service that saw the item sold out refuses it without
                # asking the inventory for SOLD_OUT_HINT seconds; the phones start after that.
                await asyncio.sleep(settings.get_float("SOLD_OUT_HINT", 1.0))
        cdn_before = await run.cdn_stats(admin)
        phones = run.phones(ca)
        try:
            started = time.monotonic()
            if args.json or live is False:
                await run.drive(phones)
            else:
                # The table is drawn at each refresh (4 a second), not after every visit.
                with Live(get_renderable=run.live, console=console, refresh_per_second=4):
                    await run.drive(phones)
            elapsed = time.monotonic() - started
        finally:
            await asyncio.gather(*(p.close() for p in phones))
        cdn_after = await run.cdn_stats(admin)
        # Mixed: other items get many orders from ample stock; the hot item is audited.
        try:
            audit = await run.audit(admin, before)
        except AuditError as exc:  # reported, never a traceback in place of the report
            audit = {"passed": False, "error": str(exc), "checks": {}, "items": {},
                     "acknowledged": 0, "missing": [], "replayed": 0}  # fmt: skip
    report = run.report(elapsed, cdn_before, cdn_after, audit)
    report["journeys"] = run.journeys  # for a caller's own analysis; not printed
    if _provider is not None:
        _provider.force_flush()
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d11 load", description=__doc__.split("\n")[0])
    p.add_argument("--orders", type=int, default=500, help="visits to make (each may order)")
    p.add_argument("--concurrency", type=int, default=64, help="phones")
    p.add_argument("--duration", type=float, default=120.0, help="stop after this many seconds")
    p.add_argument("--rate", type=float, default=0.0, help="open-loop arrivals per second")
    p.add_argument("--protocol", choices=[*PROTOCOLS, "mix"], default="mix")
    p.add_argument("--scenario", choices=["browse", "flash-sale", "mixed"], default="flash-sale")
    p.add_argument("--hot-item", type=int, default=1)
    p.add_argument("--stock", type=int, default=100, help="the hot item's stock at the start")
    p.add_argument(
        "--trace-ratio",
        type=float,
        default=1.0,
        help="share of visits traced (head sampling at the phone; default all)",
    )
    p.add_argument("--coupon", default="", help="a coupon code every order redeems")
    p.add_argument("--httpdns-share", type=float, default=0.5, help="phones using HTTPDNS")
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.orders < 1 or args.concurrency < 1 or args.duration <= 0:
        raise SystemExit("--orders, --concurrency and --duration must be positive")
    if not 0 <= args.trace_ratio <= 1:
        raise SystemExit("--trace-ratio is a share between 0 and 1")
    if args.concurrency > 1000:
        raise SystemExit("--concurrency is at most 1000 (phone addresses per subnet)")
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
