"""A container's health check: ``python -S infra/healthcheck.py PROTOCOL`` probes the
service at ``D11_ADDRESS:D11_PORT`` and exits 0 when it answers as its protocol should.

Docker runs it every few seconds in each of the 26 containers, so it must be cheap: a
standalone file (no package, no site-packages: ``-S``) on the socket module alone, about
20 ms of CPU, where ``python -m`` with urllib took 110. The launcher's probes
(``infra.health``: aiohttp, grpcio's health service, our Dubbo codec) stay the thorough
ones. Here, gRPC services must answer our HTTP/2 preface with a SETTINGS frame, and Dubbo
servers a heartbeat with an OK event response.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

# Docker's checks allow 2 s; ./d11 chaos, timing a recovery, asks for a short one.
TIMEOUT = float(os.environ.get("D11_HEALTH_TIMEOUT") or 2.0)


def target() -> tuple[str, int]:
    address = os.environ.get("D11_ADDRESS", "127.0.0.1")
    return ("127.0.0.1" if address == "0.0.0.0" else address), int(os.environ["D11_PORT"])


def http(address: str, port: int) -> bool:
    request = f"GET /healthz HTTP/1.0\r\nHost: {address}\r\n\r\n".encode()
    with socket.create_connection((address, port), timeout=TIMEOUT) as s:
        s.sendall(request)
        status = s.recv(64).split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[1] == b"200"


def dns(address: str, port: int) -> bool:
    """An SOA query for the root: any well-formed answer with our id is life."""
    query = struct.pack("!6H", 0xD11, 0, 1, 0, 0, 0) + b"\x00" + struct.pack("!2H", 6, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(query, (address, port))
        reply = s.recv(4096)
    return len(reply) >= 12 and reply[:2] == query[:2] and reply[2] & 0x80 != 0


def grpc(address: str, port: int) -> bool:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with socket.create_connection((address, port), timeout=TIMEOUT) as s:
        s.sendall(preface)
        frame = s.recv(9)
    return len(frame) == 9 and frame[3] == 0x04  # the server's SETTINGS frame


def dubbo(address: str, port: int) -> bool:
    """A heartbeat: magic, flags request|two-way|event|Hessian2 (0xe2), id 1, body "N"
    (Hessian's null). The answer must be an event response with status 20 (OK)."""
    heartbeat = struct.pack("!HBBqI", 0xDABB, 0xE2, 0, 1, 1) + b"N"
    with socket.create_connection((address, port), timeout=TIMEOUT) as s:
        s.sendall(heartbeat)
        header = s.recv(16)
    if len(header) != 16 or header[:2] != b"\xda\xbb":
        return False
    return bool(header[2] & 0x20) and header[3] == 20


def oncrpc(address: str, port: int) -> bool:
    """An ONC RPC call (RFC 5531) to procedure 0 (NULL) of program 0, record-marked: any
    reply to our xid (PROG_UNAVAIL included) is an RPC server answering."""
    xid = 0x0D110D11
    call = struct.pack("!10I", xid, 0, 2, 0, 0, 0, 0, 0, 0, 0)  # AUTH_NONE cred and verf
    with socket.create_connection((address, port), timeout=TIMEOUT) as s:
        s.sendall(struct.pack("!I", 0x80000000 | len(call)) + call)
        reply = s.recv(64)
    return len(reply) >= 12 and struct.unpack("!3I", reply[:12])[1:] == (xid, 1)


PROBES = {"http": http, "dns": dns, "grpc": grpc, "dubbo": dubbo, "oncrpc": oncrpc}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    probe = PROBES[argv[0] if argv else "http"]
    try:
        return 0 if probe(*target()) else 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
