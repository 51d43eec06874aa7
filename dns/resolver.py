"""An ISP's recursive resolver (role ``resolver``): ``python -m dns.resolver``.

It resolves iteratively from root hints (``D11_ROOT_HINTS``, addresses of the root
servers), as a real LocalDNS does:

* follows referrals down the tree, taking glue only for the referred zone's own name
  servers and only from a server whose zone encloses them (bailiwick), and resolving name
  servers without glue itself;
* chases CNAMEs across zones, up to a limit;
* caches answers, referrals and negative answers (RFC 2308: NXDOMAIN and NODATA for the
  SOA's negative TTL), and hands out TTLs that count down;
* sends each upstream query from a fresh socket (a random source port) with a random id,
  and accepts only a reply from the server asked, with that id and question;
* tries every address of a zone's servers with a timeout, twice, then gives SERVFAIL;
* serves stale data (RFC 8767): when no server of a zone answers, an expired answer (up
  to ``STALE_MAX_S`` past its TTL) is given with a TTL of 30 s rather than SERVFAIL, so
  an outage of the authoritative side does not become the phones' outage;
* forwards the client's subnet (RFC 7871 Client Subnet, the client's /24, or the one the
  client sent) so a GSLB can answer for the client rather than for the resolver, and
  caches tailored answers per subnet (the SCOPE the server set). ``D11_ECS=off`` makes a
  resolver that sends none, as many ISPs' do: the GSLB then sees only the resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from dnslib import (
    CLASS,
    EDNS0,
    QTYPE,
    RCODE,
    RR,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
    EDNSOption,
)

from dns.message import ECS, EDNS_PAYLOAD, Exchange, Refusal, client_subnet, header_error
from dns.transport import DnsServer
from dns.zone import key
from infra.service import Component, Context, run
from infra.telemetry import child_span

log = logging.getLogger("d11.dns.resolver")

MAX_REFERRALS = 16
MAX_CNAMES = 8
QUERY_TIMEOUT = 0.8
ROUNDS = 2
CACHE_LIMIT = 100_000
# RFC 8767: how long past expiry an answer may still be served when the authority is
# unreachable (the RFC suggests 1-3 days), and the TTL a stale answer is given.
STALE_MAX_S = 86_400
STALE_TTL = 30

Name = tuple[bytes, ...]


@dataclass
class Entry:
    expires: float
    rcode: int = RCODE.NOERROR
    records: list[RR] = field(default_factory=list)  # the RRset, or the SOA when negative
    negative: bool = False

    def ttl_left(self, now: float) -> int:
        return max(0, int(self.expires - now))


@dataclass
class Outcome:
    rcode: int
    answer: list[RR]
    authority: list[RR]
    stale: bool = False


class ServFail(Exception):
    pass


def _decayed(rrs: list[RR], ttl: int) -> list[RR]:
    return [RR(rr.rname, rr.rtype, rr.rclass, min(rr.ttl, ttl), rr.rdata) for rr in rrs]


def _with_ttl(rrs: list[RR], ttl: int) -> list[RR]:
    return [RR(rr.rname, rr.rtype, rr.rclass, ttl, rr.rdata) for rr in rrs]


def ecs_option(subnet: tuple[str, int]) -> EDNSOption:
    address, prefix = subnet
    ip = ipaddress.ip_address(address)
    family = 1 if ip.version == 4 else 2
    raw = ip.packed[: (prefix + 7) // 8]
    return EDNSOption(ECS, struct.pack("!HBB", family, prefix, 0) + raw)


class Resolver:
    def __init__(self, root_hints: list[str], port: int = 53, ecs: bool = True) -> None:
        self.root_hints = root_hints
        self.port = port
        self.ecs = ecs
        self.cache: dict[tuple[Name, int, str], Entry] = {}
        # The SCOPE prefix lengths answers for a name were tailored to (RFC 7871 §7.3.1:
        # a tailored answer serves every client inside its scope, not only the /24 asked).
        self.scopes: dict[tuple[Name, int], set[int]] = {}
        self.delegations: dict[Name, list[str]] = {(): list(root_hints)}
        self.inflight: dict[tuple[Name, int, str], asyncio.Future[Outcome]] = {}
        # Whole replies for this second: TTLs only change once a second, so a reply made
        # in this second is exact for a repeat of the same query from the same subnet.
        self.replies: dict[tuple[bytes, str], bytes] = {}
        self.replies_second = 0
        self.upstream_queries = 0

    # -- the client side ---------------------------------------------------------------------
    def _reply_key(self, data: bytes, tcp: bool, client: str) -> tuple[bytes, str]:
        return ((b"T" if tcp else b"U") + data[2:], client.rpartition(".")[0])

    def fast(self, data: bytes, tcp: bool, client: str) -> bytes | None:
        """A reply made earlier in this second for the same query and client /24."""
        if len(data) < 12 or int(time.monotonic()) != self.replies_second:
            return None
        found = self.replies.get(self._reply_key(data, tcp, client))
        return data[:2] + found if found is not None else None

    async def respond(self, data: bytes, tcp: bool, client: str) -> bytes | None:
        wire = await self._respond(data, tcp, client)
        if wire is not None and len(data) >= 12 and wire[3] & 0xF in (0, 3):
            now = int(time.monotonic())
            if now != self.replies_second:
                self.replies, self.replies_second = {}, now
            if len(self.replies) < CACHE_LIMIT:
                self.replies[self._reply_key(data, tcp, client)] = wire[2:]
        return wire

    async def _respond(self, data: bytes, tcp: bool, client: str) -> bytes | None:
        if len(data) < 12 or data[2] & 0x80:
            return None
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return header_error(data, RCODE.FORMERR)
        ex = Exchange.start(query, recursive=True)
        try:
            ex.check()
            if not query.header.rd:
                raise Refusal(RCODE.REFUSED)  # a recursive resolver only serves recursion
            q = query.q
            try:
                subnet = client_subnet(client, ex.ecs) if self.ecs else None
                outcome = await self.resolve(q.qname, q.qtype, subnet)
            except ServFail:
                raise Refusal(RCODE.SERVFAIL) from None
            ex.reply.header.rcode = outcome.rcode
            for rr in outcome.answer:
                ex.reply.add_answer(rr)
            for rr in outcome.authority:
                ex.reply.add_auth(rr)
        except Refusal as r:
            ex.refuse(r)
        return ex.wire(tcp)

    # -- resolution ----------------------------------------------------------------------------
    async def resolve(
        self, qname: DNSLabel, qtype: int, subnet: tuple[str, int] | None = None
    ) -> Outcome:
        """The answer for (qname, qtype) with CNAMEs chased across zones."""
        answer: list[RR] = []
        name = key(qname)
        for _ in range(MAX_CNAMES):
            one = await self._resolve_one(name, qtype, subnet)
            answer += one.answer
            last = one.answer[-1] if one.answer else None
            if one.rcode != RCODE.NOERROR or last is None:
                return Outcome(one.rcode, answer, one.authority)
            if last.rtype == QTYPE.CNAME and qtype not in (QTYPE.CNAME, QTYPE.ANY):
                target = key(last.rdata.label)
                # The server may have followed the chain already, inside its zone.
                if any(key(rr.rname) == target for rr in one.answer):
                    return Outcome(RCODE.NOERROR, answer, [])
                name = target
                continue
            return Outcome(RCODE.NOERROR, answer, [])
        raise ServFail(f"CNAME chain longer than {MAX_CNAMES}")

    def origin_ttl(self, name: Name, qtype: int) -> int | None:
        """The TTL the authoritative server gave a cached RRset (HTTPDNS's origin_ttl)."""
        entry = self.cache.get((name, qtype, ""))
        if entry is not None and not entry.negative:
            return min(rr.ttl for rr in entry.records)
        for (owner, rtype, _), entry in self.cache.items():
            if owner == name and rtype == qtype and not entry.negative:
                return min(rr.ttl for rr in entry.records)
        return None

    def _cached(
        self, name: Name, qtype: int, subnet: tuple[str, int] | None, *, stale: bool = False
    ) -> Outcome | None:
        """A cached outcome; ``stale``: one expired less than STALE_MAX_S ago, given the
        stale TTL (the authority could not be reached)."""
        now = time.monotonic()
        horizon = now - STALE_MAX_S if stale else now

        def scope_keys() -> Iterator[str]:
            yield ""  # answers good for everyone first; tailored ones only if none
            if subnet is not None:
                for t in (qtype, QTYPE.CNAME):
                    for prefix in sorted(self.scopes.get((name, t), ()), reverse=True):
                        yield _scope_key((subnet[0], min(prefix, subnet[1])))

        for scope_key in scope_keys():
            for t in (qtype, QTYPE.CNAME):
                entry = self.cache.get((name, t, scope_key))
                if entry is None or entry.expires <= horizon:
                    continue
                records = (_with_ttl(entry.records, STALE_TTL) if stale
                           else _decayed(entry.records, entry.ttl_left(now)))  # fmt: skip
                if entry.negative:
                    if t != qtype:
                        continue
                    return Outcome(entry.rcode, [], records, stale)
                return Outcome(RCODE.NOERROR, records, [], stale)
        return None

    async def _resolve_one(self, name: Name, qtype: int, subnet: tuple[str, int] | None) -> Outcome:
        cached = self._cached(name, qtype, subnet)
        if cached is not None:
            return cached
        flight_key = (name, qtype, _scope_key(subnet))
        pending = self.inflight.get(flight_key)
        if pending is not None:  # the same question is already on its way: share it
            return await asyncio.shield(pending)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.inflight[flight_key] = future
        try:
            try:
                outcome = await self._iterate(name, qtype, subnet)
            except ServFail:
                stale = self._cached(name, qtype, subnet, stale=True)
                if stale is None:
                    raise
                log.warning("serving stale", extra={"qname": str(DNSLabel(list(name)))})
                outcome = stale
            future.set_result(outcome)
            return outcome
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: sharers re-raise it themselves
            raise
        finally:
            del self.inflight[flight_key]

    def _closest(self, name: Name) -> tuple[Name, list[str]]:
        """The deepest zone we know servers for, at or above ``name``."""
        now = time.monotonic()
        for i in range(len(name) + 1):
            zone = name[i:]
            servers = self.delegations.get(zone)
            entry = self.cache.get((zone, QTYPE.NS, ""))
            if servers and (zone == () or (entry is not None and entry.expires > now)):
                return zone, servers
        return (), list(self.root_hints)

    async def _iterate(self, name: Name, qtype: int, subnet: tuple[str, int] | None) -> Outcome:
        zone, servers = self._closest(name)
        qname = DNSLabel(list(name))
        for _ in range(MAX_REFERRALS):
            response = await self._ask(servers, qname, qtype, subnet)
            rcode = response.header.rcode
            now = time.monotonic()
            soa = [rr for rr in response.auth if rr.rtype == QTYPE.SOA]
            if rcode == RCODE.NXDOMAIN:
                self._store_negative(name, qtype, RCODE.NXDOMAIN, soa, now)
                return Outcome(RCODE.NXDOMAIN, [], soa)
            if rcode != RCODE.NOERROR:
                raise ServFail(f"{RCODE.get(rcode)} from {servers}")
            answer = [rr for rr in response.rr if rr.rclass == CLASS.IN]
            if answer:
                scope = _answer_scope(response, subnet)
                self._store_answer(answer, scope, now)
                return Outcome(RCODE.NOERROR, answer, [])
            ns = [rr for rr in response.auth if rr.rtype == QTYPE.NS]
            if ns and not response.header.aa:
                cut = key(ns[0].rname)
                # A referral must lead downwards, inside the zone we asked.
                if cut[len(cut) - len(zone) :] != zone or len(cut) <= len(zone):
                    raise ServFail(f"bogus referral to {ns[0].rname} from zone {zone!r}")
                if name[len(name) - len(cut) :] != cut:
                    raise ServFail(f"referral to {ns[0].rname} does not enclose the name")
                servers = await self._servers_for(cut, ns, response.ar, zone, now)
                zone = cut
                continue
            self._store_negative(name, qtype, RCODE.NOERROR, soa, now)  # NODATA
            return Outcome(RCODE.NOERROR, [], soa)
        raise ServFail("too many referrals")

    async def _servers_for(
        self, cut: Name, ns: list[RR], additional: list[RR], zone: Name, now: float
    ) -> list[str]:
        targets = {key(rr.rdata.label) for rr in ns}
        addresses = []
        for rr in additional:
            owner = key(rr.rname)
            # Glue is believed only for the referred zone's servers, and only when the
            # server that sent it is authoritative above them (the bailiwick rule).
            in_bailiwick = owner[len(owner) - len(zone) :] == zone
            if rr.rtype == QTYPE.A and owner in targets and in_bailiwick:
                addresses.append(str(rr.rdata))
        if not addresses:
            for target in sorted(targets):
                found = await self.resolve(DNSLabel(list(target)), QTYPE.A)
                addresses += [str(rr.rdata) for rr in found.answer if rr.rtype == QTYPE.A]
                if addresses:
                    break
        if not addresses:
            raise ServFail(f"no address for any server of {DNSLabel(list(cut))}")
        ttl = min(rr.ttl for rr in ns)
        self.cache[(cut, QTYPE.NS, "")] = Entry(now + ttl, records=ns)
        self.delegations[cut] = addresses
        return addresses

    def _store_answer(self, answer: list[RR], scope: str, now: float) -> None:
        groups: dict[tuple[Name, int], list[RR]] = {}
        for rr in answer:
            groups.setdefault((key(rr.rname), rr.rtype), []).append(rr)
        self._trim()
        for (owner, rtype), rrs in groups.items():
            ttl = min(rr.ttl for rr in rrs)
            self.cache[(owner, rtype, scope)] = Entry(now + ttl, records=rrs)
            if scope:
                self.scopes.setdefault((owner, rtype), set()).add(int(scope.rpartition("/")[2]))

    def _store_negative(self, name: Name, qtype: int, rcode: int, soa: list[RR], now: float):
        if not soa:
            return  # no SOA, no negative caching (RFC 2308 §5)
        ttl = min(soa[0].ttl, soa[0].rdata.times[4])
        self._trim()
        entry = Entry(now + ttl, rcode=rcode, records=soa, negative=True)
        self.cache[(name, qtype, "")] = entry

    def _trim(self) -> None:
        if len(self.cache) >= CACHE_LIMIT:
            now = time.monotonic()
            self.cache = {k: e for k, e in self.cache.items() if e.expires > now - STALE_MAX_S}
            if len(self.cache) >= CACHE_LIMIT:
                self.cache = {k: e for k, e in self.cache.items() if e.expires > now}
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()

    # -- the upstream side ---------------------------------------------------------------------
    async def _ask(
        self, servers: list[str], qname: DNSLabel, qtype: int, subnet: tuple[str, int] | None
    ) -> DNSRecord:
        for _ in range(ROUNDS):
            for server in servers:
                try:
                    reply = await self._query(server, qname, qtype, subnet)
                except (OSError, TimeoutError, ValueError) as exc:
                    log.debug("no answer", extra={"server": server, "error": str(exc)})
                    continue
                if reply.header.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN):
                    return reply
                # REFUSED, SERVFAIL, FORMERR: a lame or broken server; ask the next one.
                log.debug("lame answer", extra={"server": server, "rcode": reply.header.rcode})
        raise ServFail(f"no server of {servers} answered for {qname}")

    async def _query(
        self, server: str, qname: DNSLabel, qtype: int, subnet: tuple[str, int] | None
    ) -> DNSRecord:
        qid = secrets.randbits(16)
        q = DNSRecord(DNSHeader(id=qid, rd=0), q=DNSQuestion(qname, qtype))
        opts = [ecs_option(subnet)] if subnet else []
        q.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, opts=opts))
        wire = q.pack()
        self.upstream_queries += 1
        # Each step of the walk is a span when the resolution belongs to a trace (HTTPDNS).
        attrs = {
            "server.address": server,
            "dns.question.name": str(qname),
            "dns.question.type": QTYPE.get(qtype),
            "d11.dns.ecs": str(subnet or ""),
        }
        with child_span(f"DNS {QTYPE.get(qtype)} {qname}", attrs) as span:
            reply = await self._exchange(server, wire, qid, qname, qtype)
            span.set_attribute("dns.rcode", RCODE.get(reply.header.rcode))
            span.set_attribute("dns.aa", bool(reply.header.aa))
            span.set_attribute("dns.answers", len(reply.rr))
            referral = [str(rr.rdata) for rr in reply.auth if rr.rtype == QTYPE.NS]
            if referral and not reply.rr:
                span.set_attribute("d11.dns.referral", ",".join(referral))
        return reply

    async def _exchange(
        self, server: str, wire: bytes, qid: int, qname: DNSLabel, qtype: int
    ) -> DNSRecord:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(("0.0.0.0", 0))  # the kernel picks a random port
            await loop.sock_connect(sock, (server, self.port))  # replies from elsewhere: dropped
            await loop.sock_sendall(sock, wire)
            async with asyncio.timeout(QUERY_TIMEOUT):
                while True:
                    data = await loop.sock_recv(sock, 65535)
                    reply = _matching(data, qid, qname, qtype)
                    if reply is not None:
                        break
        finally:
            sock.close()
        if reply.header.tc:
            return await self._query_tcp(server, wire, qid, qname, qtype)
        return reply

    async def _query_tcp(
        self, server: str, wire: bytes, qid: int, qname: DNSLabel, qtype: int
    ) -> DNSRecord:
        async with asyncio.timeout(QUERY_TIMEOUT * 2):
            reader, writer = await asyncio.open_connection(server, self.port)
            try:
                writer.write(struct.pack("!H", len(wire)) + wire)
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(size)
            finally:
                writer.close()
        reply = _matching(data, qid, qname, qtype)
        if reply is None:
            raise ValueError("TCP reply does not match the question")
        return reply


def _matching(data: bytes, qid: int, qname: DNSLabel, qtype: int) -> DNSRecord | None:
    """The reply if it answers our question with our id (anything else is spoofing or
    stale and is ignored)."""
    try:
        reply = DNSRecord.parse(data)
    except Exception:
        return None
    if reply.header.id != qid or not reply.header.qr or len(reply.questions) != 1:
        return None
    q = reply.q
    if key(q.qname) != key(qname) or q.qtype != qtype:
        return None
    return reply


def _scope_key(subnet: tuple[str, int] | None) -> str:
    if subnet is None:
        return ""
    address, prefix = subnet
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _answer_scope(response: DNSRecord, subnet: tuple[str, int] | None) -> str:
    """Cache key part for an answer: "" when the server's SCOPE is 0 (good for everyone),
    else the client network at the scope the server said it answered for."""
    if subnet is None:
        return ""
    for rr in response.ar:
        if rr.rtype == QTYPE.OPT:
            for o in rr.rdata or []:
                if o.code == ECS and len(o.data) >= 4:
                    scope = o.data[3]
                    if scope:
                        return _scope_key((subnet[0], min(scope, subnet[1])))
    return ""


async def build(ctx: Context) -> Sequence[Component]:
    hints = ctx.settings.get_list("ROOT_HINTS")
    resolver = Resolver(
        hints,
        port=ctx.settings.get_int("UPSTREAM_PORT", 53),
        ecs=ctx.settings.get("ECS", "on") != "off",
    )
    return [DnsServer(ctx, resolver.respond, resolver.fast)]


def main() -> None:
    run(build, name="resolver", role="resolver", port=53)


if __name__ == "__main__":
    main()
