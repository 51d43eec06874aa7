"""A container's health check: ``python -m infra.healthcheck PROTOCOL`` probes the service
at ``D11_ADDRESS:D11_PORT`` and exits 0 when it answers as its protocol should.

Docker runs it every few seconds in every container, so it starts fast: the standard
library and our own Dubbo codec only, not the aiohttp/grpcio probes of ``infra.health``
that the launcher uses. gRPC services are checked through the standard health service's
HTTP/2 port being open and speaking HTTP/2 (a SETTINGS frame answers our preface).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import urllib.request

TIMEOUT = 2.0


def target() -> tuple[str, int]:
    address = os.environ.get("D11_ADDRESS", "127.0.0.1")
    return ("127.0.0.1" if address == "0.0.0.0" else address), int(os.environ["D11_PORT"])


def http(address: str, port: int) -> bool:
    with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=TIMEOUT) as r:
        return r.status == 200


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
    from rpc.dubbo import codec

    heartbeat = codec.encode_frame(codec.Frame(1, True, event=True, body=b"N"))
    with socket.create_connection((address, port), timeout=TIMEOUT) as s:
        s.sendall(heartbeat)
        header = s.recv(codec.HEADER_SIZE)
    return len(header) == codec.HEADER_SIZE and header[:2] == b"\xda\xbb" and header[3] == 20


PROBES = {"http": http, "dns": dns, "grpc": grpc, "dubbo": dubbo}


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
