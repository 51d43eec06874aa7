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
Names a GSLB balances (``D11_GSLB_POLICY``, see dns/gslb.py) are answered afresh each time,
for the querier's place, with the RFC 7871 SCOPE their answer holds for.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSLabel, DNSRecord

from dns.gslb import GSLB_DIR, Gslb, Prober
from dns.message import Exchange, Refusal, client_subnet, header_error
from dns.transport import DnsServer
from dns.zone import Answer, Zone, key, load_zones
from infra.service import Component, Context, run

log = logging.getLogger("d11.dns")

CACHE_LIMIT = 50_000


class Authority:
    def __init__(self, zones: list[Zone], gslb: Gslb | None = None) -> None:
        # Longest origin first: the closest enclosing zone answers.
        self.zones = sorted(zones, key=lambda z: len(z.okey), reverse=True)
        self.cache: dict[bytes, bytes] = {}
        self.gslb = gslb

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
            reply, cacheable = self._answer(query, tcp, client)
        except Exception:
            log.exception("answering failed")
            return header_error(data, RCODE.SERVFAIL)
        if cacheable:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            self.cache[cache_key] = reply[2:]
        return reply

    def _answer(self, query: DNSRecord, tcp: bool, client: str) -> tuple[bytes, bool]:
        ex = Exchange.start(query, recursive=False)
        cacheable = True
        try:
            ex.check()
            q = query.q
            name = key(q.qname)
            zone = self.zone_for(name)
            if zone is None:
                raise Refusal(RCODE.REFUSED)  # not ours, and we do not recurse
            if self.gslb is not None and self.gslb.owns(name):
                found, cacheable = Answer(), False
                self._balance(ex, zone, found, q.qname, q.qtype, client)
            else:
                found = zone.lookup(q.qname, q.qtype)
                last = found.answer[-1] if found.answer else None
                if (
                    self.gslb is not None
                    and last is not None
                    and last.rtype == QTYPE.CNAME
                    and q.qtype != QTYPE.CNAME
                    and self.gslb.owns(key(last.rdata.label))
                ):
                    # A chain inside the zone into a balanced name: the GSLB goes on.
                    found.rcode, found.authority, cacheable = "NOERROR", [], False
                    self._balance(ex, zone, found, last.rdata.label, q.qtype, client)
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
            return ex.reply.pack(), cacheable and r.rcode not in (RCODE.FORMERR, RCODE.SERVFAIL)
        return ex.wire(tcp), cacheable

    def _balance(
        self, ex: Exchange, zone: Zone, found: Answer, qname: DNSLabel, qtype: int, client: str
    ) -> None:
        """Add the GSLB's answer for ``qname`` as seen from the client (its ECS subnet, else
        the resolver's address), and the SCOPE it holds for."""
        assert self.gslb is not None
        subnet = client_subnet(client, ex.ecs) if ex.ecs is not None else None
        decision = self.gslb.answer(qname, qtype, client, subnet)
        if ex.ecs is not None:
            ex.set_scope(decision.scope)
        if decision.servfail:
            raise Refusal(RCODE.SERVFAIL)  # nothing alive to answer with
        found.answer += decision.records
        if not decision.records or (
            decision.records[-1].rtype == QTYPE.CNAME and qtype != QTYPE.CNAME
        ):
            found.authority.append(zone.negative_soa())  # NODATA at the end of the chain


async def build(ctx: Context) -> Sequence[Component]:
    zones = load_zones(ctx.settings.get("ZONES"))
    log.info("serving zones", extra={"zones": [str(z.origin) for z in zones]})
    gslb = None
    if policy := ctx.settings.get("GSLB_POLICY", ""):
        path = Path(policy) if "/" in policy else GSLB_DIR / policy
        gslb = Gslb.load(path)
    authority = Authority(zones, gslb)
    prober = [Prober(gslb.targets)] if gslb is not None else []
    return [*prober, DnsServer(ctx, authority.respond)]


def main() -> None:
    run(build, name="dns-auth", role="dns-auth", port=53)


if __name__ == "__main__":
    main()
