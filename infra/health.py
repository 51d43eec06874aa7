"""Health probes by protocol, as an outside checker (launcher, status, tests) runs them.

Conventions: HTTP services answer ``GET /healthz`` with 200; gRPC services run the standard
``grpc.health.v1.Health`` service; Dubbo servers answer a heartbeat; DNS servers answer
an SOA query for the root over UDP (any rcode: an answer is life).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infra import healthcheck
from infra.topology import Host

Probe = Callable[[Host, float], Awaitable[bool]]


async def probe_http(host: Host, timeout: float) -> bool:
    url = f"http://{host.endpoint}/healthz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


def _grpc_health(endpoint: str, timeout: float) -> bool:
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def probe_grpc(host: Host, timeout: float) -> bool:
    """grpcio's synchronous stub in a worker thread, not ``grpc.aio``: an aio channel
    belongs to the loop it was made on, and ``./d11 chaos`` probes from two threads' loops
    at once (its recovery probes beside the launcher's during ``up --site``), which aborted
    the process (SIGABRT) in CI."""
    try:
        return await asyncio.to_thread(_grpc_health, host.endpoint, timeout)
    except (grpc.RpcError, OSError):
        return False


async def probe_dubbo(host: Host, timeout: float) -> bool:
    """A Dubbo heartbeat (two-way event) must come back as an event response (the
    container check's own probe, raw bytes, off the event loop)."""
    return await _blocking(healthcheck.dubbo, host)


async def probe_dns(host: Host, timeout: float) -> bool:
    import os
    import socket
    import struct

    qid = int.from_bytes(os.urandom(2), "big")
    # id, RD clear, one question: ". SOA IN"
    query = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 6, 1)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host.address else socket.AF_INET,
                         socket.SOCK_DGRAM)  # fmt: skip
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host.address, host.port))
        await loop.sock_sendall(sock, query)
        async with asyncio.timeout(timeout):
            reply = await loop.sock_recv(sock, 4096)
        return (
            len(reply) >= 12 and struct.unpack_from("!H", reply)[0] == qid and bool(reply[2] & 0x80)
        )
    except (OSError, TimeoutError):
        return False
    finally:
        sock.close()


async def probe_nat(host: Host, timeout: float) -> bool:
    """A NAT gateway is alive while its public entry takes connections (DNATed behind it)."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host.address, host.port)
        writer.close()
        return True
    except (OSError, TimeoutError):
        return False


async def probe_oncrpc(host: Host, timeout: float) -> bool:
    """A NULL call answered (the container check's own probe, off the event loop)."""
    return await _blocking(healthcheck.oncrpc, host)


async def _blocking(check: Callable[[str, int], bool], host: Host) -> bool:
    try:
        return await asyncio.to_thread(check, host.address, host.port)
    except (OSError, ValueError):
        return False


PROBES: dict[str, Probe] = {
    "http": probe_http,
    "grpc": probe_grpc,
    "dubbo": probe_dubbo,
    "dns": probe_dns,
    "nat": probe_nat,
    "oncrpc": probe_oncrpc,
}


async def probe(host: Host, timeout: float = 1.0) -> bool:
    check = PROBES.get(host.protocol)
    if check is None:
        return False
    try:
        return await asyncio.wait_for(check(host, timeout), timeout + 0.5)
    except TimeoutError:
        return False


async def probe_all(hosts: list[Host], timeout: float = 1.0) -> dict[str, bool]:
    results = await asyncio.gather(*(probe(h, timeout) for h in hosts))
    return {h.name: ok for h, ok in zip(hosts, results, strict=True)}
