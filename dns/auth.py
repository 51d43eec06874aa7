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
from collections.abc import Sequence

from dnslib import RCODE, DNSRecord

from dns.message import Exchange, Refusal, header_error
from dns.transport import DnsServer
from dns.zone import Zone, key, load_zones
from infra.service import Component, Context, run

log = logging.getLogger("d11.dns")

CACHE_LIMIT = 50_000


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
            return header_error(data, RCODE.FORMERR)
        try:
            reply, cacheable = self._answer(query, tcp)
        except Exception:
            log.exception("answering failed")
            return header_error(data, RCODE.SERVFAIL)
        if cacheable:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            self.cache[cache_key] = reply[2:]
        return reply

    def _answer(self, query: DNSRecord, tcp: bool) -> tuple[bytes, bool]:
        ex = Exchange.start(query, recursive=False)
        try:
            ex.check()
            q = query.q
            zone = self.zone_for(key(q.qname))
            if zone is None:
                raise Refusal(RCODE.REFUSED)  # not ours, and we do not recurse
            found = zone.lookup(q.qname, q.qtype)
            reply = ex.reply
            reply.header.aa = int(found.authoritative)
            reply.header.rcode = getattr(RCODE, found.rcode)
            for rr in found.answer:
                reply.add_answer(rr)
            for rr in found.authority:
                reply.add_auth(rr)
            reply.ar = [*found.additional, *reply.ar]
        except Refusal as r:
            ex.refuse(r)
            return ex.reply.pack(), r.rcode != RCODE.FORMERR
        return ex.wire(tcp), True


async def build(ctx: Context) -> Sequence[Component]:
    zones = load_zones(ctx.settings.get("ZONES"))
    log.info("serving zones", extra={"zones": [str(z.origin) for z in zones]})
    authority = Authority(zones)
    return [DnsServer(ctx, authority.respond)]


def main() -> None:
    run(build, name="dns-auth", role="dns-auth", port=53)


if __name__ == "__main__":
    main()
