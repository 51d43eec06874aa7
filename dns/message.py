"""What every DNS server here does with a query before and after its own work: header and
EDNS checks, the reply skeleton with our OPT record (Client Subnet echoed with scope 0
unless the server tailors its answer), extended rcodes, and UDP truncation."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from dnslib import CLASS, EDNS0, QTYPE, RCODE, DNSHeader, DNSRecord, EDNSOption

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 default: no IP fragmentation on any path
ECS = 8  # EDNS option code of Client Subnet (RFC 7871)
OP_QUERY = 0
BADVERS = 16


class Refusal(Exception):
    """Answer with this rcode (extended rcodes above 15 included) and nothing else."""

    def __init__(self, rcode: int) -> None:
        self.rcode = rcode


def header_error(data: bytes, rcode: int) -> bytes:
    """A reply carrying only a header (FORMERR for what could not be parsed)."""
    qid, flags = struct.unpack_from("!HH", data)
    opcode = (flags >> 11) & 0xF
    rd = flags & 0x0100
    return struct.pack("!HHHHHH", qid, 0x8000 | (opcode << 11) | rd | rcode, 0, 0, 0, 0)


def check_ecs(option: EDNSOption) -> None:
    """RFC 7871 §6: family 1 or 2, prefix within the family, SCOPE 0 in a query, exactly
    ceil(SOURCE/8) address bytes, and no bits set beyond SOURCE."""
    data = option.data
    if len(data) < 4:
        raise Refusal(RCODE.FORMERR)
    family, source, scope = struct.unpack_from("!HBB", data)
    address = data[4:]
    width = {1: 32, 2: 128}.get(family)
    if width is None or source > width or scope != 0 or len(address) != (source + 7) // 8:
        raise Refusal(RCODE.FORMERR)
    if source % 8 and address and address[-1] & (0xFF >> (source % 8)):
        raise Refusal(RCODE.FORMERR)


def client_subnet(client: str, option: EDNSOption | None) -> tuple[str, int] | None:
    """The client subnet to send upstream: the one the client sent, else its /24 (/56)."""
    if option is not None:
        family, source = struct.unpack_from("!HB", option.data)
        raw = option.data[4:]
        size = 4 if family == 1 else 16
        address = ipaddress.ip_address(raw + b"\0" * (size - len(raw)))
        return str(address), source
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 56
    return str(ipaddress.ip_network(f"{client}/{prefix}", strict=False).network_address), prefix


@dataclass
class Exchange:
    query: DNSRecord
    reply: DNSRecord
    limit: int = 512  # the largest UDP reply the client takes
    ecs: EDNSOption | None = None  # the client's Client Subnet option, checked

    @classmethod
    def start(cls, query: DNSRecord, *, recursive: bool) -> Exchange:
        """The reply skeleton; then ``check()`` raises Refusal for what is not served."""
        h = query.header
        ra = int(recursive)
        reply = DNSRecord(DNSHeader(id=h.id, qr=1, opcode=h.opcode, rd=h.rd, ra=ra), q=query.q)
        reply.questions = list(query.questions)
        return cls(query, reply)

    def check(self) -> None:
        query = self.query
        opts = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]
        if query.header.opcode != OP_QUERY:
            raise Refusal(RCODE.NOTIMP)
        if len(query.questions) != 1 or len(opts) > 1:
            raise Refusal(RCODE.FORMERR)
        if opts:
            opt = opts[0]
            self.limit = min(max(512, opt.rclass), EDNS_PAYLOAD)
            for o in opt.rdata or []:
                if o.code == ECS:
                    check_ecs(o)
                    self.ecs = o
            echo = [self.ecs_reply(0)] if self.ecs is not None else []
            do = "do" if opt.ttl & 0x8000 else ""
            self.reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, flags=do, opts=echo))
            if (opt.ttl >> 16) & 0xFF:
                raise Refusal(BADVERS)  # we speak EDNS version 0 only
        if query.q.qclass != CLASS.IN:
            raise Refusal(RCODE.REFUSED)

    def ecs_reply(self, scope: int) -> EDNSOption:
        """The client's option echoed with the SCOPE we answered for (RFC 7871 §7.2.1)."""
        assert self.ecs is not None
        return EDNSOption(ECS, self.ecs.data[:3] + bytes([scope]) + self.ecs.data[4:])

    def set_scope(self, scope: int) -> None:
        """Echo the client's subnet with this SCOPE (the answer is tailored to it)."""
        opt = next((rr for rr in self.reply.ar if rr.rtype == QTYPE.OPT), None)
        if opt is not None and self.ecs is not None:
            opt.rdata = [o for o in opt.rdata if o.code != ECS] + [self.ecs_reply(scope)]

    def refuse(self, r: Refusal) -> None:
        if r.rcode > 15:
            opt = next((rr for rr in self.reply.ar if rr.rtype == QTYPE.OPT), None)
            if opt is not None:  # the upper 8 bits of a 12-bit rcode live in the OPT TTL
                opt.ttl = (opt.ttl & 0x00FFFFFF) | ((r.rcode >> 4) << 24)
        self.reply.header.rcode = r.rcode & 0xF

    def wire(self, tcp: bool) -> bytes:
        """The reply; over UDP, if it does not fit, only the question with TC set, so the
        client asks again over TCP."""
        wire = self.reply.pack()
        if tcp or len(wire) <= self.limit:
            return wire
        short = DNSRecord(self.reply.header, q=self.reply.q)
        short.questions = self.reply.questions
        short.header.tc = 1
        short.ar = [rr for rr in self.reply.ar if rr.rtype == QTYPE.OPT]
        return short.pack()
