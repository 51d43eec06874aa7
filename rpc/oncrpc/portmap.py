"""The portmapper (program 100000) every host of ONC RPC runs on port 111, as rpcbind does.

Version 2 (RFC 1833 §3, "portmap"): NULL, SET, UNSET, GETPORT, DUMP; versions 3 and 4
("rpcbind"): NULL, SET, UNSET, GETADDR and DUMP with universal addresses. Debian's
``rpcinfo -p HOST`` (version 2 DUMP) and ``rpcinfo -t HOST PROG VERS`` (an address
look-up, then a NULL call to the program) work against it. A service registers itself
with :func:`register`, a real PMAPPROC_SET call over TCP, as a portmap client does.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from dataclasses import dataclass

from rpc.oncrpc.message import AcceptStat, Call, RecordReader, Reply, mark, parse_reply
from rpc.oncrpc.server import Program
from rpc.oncrpc.xdr import Packer, Unpacker

PMAP_PROG, PMAP_PORT = 100000, 111
IPPROTO_TCP, IPPROTO_UDP = 6, 17
NETIDS = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}


@dataclass(frozen=True)
class Mapping:
    prog: int
    vers: int
    prot: int
    port: int
    owner: str = "double-11"


def universal_address(address: str, port: int) -> str:
    """RFC 5665 §5.2.3.3: ``h1.h2.h3.h4.p1.p2``."""
    return f"{address}.{port >> 8}.{port & 0xFF}"


def parse_universal(addr: str) -> tuple[str, int]:
    parts = addr.rsplit(".", 2)
    return parts[0], (int(parts[1]) << 8) | int(parts[2])


class Portmapper:
    """The map, and the program (versions 2, 3, 4) that serves it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.mappings: dict[tuple[int, int, int], Mapping] = {}
        for vers in (2, 3, 4):  # it lists itself, as rpcbind does (on TCP: all it serves)
            self.mappings[(PMAP_PROG, vers, IPPROTO_TCP)] = Mapping(
                PMAP_PROG, vers, IPPROTO_TCP, PMAP_PORT, "superuser"
            )

    def programs(self) -> list[Program]:
        portmap = {1: self._set2, 2: self._unset2, 3: self._getport, 4: self._dump2}
        v2 = Program(PMAP_PROG, 2, "portmapper", portmap)
        rpcbind = {1: self._set3, 2: self._unset3, 3: self._getaddr, 4: self._dump3}
        return [v2, Program(PMAP_PROG, 3, "rpcbind", dict(rpcbind)),
                Program(PMAP_PROG, 4, "rpcbind", dict(rpcbind))]  # fmt: skip

    # -- version 2 ----------------------------------------------------------------------
    @staticmethod
    def _mapping(u: Unpacker) -> Mapping:
        prog, vers, prot, port = u.uint(), u.uint(), u.uint(), u.uint()
        u.end()
        return Mapping(prog, vers, prot, port)

    async def _set2(self, u: Unpacker, call: Call) -> bytes:
        m = self._mapping(u)
        ok = m.prot in NETIDS and (m.prog, m.vers, m.prot) not in self.mappings
        if ok:
            self.mappings[(m.prog, m.vers, m.prot)] = m
        return _bool(ok)

    async def _unset2(self, u: Unpacker, call: Call) -> bytes:
        m = self._mapping(u)
        gone = [k for k in self.mappings if k[:2] == (m.prog, m.vers) and k[0] != PMAP_PROG]
        for k in gone:
            del self.mappings[k]
        return _bool(bool(gone))

    async def _getport(self, u: Unpacker, call: Call) -> bytes:
        m = self._mapping(u)
        found = self.mappings.get((m.prog, m.vers, m.prot))
        return struct.pack(">I", found.port if found else 0)

    async def _dump2(self, u: Unpacker, call: Call) -> bytes:
        u.end()
        p = Packer()
        for m in self.mappings.values():  # a linked list: "more follows", then the item
            p.bool(True)
            for value in (m.prog, m.vers, m.prot, m.port):
                p.uint(value)
        p.bool(False)
        return p.bytes()

    # -- versions 3 and 4 ---------------------------------------------------------------
    @staticmethod
    def _rpcb(u: Unpacker) -> tuple[int, int, str, str, str]:
        prog, vers = u.uint(), u.uint()
        netid, addr, owner = u.string(64), u.string(128), u.string(256)
        u.end()
        return prog, vers, netid, addr, owner

    async def _set3(self, u: Unpacker, call: Call) -> bytes:
        prog, vers, netid, addr, owner = self._rpcb(u)
        prot = {v: k for k, v in NETIDS.items()}.get(netid)
        if prot is None or (prog, vers, prot) in self.mappings:
            return _bool(False)
        self.mappings[(prog, vers, prot)] = Mapping(prog, vers, prot, parse_universal(addr)[1],
                                                    owner)  # fmt: skip
        return _bool(True)

    async def _unset3(self, u: Unpacker, call: Call) -> bytes:
        prog, vers, *_ = self._rpcb(u)
        gone = [k for k in self.mappings if k[:2] == (prog, vers) and k[0] != PMAP_PROG]
        for k in gone:
            del self.mappings[k]
        return _bool(bool(gone))

    async def _getaddr(self, u: Unpacker, call: Call) -> bytes:
        prog, vers, netid, *_ = self._rpcb(u)
        prot = {v: k for k, v in NETIDS.items()}.get(netid, IPPROTO_TCP)
        found = self.mappings.get((prog, vers, prot))
        p = Packer()
        p.string(universal_address(self.address, found.port) if found else "")
        return p.bytes()

    async def _dump3(self, u: Unpacker, call: Call) -> bytes:
        u.end()
        p = Packer()
        for m in self.mappings.values():
            p.bool(True)
            p.uint(m.prog)
            p.uint(m.vers)
            p.string(NETIDS[m.prot])
            p.string(universal_address(self.address, m.port))
            p.string(m.owner)
        p.bool(False)
        return p.bytes()


def _bool(value: bool) -> bytes:
    return struct.pack(">I", 1 if value else 0)


_xids = itertools.count(1)


async def register(
    host: str, prog: int, vers: int, port: int, portmap_port: int = PMAP_PORT, timeout: float = 2.0
) -> bool:
    """PMAPPROC_SET (version 2) for a TCP service, over TCP to ``host``:111."""
    p = Packer()
    for value in (prog, vers, IPPROTO_TCP, port):
        p.uint(value)
    call = Call(next(_xids), PMAP_PROG, 2, 1, args=p.bytes())
    reply = await call_once(host, portmap_port, call, timeout)
    return reply.stat == AcceptStat.SUCCESS and reply.body == _bool(True)


async def call_once(host: str, port: int, call: Call, timeout: float) -> Reply:
    """One call on a connection of its own (the portmapper's, or a NULL ping)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(mark(call.pack()))
            records = RecordReader()
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the portmapper closed the connection")
                for record in records.feed(data):
                    reply = parse_reply(record)
                    if reply.xid == call.xid:
                        return reply
        finally:
            writer.close()
