"""Zones read from RFC 1035 master files (dnslib parses them) and looked up as an
authoritative server must (RFC 1034 §4.3.2): delegations first, then the name itself,
CNAMEs followed inside the zone, NODATA and NXDOMAIN told apart (empty non-terminals
exist), and negative answers carrying the SOA with the negative TTL of RFC 2308."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import CLASS, QTYPE, RR, DNSLabel

from infra.config import ConfigError as BaseConfigError

ZONES_DIR = Path(__file__).parent / "zones"
MAX_CHAIN = 8  # CNAMEs followed inside one zone before giving up (loops)


class ZoneError(BaseConfigError):
    pass


def key(name: DNSLabel | str) -> tuple[bytes, ...]:
    """Names compare case-insensitively (RFC 4343)."""
    label = name if isinstance(name, DNSLabel) else DNSLabel(name)
    return tuple(part.lower() for part in label.label)


@dataclass
class Answer:
    rcode: str = "NOERROR"  # NOERROR | NXDOMAIN
    authoritative: bool = True
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)


class Zone:
    def __init__(self, origin: str, records: list[RR]) -> None:
        self.origin = DNSLabel(origin)
        self.okey = key(self.origin)
        self.records: dict[tuple[bytes, ...], dict[int, list[RR]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.names: set[tuple[bytes, ...]] = set()  # every name and its ancestors in the zone
        for rr in records:
            k = key(rr.rname)
            if k[len(k) - len(self.okey) :] != self.okey and self.okey:
                raise ZoneError(f"{rr.rname} is outside zone {origin}")
            self.records[k][rr.rtype].append(rr)
            for i in range(len(k) - len(self.okey) + 1):
                self.names.add(k[i:])
        soa = self.records.get(self.okey, {}).get(QTYPE.SOA)
        if not soa:
            raise ZoneError(f"zone {origin} has no SOA at its apex")
        self.soa = soa[0]
        if not self.records[self.okey].get(QTYPE.NS):
            raise ZoneError(f"zone {origin} has no NS at its apex")

    @classmethod
    def load(cls, path: Path) -> Zone:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ZoneError(f"{path}: {exc.strerror}") from None
        try:
            records = list(RR.fromZone(text))
        except Exception as exc:  # dnslib raises several types for bad master files
            raise ZoneError(f"{path}:{_bad_line(text)}: {exc}") from None
        if not records or records[0].rtype != QTYPE.SOA:
            raise ZoneError(f"{path}:1: the first record must be the SOA")
        try:
            return cls(str(records[0].rname), records)
        except ZoneError as exc:
            raise ZoneError(f"{path}: {exc}") from None

    def contains(self, k: tuple[bytes, ...]) -> bool:
        return k[len(k) - len(self.okey) :] == self.okey if self.okey else True

    def negative_soa(self) -> RR:
        """The SOA for the authority section of a negative answer: TTL is the lesser of
        the SOA's own TTL and its MINIMUM field (RFC 2308 §3)."""
        soa = self.soa
        return RR(soa.rname, QTYPE.SOA, CLASS.IN, min(soa.ttl, soa.rdata.times[4]), soa.rdata)

    def _cut(self, k: tuple[bytes, ...]) -> tuple[bytes, ...] | None:
        """The highest delegation point at or above ``k`` (below the apex), if any."""
        depth = len(k) - len(self.okey)
        for i in range(depth - 1, -1, -1):  # from just below the apex downwards
            name = k[i:]
            if name != self.okey and QTYPE.NS in self.records.get(name, {}):
                return name
        return None

    def lookup(self, qname: DNSLabel, qtype: int) -> Answer:
        out = Answer()
        k = key(qname)
        for _ in range(MAX_CHAIN + 1):
            cut = self._cut(k)
            if cut is not None and not (cut == k and qtype == QTYPE.DS):
                if out.answer:  # a CNAME led below a cut: the resolver takes it from here
                    return out
                return self._referral(cut)
            node = self.records.get(k)
            if node is None:
                if k in self.names:  # an empty non-terminal: the name exists, no data
                    out.authority.append(self.negative_soa())
                    return out
                if not out.answer:
                    out.rcode = "NXDOMAIN"
                out.authority.append(self.negative_soa())
                return out
            if qtype == QTYPE.ANY:
                out.answer += [rr for rrs in node.values() for rr in rrs]
                return out
            if qtype in node:
                out.answer += node[qtype]
                self._additional(out, node[qtype])
                return out
            cname = node.get(QTYPE.CNAME)
            if cname and qtype != QTYPE.CNAME:
                out.answer += cname
                target = key(cname[0].rdata.label)
                if not self.contains(target):
                    return out  # the chain leaves this zone: the resolver follows it
                k = target
                continue
            out.authority.append(self.negative_soa())  # NODATA
            return out
        return out  # a CNAME loop: what was found so far

    def _referral(self, cut: tuple[bytes, ...]) -> Answer:
        out = Answer(authoritative=False)
        ns = self.records[cut][QTYPE.NS]
        out.authority += ns
        for rr in ns:
            target = key(rr.rdata.label)
            # Glue only from inside this zone (in bailiwick), never from elsewhere.
            if self.contains(target):
                node = self.records.get(target, {})
                out.additional += node.get(QTYPE.A, []) + node.get(QTYPE.AAAA, [])
        return out

    def _additional(self, out: Answer, rrs: list[RR]) -> None:
        for rr in rrs:
            if rr.rtype in (QTYPE.NS, QTYPE.MX):
                target = key(rr.rdata.label)
                node = self.records.get(target, {}) if self.contains(target) else {}
                out.additional += node.get(QTYPE.A, []) + node.get(QTYPE.AAAA, [])


def _bad_line(text: str) -> int:
    """The line where a master file stops parsing (dnslib says what, not where): the first
    prefix of whole entries (parentheses closed) that fails ends at it."""
    lines, depth = text.splitlines(), 0
    for n, line in enumerate(lines, 1):
        code = line.split(";", 1)[0]
        depth += code.count("(") - code.count(")")
        if depth > 0:
            continue
        try:
            list(RR.fromZone("\n".join(lines[:n])))
        except Exception:
            return n
    return len(lines)


def load_zones(spec: str) -> list[Zone]:
    """``root.zone,example.zone`` → zones; names without a slash are in dns/zones/."""
    zones = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        path = Path(item) if "/" in item else ZONES_DIR / item
        zones.append(Zone.load(path))
    return zones
