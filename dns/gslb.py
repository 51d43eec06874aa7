"""Global server load balancing inside an authoritative server (roles ``dns-auth`` for the
shop's ``api``, ``dns-gslb`` for the CDN's edges), driven by two data files:

* the **IP database** (``ipdb.csv``: ``cidr,isp,region``, longest prefix wins), which
  places an address with an ISP and a region, as real GSLBs use a commercial one;
* the **policy** (YAML), which names the services the GSLB answers for.

Whom the answer is for: the client subnet of an RFC 7871 option when the resolver sent one
(the answer then carries SCOPE = the prefix of the database entry that matched, so the
resolver caches it for exactly that network), else the resolver's own address.

Two kinds of service:

``two-layer`` (``api.shop.example``): layer 1 answers the service name with a CNAME to
  ``api.<isp>.gslb.shop.example.`` for the querier's ISP; layer 2 answers that name with the
  entry addresses of the querier's region (``answers`` of them, drawn by weight without
  replacement, dead ones left out; the next region in ``nearest`` when a region has none),
  then ``backup`` live entries of the next region in ``nearest`` (the other site), last.

``edges`` (``img.shop.example.gslb.cdn.example``): the CDN's edges, each probed (its
  ``/_cdn/load`` report: healthy, load). The answer is the least-loaded live edge of the
  querier's region, or of the nearest region that has one below ``overload``; a dead edge is
  never answered while another lives. When none is alive the answer is SERVFAIL, or with
  ``when_all_down: answer-all`` every edge is answered as if alive (Route 53's rule when
  every health check of a record set fails): a probe round that saw the edges' process
  restarting must not turn into "no address" for phones whose resolver has no stale answer
  to give, while a phone that is given an edge still coming back retries its connect.
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import ipaddress
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from dnslib import CLASS, CNAME, QTYPE, RR, A, DNSLabel

from dns.zone import key
from infra import load_yaml
from infra.config import ConfigError as BaseConfigError
from infra.http1 import UpstreamError, UpstreamPool, encode_request

log = logging.getLogger("d11.dns.gslb")

GSLB_DIR = Path(__file__).parent / "gslb"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _service_line(text: str, index: int) -> int:
    """The line on which ``services[index]`` of a policy starts."""
    root = yaml.compose(text)
    for name, value in root.value if isinstance(root, yaml.MappingNode) else ():
        if (name.value == "services" and isinstance(value, yaml.SequenceNode)
                and index < len(value.value)):  # fmt: skip
            return value.value[index].start_mark.line + 1
    return 1


class GslbError(BaseConfigError):
    pass


# -- the IP database ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    network: Network
    isp: str
    region: str


class IpDatabase:
    """CIDR → (ISP, region), longest prefix first."""

    def __init__(self, places: list[Place]) -> None:
        self._by_prefix: dict[int, dict[Network, Place]] = {}
        for place in places:
            self._by_prefix.setdefault(place.network.prefixlen, {})[place.network] = place
        self._prefixes = sorted(self._by_prefix, reverse=True)  # longest first

    @classmethod
    def load(cls, path: Path) -> IpDatabase:
        places = []
        with path.open(newline="") as fh:
            for n, row in enumerate(csv.reader(fh), 1):
                if not row or row[0].startswith("#") or row[0] == "cidr":
                    continue
                try:
                    network = ipaddress.ip_network(row[0].strip())
                    places.append(Place(network, row[1].strip(), row[2].strip()))
                except (ValueError, IndexError) as exc:
                    raise GslbError(f"{path}:{n}: {exc}") from None
        return cls(places)

    def lookup(self, address: str) -> Place | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for prefix in self._prefixes:  # one dict probe per distinct prefix length
            if prefix > ip.max_prefixlen:
                continue
            network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
            place = self._by_prefix[prefix].get(network)
            if place is not None:
                return place
        return None


# -- health of what the GSLB answers with ---------------------------------------------------------
@dataclass
class Target:
    """An address the GSLB may answer with, and what its probe last said."""

    name: str
    address: str
    region: str = ""
    weight: int = 1
    probe: str = ""  # http://host:port/path (a load report) or tcp:PORT
    healthy: bool = True  # until the first probe says otherwise
    load: float = 0.0


class Prober:
    """Probes every target once a second, each with a short timeout: a TCP connect, or a
    GET of the target's load report (``{"healthy": …, "load": …}``)."""

    def __init__(self, targets: list[Target], interval: float = 1.0, timeout: float = 0.8):
        # One probe per address and probe, whichever ISPs and regions list it.
        self.targets: dict[tuple[str, str], list[Target]] = {}
        for t in targets:
            if t.probe:
                self.targets.setdefault((t.address, t.probe), []).append(t)
        self.interval, self.timeout = interval, timeout
        self.task: asyncio.Task[None] | None = None
        self.pool = UpstreamPool(keepalive=1)

    async def start(self) -> None:
        if self.targets:
            self.task = asyncio.create_task(self._loop())

    async def stop(self, grace: float) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(*key) for key in self.targets))
            await asyncio.sleep(self.interval)

    async def probe(self, address: str, probe: str) -> None:
        healthy, load = False, 1.0
        try:
            if probe.startswith("tcp:"):
                port = int(probe[4:])
                async with asyncio.timeout(self.timeout):
                    _, writer = await asyncio.open_connection(address, port)
                writer.close()
                healthy, load = True, 0.0
            else:
                url = urlsplit(probe)
                host, port = url.hostname or address, url.port or 80
                request = encode_request("GET", url.path or "/", [("Host", host)], b"")
                r = await self.pool.exchange(
                    f"{host}:{port}", host, port, request, head=False,
                    connect_timeout=self.timeout, read_timeout=self.timeout,
                )  # fmt: skip
                report = json.loads(r.body) if r.status == 200 else {}
                healthy = bool(report.get("healthy"))
                load = float(report.get("load", 1.0))
        except (OSError, TimeoutError, ValueError, AttributeError, UpstreamError):
            pass
        targets = self.targets[(address, probe)]
        if healthy != targets[0].healthy:
            names = [t.name for t in targets]
            state = "up" if healthy else "down"
            log.warning("target %s", state, extra={"targets": names, "address": address})
        for target in targets:
            target.healthy, target.load = healthy, load


# -- services --------------------------------------------------------------------------------
@dataclass
class Decision:
    """What the GSLB answers: the records and the SCOPE they hold for, or SERVFAIL."""

    records: list[RR]
    scope: int  # ECS SCOPE PREFIX-LENGTH to answer with (0: good for everyone)
    servfail: bool = False


@dataclass
class TwoLayer:
    name: tuple[bytes, ...]
    layer2: str  # "api.{isp}.gslb.shop.example."
    answers: int
    entries: dict[str, dict[str, list[Target]]]  # isp → region → targets
    backup: int = 0  # live entries of the next region with any, after the region's own
    layer2_names: dict[tuple[bytes, ...], str] = field(default_factory=dict)  # name → isp

    def __post_init__(self) -> None:
        for isp in self.entries:
            self.layer2_names[key(self.layer2.format(isp=isp))] = isp


@dataclass
class Edges:
    name: tuple[bytes, ...]
    edges: list[Target]
    answers: int
    overload: float
    answer_all_when_down: bool = False


class Gslb:
    def __init__(self, policy: dict[str, Any], ipdb: IpDatabase, rng: random.Random | None = None):
        self.ipdb = ipdb
        self.ttl = int(policy.get("ttl", 20))
        default = policy.get("default") or {}
        self.default_isp = str(default.get("isp", ""))
        self.default_region = str(default.get("region", ""))
        self.nearest: dict[str, list[str]] = {
            str(r): [str(x) for x in order] for r, order in (policy.get("nearest") or {}).items()
        }
        self.rng = rng or random.Random()
        self.two_layer: dict[tuple[bytes, ...], TwoLayer] = {}
        self.layer2: dict[tuple[bytes, ...], tuple[TwoLayer, str]] = {}
        self.edges: dict[tuple[bytes, ...], Edges] = {}
        self.targets: list[Target] = []
        for index, service in enumerate(policy.get("services") or []):
            try:
                self._add(service)
            except (KeyError, TypeError, ValueError) as exc:
                exc.add_note(f"services[{index}]")  # where: load() turns it into a line
                raise

    @classmethod
    def load(cls, policy_path: Path, ipdb_path: Path | None = None) -> Gslb:
        try:
            text = policy_path.read_text()
            policy = load_yaml(text)
        except OSError as exc:
            raise GslbError(f"{policy_path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f"{mark.line + 1}" if mark is not None else "1"
            raise GslbError(f"{policy_path}:{line}: {exc}") from None
        if not isinstance(policy, dict):
            raise GslbError(f"{policy_path}:1: expected a mapping")
        ipdb_file = ipdb_path or policy_path.parent / str(policy.get("ipdb", "ipdb.csv"))
        ipdb = IpDatabase.load(ipdb_file)
        try:
            return cls(policy, ipdb)
        except (KeyError, TypeError, ValueError) as exc:
            where = next((n for n in getattr(exc, "__notes__", ()) if n.startswith("services[")),
                         None)  # fmt: skip
            line = _service_line(text, int(where[9:-1])) if where else 1
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise GslbError(f"{policy_path}:{line}: {what}") from None

    def _add(self, service: dict[str, Any]) -> None:
        name = key(str(service["name"]))
        kind = service["kind"]
        answers = int(service.get("answers", 1))
        if kind == "two-layer":
            entries: dict[str, dict[str, list[Target]]] = {}
            for isp, regions in service["entries"].items():
                for region, targets in regions.items():
                    made = [
                        Target(f"{isp}/{region}/{t['address']}", str(t["address"]), str(region),
                               int(t.get("weight", 1)), str(service.get("probe", "")))
                        for t in targets
                    ]  # fmt: skip
                    entries.setdefault(str(isp), {})[str(region)] = made
                    self.targets += made
            svc = TwoLayer(name, str(service["layer2"]), answers, entries,
                           int(service.get("backup", 0)))  # fmt: skip
            self.two_layer[name] = svc
            for layer2_name, isp in svc.layer2_names.items():
                self.layer2[layer2_name] = (svc, isp)
        elif kind == "edges":
            edges = [
                Target(str(e["name"]), str(e["address"]), str(e["region"]),
                       int(e.get("weight", 1)), str(e.get("probe", "")))
                for e in service["edges"]
            ]  # fmt: skip
            when_down = str(service.get("when_all_down", "servfail"))
            if when_down not in ("servfail", "answer-all"):
                raise ValueError(f"when_all_down: {when_down!r} is not servfail or answer-all")
            self.edges[name] = Edges(name, edges, answers, float(service.get("overload", 0.9)),
                                     when_down == "answer-all")  # fmt: skip
            self.targets += edges
        else:
            raise GslbError(f"unknown service kind {kind!r}")

    # -- answering -------------------------------------------------------------------------
    def owns(self, name: tuple[bytes, ...]) -> bool:
        return name in self.two_layer or name in self.layer2 or name in self.edges

    def where(self, client: str, subnet: tuple[str, int] | None) -> tuple[str, str, int]:
        """(ISP, region, scope) for the querier: the ECS subnet if given, else the address."""
        place = self.ipdb.lookup(subnet[0] if subnet else client)
        if place is None:
            # The default is an answer for this network only: SCOPE 0 would tell the
            # resolver it suits everyone, and it would hand it to every client it has.
            return self.default_isp, self.default_region, subnet[1] if subnet else 0
        scope = min(place.network.prefixlen, subnet[1]) if subnet else 0
        return place.isp, place.region, scope

    def answer(
        self, qname: DNSLabel, qtype: int, client: str, subnet: tuple[str, int] | None
    ) -> Decision:
        name = key(qname)
        isp, region, scope = self.where(client, subnet)
        if name in self.two_layer:
            svc = self.two_layer[name]
            isp = isp if isp in svc.entries else self.default_isp
            target = svc.layer2.format(isp=isp)
            cname = RR(qname, QTYPE.CNAME, CLASS.IN, self.ttl, CNAME(target))
            if qtype == QTYPE.CNAME:
                return Decision([cname], scope)
            rest = self._layer2(svc, isp, region, DNSLabel(target), qtype)
            return Decision([cname, *rest.records], scope, rest.servfail)
        if name in self.layer2:
            svc, isp = self.layer2[name]
            decision = self._layer2(svc, isp, region, qname, qtype)
            decision.scope = scope
            return decision
        svc_edges = self.edges[name]
        if qtype != QTYPE.A:
            return Decision([], scope)
        picked = self._edges(svc_edges, region)
        if not picked:
            return Decision([], scope, servfail=True)
        return Decision([self._a(qname, t.address) for t in picked], scope)

    def _a(self, qname: DNSLabel, address: str) -> RR:
        return RR(qname, QTYPE.A, CLASS.IN, self.ttl, A(address))

    def _regions(self, region: str) -> list[str]:
        order = self.nearest.get(region) or self.nearest.get(self.default_region) or []
        return [region, *[r for r in order if r != region]]

    def _layer2(
        self, svc: TwoLayer, isp: str, region: str, qname: DNSLabel, qtype: int
    ) -> Decision:
        if qtype != QTYPE.A:
            return Decision([], 0)  # NODATA: the entries are IPv4
        regions = svc.entries.get(isp, {})
        order = self._regions(region)
        for index, candidate in enumerate(order):
            alive = [t for t in regions.get(candidate, []) if t.healthy]
            if not alive:
                continue
            picked = self._weighted(alive, svc.answers)
            # The backup comes last: clients take the answers in order, so it is used only
            # when the site's own addresses all fail.
            for later in order[index + 1 :] if svc.backup else ():
                taken = {t.address for t in picked}
                others = [t for t in regions.get(later, []) if t.healthy and t.address not in taken]
                if others:
                    picked += self._weighted(others, svc.backup)
                    break
            return Decision([self._a(qname, t.address) for t in picked], 0)
        return Decision([], 0, servfail=True)

    def _edges(self, svc: Edges, region: str) -> list[Target]:
        alive = [t for t in svc.edges if t.healthy]
        overload = svc.overload
        if not alive:
            if not svc.answer_all_when_down:
                return []
            # Every edge, by region alone: a dead edge's load is unknown, not high.
            alive, overload = list(svc.edges), float("inf")
        for candidate in self._regions(region):
            here = [t for t in alive if t.region == candidate and t.load < overload]
            if here:
                here.sort(key=lambda t: t.load)
                return here[: svc.answers]
        alive.sort(key=lambda t: t.load)  # everyone is overloaded: the least loaded
        return alive[: svc.answers]

    def _weighted(self, targets: list[Target], count: int) -> list[Target]:
        """``count`` targets drawn by weight without replacement."""
        pool = list(targets)
        out: list[Target] = []
        while pool and len(out) < count:
            cumulative, total = [], 0
            for t in pool:
                total += max(t.weight, 0)
                cumulative.append(total)
            if total <= 0:
                out += pool[: count - len(out)]
                break
            index = bisect.bisect_right(cumulative, self.rng.random() * total)
            out.append(pool.pop(min(index, len(pool) - 1)))
        return out
