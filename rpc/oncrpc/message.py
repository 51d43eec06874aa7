"""ONC RPC version 2 (RFC 5531) messages and TCP record marking, without I/O.

A call names a program, its version and a procedure, with credentials and a verifier; a
reply is accepted (SUCCESS, PROG_UNAVAIL, PROG_MISMATCH with the versions served,
PROC_UNAVAIL, GARBAGE_ARGS, SYSTEM_ERR) or denied (RPC_MISMATCH, AUTH_ERROR). Over TCP
each message is a record of fragments, each behind a four-byte mark: the top bit says
"last fragment", the other 31 bits its length (RFC 5531 §11). :class:`RecordReader` takes
bytes in and hands whole records out.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from rpc.oncrpc.xdr import Packer, Unpacker, XdrError

RPC_VERSION = 2
CALL, REPLY = 0, 1
MSG_ACCEPTED, MSG_DENIED = 0, 1
MAX_AUTH_BYTES = 400  # RFC 5531 §8.2: an opaque_auth body is at most 400 bytes


class AuthFlavor(enum.IntEnum):
    AUTH_NONE = 0
    AUTH_SYS = 1
    AUTH_SHORT = 2
    AUTH_DH = 3


class AcceptStat(enum.IntEnum):
    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(enum.IntEnum):
    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(enum.IntEnum):
    AUTH_OK = 0
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5


class RpcError(ValueError):
    """Bytes that are not an RPC message (the connection cannot be trusted after them)."""


@dataclass(frozen=True)
class Auth:
    flavor: int = AuthFlavor.AUTH_NONE
    body: bytes = b""

    def pack(self, p: Packer) -> None:
        p.uint(self.flavor)
        p.opaque(self.body)

    @classmethod
    def unpack(cls, u: Unpacker) -> Auth:
        return cls(u.uint(), u.opaque(MAX_AUTH_BYTES))


@dataclass(frozen=True)
class AuthSys:
    """AUTH_SYS credentials (RFC 5531 appendix A): who the caller says it is."""

    stamp: int = 0
    machine: str = "double-11"
    uid: int = 0
    gid: int = 0
    gids: tuple[int, ...] = ()

    def auth(self) -> Auth:
        p = Packer()
        p.uint(self.stamp)
        p.string(self.machine)
        p.uint(self.uid)
        p.uint(self.gid)
        p.array(list(self.gids), p.uint)
        return Auth(AuthFlavor.AUTH_SYS, p.bytes())

    @classmethod
    def parse(cls, body: bytes) -> AuthSys:
        u = Unpacker(body)
        stamp, machine = u.uint(), u.string(255)
        uid, gid = u.uint(), u.uint()
        gids = tuple(u.array(u.uint, 16))
        u.end()
        return cls(stamp, machine, uid, gid, gids)


@dataclass(frozen=True)
class Call:
    xid: int
    prog: int
    vers: int
    proc: int
    cred: Auth = field(default_factory=Auth)
    verf: Auth = field(default_factory=Auth)
    args: bytes = b""
    rpcvers: int = RPC_VERSION

    def pack(self) -> bytes:
        p = Packer()
        for value in (self.xid, CALL, self.rpcvers, self.prog, self.vers, self.proc):
            p.uint(value)
        self.cred.pack(p)
        self.verf.pack(p)
        return p.bytes() + self.args


@dataclass(frozen=True)
class Reply:
    """A reply: accepted (``stat`` an AcceptStat, ``body`` the results when SUCCESS,
    ``low``/``high`` for PROG_MISMATCH) or denied (``reject`` set, ``low``/``high`` for
    RPC_MISMATCH, ``auth`` for AUTH_ERROR)."""

    xid: int
    stat: int = AcceptStat.SUCCESS
    body: bytes = b""
    low: int = 0
    high: int = 0
    reject: int | None = None
    auth: int = AuthStat.AUTH_OK
    verf: Auth = field(default_factory=Auth)

    def pack(self) -> bytes:
        p = Packer()
        p.uint(self.xid)
        p.uint(REPLY)
        if self.reject is not None:
            p.uint(MSG_DENIED)
            p.uint(self.reject)
            if self.reject == RejectStat.RPC_MISMATCH:
                p.uint(self.low)
                p.uint(self.high)
            else:
                p.uint(self.auth)
            return p.bytes()
        p.uint(MSG_ACCEPTED)
        self.verf.pack(p)
        p.uint(self.stat)
        if self.stat == AcceptStat.PROG_MISMATCH:
            p.uint(self.low)
            p.uint(self.high)
        return p.bytes() + (self.body if self.stat == AcceptStat.SUCCESS else b"")


def parse_call(data: bytes) -> Call:
    """A call message; RpcError when it is not one (too short, a reply, bad auth)."""
    u = Unpacker(data)
    try:
        xid, kind = u.uint(), u.uint()
        if kind != CALL:
            raise RpcError(f"message type {kind} is not a call")
        rpcvers, prog, vers, proc = u.uint(), u.uint(), u.uint(), u.uint()
        cred, verf = Auth.unpack(u), Auth.unpack(u)
    except XdrError as exc:
        raise RpcError(f"not an RPC call: {exc}") from None
    return Call(xid, prog, vers, proc, cred, verf, u.rest(), rpcvers)


def parse_reply(data: bytes) -> Reply:
    u = Unpacker(data)
    try:
        xid, kind = u.uint(), u.uint()
        if kind != REPLY:
            raise RpcError(f"message type {kind} is not a reply")
        if u.uint() == MSG_DENIED:
            reject = u.uint()
            if reject == RejectStat.RPC_MISMATCH:
                return Reply(xid, reject=reject, low=u.uint(), high=u.uint())
            return Reply(xid, reject=reject, auth=u.uint())
        verf = Auth.unpack(u)
        stat = u.uint()
        if stat == AcceptStat.PROG_MISMATCH:
            return Reply(xid, stat, low=u.uint(), high=u.uint(), verf=verf)
        return Reply(xid, stat, u.rest(), verf=verf)
    except XdrError as exc:
        raise RpcError(f"not an RPC reply: {exc}") from None


# -- record marking (TCP) ---------------------------------------------------------------------
LAST = 0x80000000
MAX_FRAGMENT = 0x7FFFFFFF


def mark(record: bytes, fragment: int = 1 << 20) -> bytes:
    """A record as fragments of at most ``fragment`` bytes, the last one marked."""
    out = []
    for start in range(0, max(len(record), 1), fragment):
        chunk = record[start : start + fragment]
        last = start + fragment >= len(record)
        out.append(struct.pack(">I", len(chunk) | (LAST if last else 0)) + chunk)
    return b"".join(out)


class RecordReader:
    """Bytes in, whole records out; a record over ``limit`` bytes is an RpcError."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.size = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        records = []
        while len(self.buffer) >= 4:
            (header,) = struct.unpack_from(">I", self.buffer)
            length = header & MAX_FRAGMENT
            if self.size + length > self.limit:
                raise RpcError(f"record of more than {self.limit} bytes")
            if len(self.buffer) < 4 + length:
                break
            self.fragments.append(bytes(self.buffer[4 : 4 + length]))
            self.size += length
            del self.buffer[: 4 + length]
            if header & LAST:
                records.append(b"".join(self.fragments))
                self.fragments, self.size = [], 0
        return records
