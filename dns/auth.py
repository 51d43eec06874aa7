"""Authoritative DNS server (roles ``dns-root``, ``dns-tld``, ``dns-auth``) on UDP and TCP.

``python -m dns.auth`` serves the zones named in ``D11_ZONES`` (master files, by default
from dns/zones/) on ``D11_ADDRESS``:``D11_PORT`` (53). As a real authoritative server it:

* answers with AA for its zones, refers with NS and in-bailiwick glue (AA clear) below a
  delegation, never recurses (RA clear), and REFUSES names outside its zones;
* tells NXDOMAIN from NODATA, both with the zone's SOA and its negative TTL;
* speaks EDNS0 (advertises 1232 bytes, BADVERS for versions other than 0, checks and
  echoes an RFC 7871 Client Subnet option with scope 0, FORMERR when it is malformed);
* truncates (TC) a UDP answer that does not fit, so the client retries over TCP;
* answers FORMERR to what it cannot parse, NOTIMP to opcodes other than QUERY, and drops
  datagrams too short to carry a header or that are themselves responses.

Answers are kept in wire format per distinct query (everything but the id), since zones
do not change while the server runs; a repeat costs a dictionary lookup and an id patch.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence

from dnslib import CLASS, EDNS0, QTYPE, RCODE, DNSHeader, DNSRecord, EDNSOption

from dns.transport import DnsServer
from dns.zone import Zone, key, load_zones
from infra.service import Component, Context, run

log = logging.getLogger("d11.dns")

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 default: no IP fragmentation on any path
ECS = 8  # EDNS option code of Client Subnet (RFC 7871)
OP_QUERY = 0
CACHE_LIMIT = 50_000


class Refusal(Exception):
    def __init__(self, rcode: int) -> None:
        self.rcode = rcode


def _header_error(data: bytes, rcode: int) -> bytes:
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


class Authority:
    def __init__(self, zones: list[Zone]) -> None:
        # Longest origin first: the closest enclosing zone answers.
        self.zones = sorted(zones, key=lambda z: len(z.okey), reverse=True)
        self.cache: dict[bytes, bytes] = {}

    def zone_for(self, name: tuple[bytes, ...]) -> Zone | None:
        return next((z for z in self.zones if z.contains(name)), None)

    def respond(self, data: bytes, tcp: bool, client: str = "") -> bytes | None:
        if len(data) < 12:
            return None  # not even a header: nothing to answer to
        if data[2] & 0x80:
            return None  # a response: answering it could start a loop
        cache_key = (b"T" if tcp else b"U") + data[2:]
        cached = self.cache.get(cache_key)
        if cached is not None:
            return data[:2] + cached
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises several types for what it cannot parse
            return _header_error(data, RCODE.FORMERR)
        try:
            reply, cacheable = self._answer(query, tcp)
        except Exception:
            log.exception("answering failed")
            return _header_error(data, RCODE.SERVFAIL)
        if cacheable:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            self.cache[cache_key] = reply[2:]
        return reply

    def _answer(self, query: DNSRecord, tcp: bool) -> tuple[bytes, bool]:
        h = query.header
        reply = DNSRecord(DNSHeader(id=h.id, qr=1, opcode=h.opcode, rd=h.rd, ra=0), q=query.q)
        reply.questions = list(query.questions)
        opts = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]
        limit = 512
        try:
            if h.opcode != OP_QUERY:
                raise Refusal(RCODE.NOTIMP)
            if len(query.questions) != 1 or len(opts) > 1:
                raise Refusal(RCODE.FORMERR)
            if opts:
                opt = opts[0]
                limit = min(max(512, opt.rclass), EDNS_PAYLOAD)
                version = (opt.ttl >> 16) & 0xFF
                options = [o for o in opt.rdata if o.code == ECS] if opt.rdata else []
                for o in options:
                    check_ecs(o)
                echo = [EDNSOption(ECS, o.data[:3] + b"\x00" + o.data[4:]) for o in options]
                do = bool(opt.ttl & 0x8000)
                reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, flags="do" if do else "", opts=echo))
                if version != 0:
                    raise Refusal(16)  # BADVERS: 12-bit rcode 16, upper bits in the OPT
            q = query.q
            if q.qclass != CLASS.IN:
                raise Refusal(RCODE.REFUSED)
            zone = self.zone_for(key(q.qname))
            if zone is None:
                raise Refusal(RCODE.REFUSED)  # not ours, and we do not recurse
            found = zone.lookup(q.qname, q.qtype)
            reply.header.aa = int(found.authoritative)
            reply.header.rcode = getattr(RCODE, found.rcode)
            for rr in found.answer:
                reply.add_answer(rr)
            for rr in found.authority:
                reply.add_auth(rr)
            reply.ar = [*found.additional, *reply.ar]
        except Refusal as r:
            if r.rcode >= 16:
                opt_rr = next(rr for rr in reply.ar if rr.rtype == QTYPE.OPT)
                opt_rr.ttl = (opt_rr.ttl & 0x00FFFFFF) | ((r.rcode >> 4) << 24)
                reply.header.rcode = r.rcode & 0xF
            else:
                reply.header.rcode = r.rcode
            return reply.pack(), r.rcode != RCODE.FORMERR
        wire = reply.pack()
        if not tcp and len(wire) > limit:
            wire = self._truncated(reply)
        return wire, True

    @staticmethod
    def _truncated(reply: DNSRecord) -> bytes:
        """TC set, only the question (and our OPT): the client asks again over TCP."""
        short = DNSRecord(reply.header, q=reply.q)
        short.questions = reply.questions
        short.header.tc = 1
        short.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        short.rr, short.auth = [], []
        return short.pack()


async def build(ctx: Context) -> Sequence[Component]:
    zones = load_zones(ctx.settings.get("ZONES"))
    log.info("serving zones", extra={"zones": [str(z.origin) for z in zones]})
    authority = Authority(zones)
    return [DnsServer(ctx, authority.respond)]


def main() -> None:
    run(build, name="dns-auth", role="dns-auth", port=53)


if __name__ == "__main__":
    main()
