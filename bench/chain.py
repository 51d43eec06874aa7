"""The whole chain, phone to database: ``./d11 load`` against the running stack, and what
every process spent on it.

Runs the load script (its arguments pass through) as a subprocess, and reads each
service's CPU time from /proc before and after, and the load generator's own from its
rusage: so the table shows where a visit's CPU goes on this 2-core machine, phones
included. Then the stack's memory (RSS and PSS, as ``./d11 status`` prints them).

    ./d11 up --detach
    .venv/bin/python -m bench.chain --scenario mixed --orders 900 --concurrency 64 \\
        --protocol grpc --stock 100000 --trace-ratio 1
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from bench.orders import cpu_ticks
from infra import topology
from infra.launcher import Launcher


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    topo = topology.load()
    launcher = Launcher(topo)
    running = launcher.running()
    if not running:
        raise SystemExit("no stack: ./d11 up --detach first")
    # One row per process: a shared one (the DNS servers, the CDN's nodes) by its name.
    pids = {r.pid: topo.host(name).group for name, r in running.items()}
    before = {pid: cpu_ticks(pid) for pid in pids}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-m", "infra", "load", *argv, "--json"],
        capture_output=True, text=True, env=dict(os.environ),
    )  # fmt: skip
    if result.returncode not in (0, 1):
        raise SystemExit(f"load failed ({result.returncode}): {result.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(result.stdout)
    visits = report["visits"]
    spent = {pids[pid]: (cpu_ticks(pid) - before[pid]) / 100 for pid in pids}
    spent["(phones: the load generator)"] = (after.ru_utime - children.ru_utime) + (
        after.ru_stime - children.ru_stime
    )
    lat = report["latency"]
    audit = "passed" if report["audit"]["passed"] else "FAILED"
    print(f"{report['scenario']}: {visits} visits, {report['orders_ok']} orders in "
          f"{report['seconds']} s: {report['orders_per_s']} orders/s, visit p50 "
          f"{lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, trace ratio "
          f"{report['trace_ratio']}, audit {audit}")  # fmt: skip
    total = sum(spent.values())
    print(f"CPU per visit: {total * 1000 / visits:.1f} ms in all, on 2 cores:")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        if seconds > 0:
            share = seconds / total * 100
            print(f"  {name:32} {seconds * 1000 / visits:6.2f} ms  {share:4.1f} %")
    rows = launcher.status()
    rss = sum({r["pid"]: r["rss_bytes"] for r in rows if r["pid"]}.values())
    pss = sum({r["pid"]: r["pss_bytes"] for r in rows if r["pid"]}.values())
    print(f"stack memory: RSS {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB "
          f"({len(set(pids))} processes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
