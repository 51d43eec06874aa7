"""Orders per second through the order path, and what it costs.

Drives ``POST /api/orders`` against the stack that ``./d11 up`` started, through the
gateway (default) or straight at one controller, with a protocol per request
(``X-Order-Protocol``). Closed loop: ``--concurrency`` clients, bounded by ``--orders``
and ``--max-seconds``. The item gets enough stock first (admin API), so every order is a
full saga: reserve stock, (coupon,) persist, confirm, group-commit.

Prints orders/s, latency percentiles, CPU seconds per service (from /proc) and the
stack's resident memory.

    ./d11 up --detach && .venv/bin/python -m bench.orders --orders 3000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from pathlib import Path

import aiohttp

from infra import topology
from infra.config import LAB_ADMIN_TOKEN
from infra.launcher import Launcher
from infra.procs import group_members


def cpu_ticks(pgid: int) -> int:
    total = 0
    for pid in group_members(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


async def drive(url: str, args: argparse.Namespace) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = args.orders
    stop_at = time.monotonic() + args.max_seconds
    body = {"user_id": "bench", "lines": [{"item_id": args.item, "quantity": 1}]}
    if args.coupon:
        body["coupon_code"] = args.coupon
    headers = {"X-Order-Protocol": args.protocol}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal remaining
            while remaining > 0 and time.monotonic() < stop_at:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(
                    url, json=body, headers={**headers, "Idempotency-Key": secrets.token_hex(12)}
                ) as r:
                    await r.read()
                latencies.append(time.perf_counter() - started)
                statuses[r.status] = statuses.get(r.status, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        return latencies, statuses, time.perf_counter() - began


async def set_stock(controller: str, item: int, available: int) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"http://{controller}/api/admin/items/{item}/stock",
            json={"available": available},
            headers={"X-Admin-Token": LAB_ADMIN_TOKEN},
        ) as r,
    ):
        r.raise_for_status()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--orders", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-seconds", type=float, default=120)
    p.add_argument("--protocol", default="grpc")
    p.add_argument("--via", choices=["gateway", "controller"], default="gateway")
    p.add_argument("--item", type=int, default=30)
    p.add_argument("--coupon", default="", help="e.g. D11-10PCT (3 uses per user)")
    args = p.parse_args()

    topo = topology.load()
    controller = topo.by_role("controller")[0].endpoint
    entry = topo.by_role("gateway")[0].endpoint if args.via == "gateway" else controller
    asyncio.run(set_stock(controller, args.item, 10_000_000))
    launcher = Launcher(topo)
    running = launcher.running()
    before = {name: cpu_ticks(r.pid) for name, r in running.items()}
    latencies, statuses, took = asyncio.run(drive(f"http://{entry}/api/orders", args))
    spent = {name: (cpu_ticks(r.pid) - before[name]) / 100 for name, r in running.items()}
    rows = launcher.status()  # hosts sharing a process report it once each: count it once
    rss = sum({row["pid"]: row["rss_bytes"] for row in rows if row["pid"]}.values())

    q = statistics.quantiles(sorted(latencies), n=100)
    done = len(latencies)
    print(
        f"orders {done}  via {args.via}  protocol {args.protocol}  concurrency {args.concurrency}"
    )
    print(f"statuses {dict(sorted(statuses.items()))}")
    print(f"throughput {done / took:.0f} orders/s")
    print(f"latency ms  p50 {q[49] * 1e3:.1f}  p90 {q[89] * 1e3:.1f}  p99 {q[98] * 1e3:.1f}")
    print(
        "CPU ms per order:  "
        + "  ".join(
            f"{name} {spent[name] * 1000 / done:.2f}"
            for name in sorted(spent, key=spent.get, reverse=True)
            if spent[name] > 0
        )
    )
    print(f"stack RSS {rss / 2**20:.0f} MiB over {len(running)} processes")


if __name__ == "__main__":
    main()
