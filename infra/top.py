"""``./d11 top``: per-service request rates, errors and latencies, from every service's own
Prometheus endpoint (``/metrics`` on its port, or on its ``metrics_port``), refreshed live.

Rates and latency percentiles are over the last interval: the difference of two scrapes of
``d11_requests_total`` and of the ``d11_request_duration_seconds`` histogram (a percentile is
the upper bound of the bucket it falls in, as Prometheus's ``histogram_quantile`` would
interpolate within). Errors are failures of the server, not refusals a client earned: HTTP
5xx, gRPC UNKNOWN/INTERNAL/UNAVAILABLE/DEADLINE_EXCEEDED/DATA_LOSS, Dubbo's server-side
statuses, DNS SERVFAIL.

Several processes can answer one address's /metrics in turn (the gateway's workers, each
counting its own requests): every scrape names its process (``d11_process_pid``), rates
are taken between two scrapes of the same process, and a host whose processes answer in
turn shows the sum of their latest rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.live import Live
from rich.table import Table

from infra import topology as topo

SERVER_ERRORS = frozenset(
    {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS",
     "SERVICE_ERROR", "SERVER_ERROR", "SERVER_TIMEOUT", "SERVER_THREADPOOL_EXHAUSTED_ERROR",
     "server"}
)  # fmt: skip
DNS_SERVFAIL = "2"


@dataclass
class Sample:
    at: float
    pid: int = 0  # the process that answered (d11_process_pid); 0 when it does not say
    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)  # proto, op, outcome
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count


def metrics_url(host: topo.Host) -> str | None:
    if host.metrics_port:
        return f"http://{host.address}:{host.metrics_port}/metrics"
    if host.protocol in ("http", "https"):
        return f"http://{host.endpoint}/metrics"
    return None  # DNS servers and Dubbo without a metrics port: nothing to scrape


def parse(text: str, at: float) -> Sample:
    sample = Sample(at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "d11_requests_total":
                key = (s.labels["protocol"], s.labels["operation"], s.labels["outcome"])
                sample.requests[key] = sample.requests.get(key, 0.0) + s.value
            elif s.name == "d11_request_duration_seconds_bucket":
                le = float(s.labels["le"])
                sample.buckets[le] = sample.buckets.get(le, 0.0) + s.value
            elif s.name == "d11_process_pid":
                sample.pid = int(s.value)
    return sample


def is_error(protocol: str, outcome: str) -> bool:
    if protocol == "http":
        return outcome.startswith("5")
    if protocol == "dns":
        return outcome == DNS_SERVFAIL
    return outcome in SERVER_ERRORS


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound (seconds) of the bucket holding the q-quantile of a delta histogram."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return None


def delta(new: Sample, old: Sample | None) -> dict:
    seconds = new.at - old.at if old else 0.0
    # max(0, …): the gateway's workers each keep their own counters, and two scrapes may be
    # answered by different workers.
    requests = {
        k: max(0.0, v - (old.requests.get(k, 0.0) if old else 0.0)) for k, v in new.requests.items()
    }
    buckets = {
        k: max(0.0, v - (old.buckets.get(k, 0.0) if old else 0.0)) for k, v in new.buckets.items()
    }
    total = sum(requests.values())
    errors = sum(v for (p, _, o), v in requests.items() if is_error(p, o))
    by_op: dict[str, float] = defaultdict(float)
    for (p, op, _), v in requests.items():
        by_op[f"{p} {op}"] += v
    top_ops = sorted(by_op.items(), key=lambda kv: -kv[1])[:2]
    p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
    return {
        "rps": round(total / seconds, 1) if seconds else None,
        "errors_per_s": round(errors / seconds, 2) if seconds else None,
        "requests": int(total),
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "busiest": [op for op, v in top_ops if v > 0],
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


# A process's last rate counts toward its host's for this long: several processes behind
# one address (the gateway's workers) answer scrapes in turn, each with its own counters.
WORKER_RATE_S = 10.0


class Top:
    def __init__(self, topology: topo.Topology, hosts: list[topo.Host] | None = None) -> None:
        self.hosts = topology.hosts if hosts is None else tuple(hosts)
        self.previous: dict[tuple[str, int], Sample] = {}  # (host, pid) → its last scrape
        self.rates: dict[str, dict[int, tuple[float, float, float]]] = {}  # pid → at, rps, err
        self.last_pid: dict[str, int] = {}
        self.workers: set[str] = set()  # hosts whose processes answer in turn

    def observe(self, name: str, text: str, at: float) -> dict:
        """One scrape of a host's /metrics (``text``) at ``at``: its row."""
        sample = parse(text, at)
        key = (name, sample.pid)
        row = {"state": "up", **delta(sample, self.previous.get(key))}
        self.previous[key] = sample
        self._per_host(name, sample, row)
        return row

    def _per_host(self, name: str, sample: Sample, row: dict) -> None:
        """Rates of a host with several processes: the sum of each one's latest. A host is
        taken to have several once a process answers again after another did (a restart
        only ever moves on to a new process, whose rate replaces the old one's)."""
        rates = self.rates.setdefault(name, {})
        last = self.last_pid.get(name)
        if last is not None and last != sample.pid and sample.pid in rates:
            self.workers.add(name)
        self.last_pid[name] = sample.pid
        if row["rps"] is not None:
            rates[sample.pid] = (sample.at, row["rps"], row["errors_per_s"])
        live = [r for r in rates.values() if sample.at - r[0] <= WORKER_RATE_S]
        if name in self.workers and len(live) > 1:
            row["rps"] = round(sum(r[1] for r in live), 1)
            row["errors_per_s"] = round(sum(r[2] for r in live), 2)

    async def scrape(self, session: aiohttp.ClientSession) -> dict[str, dict]:
        async def one(host: topo.Host) -> tuple[str, dict]:
            url = metrics_url(host)
            if url is None:
                return host.name, {"state": "no metrics"}
            try:
                async with session.get(url) as r:
                    text = await r.text()
            except (aiohttp.ClientError, TimeoutError, OSError):
                return host.name, {"state": "down"}
            return host.name, self.observe(host.name, text, time.monotonic())

        rows = await asyncio.gather(*(one(h) for h in self.hosts))
        return dict(rows)

    def table(self, rows: dict[str, dict]) -> Table:
        t = Table(title="Double-11 top (per service, last interval)")
        for col in ("service", "role", "state", "req/s", "err/s", "p50 ms", "p99 ms", "busiest"):
            t.add_column(col, justify="left" if col in ("service", "role", "busiest") else "right")
        for host in self.hosts:
            r = rows.get(host.name, {})
            state = r.get("state", "?")
            style = {"up": "green", "down": "red"}.get(state, "dim")
            t.add_row(
                host.name, host.role, f"[{style}]{state}[/]", fmt(r.get("rps")),
                fmt(r.get("errors_per_s"), ".2f"), fmt(r.get("p50_ms"), ".1f"),
                fmt(r.get("p99_ms"), ".1f"), ", ".join(r.get("busiest", [])),
            )  # fmt: skip
        return t


async def run(args: argparse.Namespace) -> int:
    top = Top(topo.load(args.topology))
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await top.scrape(session)  # the baseline the first interval is measured from
        if args.json:
            await asyncio.sleep(args.interval)
            print(json.dumps(await top.scrape(session), indent=2))
            return 0
        with Live(top.table({}), refresh_per_second=2) as live:
            for _ in range(args.count) if args.count else iter(int, 1):
                await asyncio.sleep(args.interval)
                live.update(top.table(await top.scrape(session)))
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
