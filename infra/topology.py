"""The topology file: every emulated host, its role, address, ports and entry module."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra import ROOT, load_yaml
from infra.config import ConfigError as BaseConfigError

DEFAULT_PATH = ROOT / "infra" / "topology.yaml"

# The fixed role vocabulary every issue and tool uses.
ROLES = frozenset(
    {
        "dns-root",
        "dns-tld",
        "dns-auth",
        "dns-gslb",
        "resolver",
        "httpdns",
        "cdn-origin",
        "cdn-cache",
        "nat",
        "gateway",
        "controller",
        "inventory",
        "coupon",
        "registry",
        "collector",
        "vpn",
        "router",
        "vpc-router",
    }
)
# The network's own machines: the kernel (NAT, forwarding) or a daemon (WireGuard, BIRD)
# does their work, as root; Docker mode only, one per job (no second instance to fail over
# to, as a cloud's managed gateways), so no fault injection picks them.
APPLIANCES = frozenset({"nat", "vpn", "router", "vpc-router"})
# The order service's roles are its wires' (order-grpc, order-soap, ...): services/wires
# registers them; infra knows only their shape (a test checks the two agree).
ORDER_ROLE = re.compile(r"order-[a-z0-9]+")
PROTOCOLS = frozenset({"http", "https", "grpc", "dns", "dubbo", "nat", "oncrpc"})
MODES = ("process", "docker")

_REF = re.compile(r"\$\{([a-z0-9-]+)(?:\.(address|port))?\}")


class TopologyError(BaseConfigError):
    pass


@dataclass(frozen=True)
class Host:
    name: str
    role: str
    address: str
    port: int
    protocol: str
    module: str
    metrics_port: int | None = None
    networks: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    process: str = ""  # hosts naming the same process share one (infra.group)
    # Docker mode only: the address on each Docker network, and the VPC overlay the host
    # joins (VPC name, overlay address); the host listens on its VPC address when it has one.
    addresses: dict[str, str] = field(default_factory=dict)
    vpc: tuple[str, str] | None = None
    bind_any: bool = False  # listens on every address it has (0.0.0.0), not only ``address``
    volumes: tuple[str, ...] = ()  # named volumes it mounts ("name:/path")
    # The data centre a host stands in (``sites:`` of the file) and its availability zone
    # there; empty for the public side (DNS, resolvers, the CDN), which belongs to no site.
    site: str = ""
    az: str = ""

    def address_on(self, network: str) -> str:
        """Where a peer on ``network`` reaches this host (its only address in process mode)."""
        return self.addresses.get(network, self.address)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def group(self) -> str:
        """The process this host runs in: its own, or the one it shares."""
        return self.process or self.name


def router_address(segment: ipaddress.IPv4Network) -> str:
    """A VPC router's address on one of its VPC's AZ subnets: the subnet's first."""
    return str(next(segment.hosts()))


@dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...]
    networks: dict[str, dict[str, Any]]
    path: Path
    mode: str = "process"
    # Docker mode: VPC name → {vni, subnet}; extra settings of the compose renderer.
    vpcs: dict[str, dict[str, Any]] = field(default_factory=dict)
    docker: dict[str, Any] = field(default_factory=dict)
    # Site name → {main, description, azs}: the data centres, the main one first.
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)

    def segments(self, vpc: str) -> dict[str, tuple[int, ipaddress.IPv4Network]]:
        """A VPC's subnets by AZ, each its own VXLAN segment (VNI, subnet); a VPC without
        ``azs`` is one segment, under the key ""."""
        spec = self.vpcs[vpc]
        parts = spec.get("azs") or {"": spec}
        return {az: (int(p["vni"]), ipaddress.IPv4Network(p["subnet"])) for az, p in parts.items()}

    def segment(self, host: Host) -> tuple[int, ipaddress.IPv4Network]:
        """The VXLAN segment a VPC member is on: its AZ's subnet (a VPC router: the first)."""
        assert host.vpc is not None
        parts = self.segments(host.vpc[0])
        return parts.get(host.az) or next(iter(parts.values()))

    def vpc_router(self, vpc: str) -> Host | None:
        """The router between a VPC's AZ subnets (it holds each subnet's first address,
        ``router_address``)."""
        return next((h for h in self.hosts if h.role == "vpc-router" and h.vpc
                     and h.vpc[0] == vpc), None)  # fmt: skip

    def tenant_of(self, vpc: str) -> str:
        """Whose a VPC is: its ``tenant`` (the north's VPC is the shop's), else its name."""
        return str(self.vpcs.get(vpc, {}).get("tenant") or vpc)

    @property
    def main_site(self) -> str:
        return next((n for n, s in self.sites.items() if s.get("main")), "")

    def in_site(self, site: str) -> list[Host]:
        if site not in self.sites:
            raise TopologyError(f"{self.path}: no site {site!r} (sites: {', '.join(self.sites)})")
        return [h for h in self.hosts if h.site == site]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts if h.role == role]

    def groups(self, hosts: list[Host] | None = None) -> list[list[Host]]:
        """Hosts by the process they run in, in topology order."""
        out: dict[str, list[Host]] = {}
        for host in self.hosts if hosts is None else hosts:
            out.setdefault(host.group, []).append(host)
        return list(out.values())

    def expand(self, value: str) -> str:
        """Replace ``${host}``, ``${host.address}`` and ``${host.port}`` references."""

        def sub(match: re.Match[str]) -> str:
            try:
                host = self.host(match.group(1))
            except KeyError:
                raise TopologyError(f"{self.path}: unknown host in {match.group(0)}") from None
            part = match.group(2)
            return host.address if part == "address" else str(host.port) if part else host.endpoint

        return _REF.sub(sub, value)

    def environment(self, host: Host) -> dict[str, str]:
        return {key: self.expand(str(value)) for key, value in host.env.items()}


def load(path: Path | str | None = None, mode: str | None = None) -> Topology:
    """The topology for process mode (loopback addresses) or Docker mode (``D11_MODE=docker``:
    the Docker networks' addresses, the docker-only hosts, and each host's ``docker.env``)."""
    path = Path(path or os.environ.get("D11_TOPOLOGY") or DEFAULT_PATH)
    mode = mode or os.environ.get("D11_MODE") or "process"
    if mode not in MODES:
        raise TopologyError(f"D11_MODE={mode!r}: expected one of {', '.join(MODES)}")
    try:
        raw = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopologyError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("hosts"), list):
        raise TopologyError(f"{path}: expected a mapping with a 'hosts' list")
    docker = dict(raw.get("docker") or {})
    sites = _sites(path, raw.get("sites"))
    entries = list(raw["hosts"])
    networks = dict(raw.get("networks") or {})
    vpcs: dict[str, dict[str, Any]] = {}
    if mode == "docker":
        entries = [_docker_entry(path, e) for e in entries + list(docker.get("hosts") or [])]
        networks = dict(docker.get("networks") or {})
        vpcs = dict(docker.get("vpcs") or {})
    hosts = tuple(_host(path, i, entry) for i, entry in enumerate(entries))
    _check(path, hosts, sites)
    topology = Topology(hosts=hosts, networks=networks, path=path, mode=mode, vpcs=vpcs,
                        docker=docker, sites=sites)  # fmt: skip
    for host in hosts:
        topology.environment(host)  # fail now on dangling ${host} references
    return topology


def _docker_entry(path: Path, entry: Any) -> dict[str, Any]:
    """A host entry as Docker mode sees it: its addresses on the Docker networks, its VPC,
    its own container (no shared process), and ``docker.env`` over ``env``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("docker"), dict):
        name = entry.get("name") if isinstance(entry, dict) else entry
        raise TopologyError(f"{path}: host {name!r} has no docker addresses")
    spec = dict(entry["docker"])
    vpc = spec.pop("vpc", None)
    listen = str(spec.pop("listen", ""))
    volumes = [str(v) for v in spec.pop("volumes", None) or ()]
    env = {**(entry.get("env") or {}), **(spec.pop("env", None) or {})}
    addresses = {str(k): str(v) for k, v in spec.items()}
    out = {**entry, "env": env, "process": "", "addresses": addresses,
           "networks": list(addresses), "volumes": volumes}  # fmt: skip
    if vpc:
        ((vpc_name, vpc_address),) = dict(vpc).items()
        out["vpc"] = (str(vpc_name), str(vpc_address))
    if listen not in ("", "any", *addresses):
        raise TopologyError(f"{path}: {entry.get('name')}: listen {listen!r} is not a network")
    out["bind_any"] = listen == "any"
    if listen in addresses:
        out["address"] = addresses[listen]
    elif vpc and not listen:
        out["address"] = out["vpc"][1]
    elif addresses:
        out["address"] = next(iter(addresses.values()))
    return out


def _host(path: Path, index: int, entry: Any) -> Host:
    where = f"{path}: hosts[{index}]"
    if not isinstance(entry, dict):
        raise TopologyError(f"{where}: expected a mapping")
    try:
        host = Host(
            name=str(entry["name"]),
            role=str(entry["role"]),
            address=str(entry["address"]),
            port=int(entry["port"]),
            protocol=str(entry.get("protocol", "http")),
            module=str(entry["module"]),
            metrics_port=int(entry["metrics_port"]) if entry.get("metrics_port") else None,
            networks=tuple(entry.get("networks") or ()),
            env={str(k): str(v) for k, v in (entry.get("env") or {}).items()},
            process=str(entry.get("process") or ""),
            addresses=dict(entry.get("addresses") or {}),
            vpc=entry.get("vpc"),
            bind_any=bool(entry.get("bind_any")),
            volumes=tuple(entry.get("volumes") or ()),
            site=str(entry.get("site") or ""),
            az=str(entry.get("az") or ""),
        )
    except KeyError as exc:
        raise TopologyError(f"{where}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"{where}: {exc}") from None
    if host.role not in ROLES and not ORDER_ROLE.fullmatch(host.role):
        raise TopologyError(f"{where} ({host.name}): unknown role {host.role!r}")
    if host.protocol not in PROTOCOLS:
        raise TopologyError(f"{where} ({host.name}): unknown protocol {host.protocol!r}")
    try:
        ipaddress.ip_address(host.address)
    except ValueError:
        raise TopologyError(f"{where} ({host.name}): bad address {host.address!r}") from None
    return host


def _sites(path: Path, raw: Any) -> dict[str, dict[str, Any]]:
    """``sites:``: name → {main, description, azs}; exactly one main site when any."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise TopologyError(f"{path}: sites: expected a mapping of site → settings")
    sites = {str(name): {"main": bool(spec.get("main")),
                         "description": str(spec.get("description") or ""),
                         "azs": [str(az) for az in spec.get("azs") or ()]}
             for name, spec in raw.items()}  # fmt: skip
    mains = [name for name, spec in sites.items() if spec["main"]]
    if len(mains) != 1:
        raise TopologyError(f"{path}: sites: exactly one main site, not {mains or 'none'}")
    return sites


def _check(path: Path, hosts: tuple[Host, ...], sites: dict[str, dict[str, Any]]) -> None:
    names: set[str] = {h.name for h in hosts}
    seen: set[str] = set()
    listeners: dict[tuple[str, str, int], str] = {}
    group_sites: dict[str, str] = {}
    for host in hosts:
        # `down --site` stops processes: one process may not stand in two sites.
        if group_sites.setdefault(host.group, host.site) != host.site:
            raise TopologyError(f"{path}: {host.name}: process {host.group!r} spans two sites")
        if host.site and host.site not in sites:
            raise TopologyError(f"{path}: {host.name}: unknown site {host.site!r}")
        if host.az and host.az not in (sites.get(host.site) or {}).get("azs", ()):
            raise TopologyError(f"{path}: {host.name}: az {host.az!r} is not one of site"
                                f" {host.site or '(none)'!r}'s")  # fmt: skip
        if host.name in seen:
            raise TopologyError(f"{path}: host {host.name!r} is listed twice")
        seen.add(host.name)
        if host.process in names:
            raise TopologyError(f"{path}: {host.name}: process {host.process!r} is a host's name")
        for port in filter(None, (host.port, host.metrics_port)):
            # VPCs may reuse each other's addresses: an overlay address is per VPC.
            key = (host.vpc[0] if host.vpc else "", host.address, port)
            other = listeners.setdefault(key, host.name)
            if other != host.name:
                raise TopologyError(
                    f"{path}: {host.name} and {other} both listen on {host.address}:{port}"
                )
