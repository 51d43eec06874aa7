"""The resolution path, hop by hop, for ``./d11 dig --trace``: start at the lab's root,
follow referrals (using their glue) down to the zone that answers, and follow CNAMEs into
other zones from the root again, recording what each server said and how long it took.
Like ``dig +trace``, but it needs no stub resolver for the name servers' names: it reads
glue, as a resolver does."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from dns.zone import key


@dataclass
class Hop:
    server: str  # address
    zone: str  # the zone this server was asked as
    question: str
    rcode: str
    aa: bool
    ms: float
    answer: list[str] = field(default_factory=list)
    referral: list[str] = field(default_factory=list)  # NS names
    glue: list[str] = field(default_factory=list)
    note: str = ""


def ask(server: str, name: str, qtype: str, port: int = 53, rd: bool = False) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    q.header.rd = int(rd)
    q.add_ar(EDNS0(udp_len=1232))
    return DNSRecord.parse(q.send(server, port, tcp=False, timeout=3))


def walk(root: str, name: str, qtype: str = "A", port: int = 53, limit: int = 24) -> list[Hop]:
    hops: list[Hop] = []
    target = name.rstrip(".") + "."
    server, zone = root, "."
    for _ in range(limit):
        started = time.perf_counter()
        try:
            reply = ask(server, target, qtype, port)
        except Exception as exc:
            hops.append(Hop(server, zone, target, "TIMEOUT", False, 0.0, note=str(exc)))
            return hops
        ms = (time.perf_counter() - started) * 1000
        rcode = RCODE.get(reply.header.rcode)
        hop = Hop(server, zone, target, rcode, bool(reply.header.aa), ms)
        hop.answer = [f"{rr.rname} {rr.ttl} {QTYPE.get(rr.rtype)} {rr.rdata}" for rr in reply.rr]
        ns = [rr for rr in reply.auth if rr.rtype == QTYPE.NS]
        hops.append(hop)
        if reply.header.rcode != RCODE.NOERROR or reply.rr:
            last = reply.rr[-1] if reply.rr else None
            if last is not None and last.rtype == QTYPE.CNAME and qtype != "CNAME":
                cname = str(last.rdata.label)
                if key(cname) in {key(rr.rname) for rr in reply.rr[:-1]}:
                    return hops
                hop.note = f"CNAME leaves the zone: start again from the root for {cname}"
                target, server, zone = cname, root, "."
                continue
            return hops
        if not ns:
            hop.note = "no data"
            return hops
        hop.referral = [str(rr.rdata.label) for rr in ns]
        glue = {str(rr.rname): str(rr.rdata) for rr in reply.ar if rr.rtype == QTYPE.A}
        hop.glue = [f"{n} {a}" for n, a in glue.items()]
        addresses = [glue[n] for n in hop.referral if n in glue]
        if not addresses:
            # No glue: find the server's own address by walking for it.
            sub = walk(root, hop.referral[0], "A", port, limit - len(hops))
            found = [a.split()[-1] for a in sub[-1].answer if " A " in a] if sub else []
            if not found:
                hop.note = "no address for the referred servers"
                return hops
            addresses = found
        server, zone = addresses[0], str(ns[0].rname)
    return hops


def via(server: str, name: str, qtype: str = "A", port: int = 53) -> tuple[DNSRecord, float]:
    """One recursive question to a resolver (RD set), and how long it took."""
    started = time.perf_counter()
    reply = ask(server, name, qtype, port, rd=True)
    return reply, (time.perf_counter() - started) * 1000
