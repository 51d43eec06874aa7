"""The protocol shootout: the same PlaceOrder over SOAP, Dubbo and gRPC, against the same
no-op backend (``D11_ORDER_BACKEND=noop``: validation and pricing, no saga), through the
very clients the controller uses. Tracing is off, so the wire is what is measured.

For each protocol: calls/s and p50/p99 at concurrency 1 and 64, and bytes on the wire per
call (request + response, every header and frame included), counted by a TCP relay the
client talks through. Bounded: ``--calls`` per run and ``--max-seconds``.

    .venv/bin/python -m bench.rpc --calls 3000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from infra.launcher import Launcher
from infra.topology import load
from services.order_api import Line, PlaceOrder
from services.wires import WIRES

# One host per wire, on its own address; the health probe by the wire's transport.
PORTS = {"grpc": (50051, "grpc"), "dubbo": (20880, "dubbo"), "soap": (8081, "http"),
         "oncrpc": (20049, "oncrpc")}  # fmt: skip
HOSTS = {
    name: (wire.module, wire.role, f"127.10.7.{31 + i}", *PORTS[name])
    for i, (name, wire) in enumerate(WIRES.items())
}
REQUEST = PlaceOrder("bench", "bench-user", (Line(7, 2), Line(8, 1)))


def topology_file(directory: Path) -> Path:
    hosts = [
        {
            "name": f"bench-{protocol}",
            "role": role,
            "address": address,
            "port": port,
            "protocol": probe,
            "module": module,
            "env": {
                "D11_ORDER_BACKEND": "noop",
                "D11_PORTMAP_PORT": "10111",  # the benchmark needs no privileged port
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_SDK_DISABLED": "true",
            },
        }
        for protocol, (module, role, address, port, probe) in HOSTS.items()
    ]
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump({"hosts": hosts}))
    return path


class RawSoapClient:
    """The SOAP server's own capacity: a prebuilt envelope posted with aiohttp, the reply's
    status checked and its body read (not parsed). Shown beside zeep's row."""

    BODY = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        b'xmlns:d="urn:double11:order:v1"><s:Body><d:PlaceOrder>'
        b"<d:idempotencyKey>bench</d:idempotencyKey><d:userId>bench-user</d:userId>"
        b"<d:line><d:itemId>7</d:itemId><d:quantity>2</d:quantity></d:line>"
        b"<d:line><d:itemId>8</d:itemId><d:quantity>1</d:quantity></d:line>"
        b"</d:PlaceOrder></s:Body></s:Envelope>"
    )

    def __init__(self, target: str) -> None:
        self.url = f"http://{target}/soap/order"
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def stop(self, grace: float) -> None:
        if self.session is not None:
            await self.session.close()

    async def place(self, request: Any, *, timeout: float) -> None:
        assert self.session is not None
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        async with self.session.post(self.url, data=self.BODY, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"SOAP status {r.status}")


def client(protocol: str, target: str) -> Any:
    """The wire's own client (the order contract), or the raw SOAP poster."""
    if protocol == "soap-raw":
        return RawSoapClient(target)
    return WIRES[protocol].load().Client(target, 10.0)


class Relay:
    """A TCP relay that counts the bytes both ways."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.bytes = upstream, 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.10.7.99", 0)
        return f"127.10.7.99:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                self.bytes += len(data)
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def run(protocol: str, target: str, calls: int, concurrency: int, limit: float):
    c = client(protocol, target)
    await c.start()
    try:
        await c.place(REQUEST, timeout=10.0)  # warm up: connections, WSDL, channels
        latencies: list[float] = []
        remaining = calls
        stop_at = time.monotonic() + limit

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and time.monotonic() < stop_at:
                remaining -= 1
                started = time.perf_counter()
                await c.place(REQUEST, timeout=10.0)
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        took = time.perf_counter() - began
    finally:
        await c.stop(1)
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / took, q[49] * 1e3, q[98] * 1e3


async def wire_bytes(protocol: str, address: str, port: int, calls: int = 200) -> float:
    relay = Relay((address, port))
    target = await relay.start()
    c = client(protocol, target)
    await c.start()
    try:
        await c.place(REQUEST, timeout=10.0)
        relay.bytes = 0  # connection set-up and warm-up not counted
        for _ in range(calls):
            await c.place(REQUEST, timeout=10.0)
    finally:
        await c.stop(1)
        await asyncio.sleep(0.1)  # let the relay's pumps see the connections close
        relay.close()
    return relay.bytes / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--max-seconds", type=float, default=60)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Launcher(load(topology_file(Path(tmp))), Path(tmp) / "run")
        os.environ["OTEL_SDK_DISABLED"] = "true"  # the clients here trace nothing either
        launcher.up(timeout=30)
        try:
            rows = {}
            runs = [(p, h[2], h[3]) for p, h in HOSTS.items()]
            runs.insert(
                list(HOSTS).index("soap") + 1, ("soap-raw", HOSTS["soap"][2], HOSTS["soap"][3])
            )
            for protocol, address, port in runs:
                target = f"{address}:{port}"
                one = asyncio.run(run(protocol, target, min(args.calls, 1000), 1, args.max_seconds))
                many = asyncio.run(run(protocol, target, args.calls, 64, args.max_seconds))
                size = asyncio.run(wire_bytes(protocol, address, port))
                rows[protocol] = (one, many, size)
        finally:
            launcher.down()
    grpc_rate = rows["grpc"][1][0]
    print(
        f"{'protocol':8} {'c=1 calls/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'c=64 calls/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'bytes/call':>10} {'vs gRPC':>8}"
    )
    for protocol, (one, many, size) in rows.items():
        print(
            f"{protocol:8} {one[0]:11.0f} {one[1]:7.2f} {one[2]:7.2f} {many[0]:12.0f} "
            f"{many[1]:7.2f} {many[2]:7.2f} {size:10.0f} {many[0] / grpc_rate:7.2f}x"
        )


if __name__ == "__main__":
    main()
