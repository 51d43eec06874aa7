"""Order placement through the walking skeleton (gateway -> controller -> order-grpc).

A baseline with no outside peer yet: closed-loop clients, bounded in count and time, against
the stack that ``./d11 up`` started (start it first). Prints orders/s and latency percentiles.

    .venv/bin/python -m bench.skeleton --orders 3000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

import aiohttp

from infra import topology


async def run(url: str, orders: int, concurrency: int, deadline_s: float) -> None:
    latencies: list[float] = []
    errors = 0
    remaining = orders
    stop_at = time.monotonic() + deadline_s
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0 and time.monotonic() < stop_at:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(
                    url,
                    json={"user_id": "bench", "lines": [{"item_id": 30, "quantity": 1}]},
                    headers={"Idempotency-Key": secrets.token_hex(8)},
                ) as r:
                    await r.read()
                    if r.status != 201:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        took = time.perf_counter() - began
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    print(f"orders: {len(latencies)}  errors: {errors}  concurrency: {concurrency}")
    print(f"throughput: {len(latencies) / took:.0f} orders/s")
    p50, p99, top = q[49] * 1e3, q[98] * 1e3, latencies[-1] * 1e3
    print(f"latency ms: p50 {p50:.1f}  p99 {p99:.1f}  max {top:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--orders", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=60)
    args = p.parse_args()
    gateway = topology.load().by_role("gateway")[0]
    url = f"http://{gateway.endpoint}/api/orders"
    asyncio.run(run(url, args.orders, args.concurrency, args.max_seconds))


if __name__ == "__main__":
    main()
