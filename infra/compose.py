"""Docker mode, rendered from the topology: ``compose.yaml`` and the Docker copies of the
DNS data (``docker/zones``, ``docker/gslb``), and the image's own lock
(``docker/requirements.lock``: the pins of requirements.lock the services need at run time,
without the test and development tools).

``./d11 compose`` writes them; ``./d11 compose --check`` fails when a committed file
differs from what the topology gives (CI runs it through the tests). compose.yaml keeps to
what Compose v1.29 and v2 both accept: no top-level ``name:``, no ``start_interval``.

The zones and GSLB policies are the process-mode files with every address translated:
each host's loopback address becomes its Docker address, and ``docker.translate`` in the
topology covers the rest (public entry addresses, the probe port the NAT exposes). A
loopback address left over is an error, so nothing of process mode leaks into containers.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from infra import ROOT, render_command
from infra import topology as topo
from infra.topology import Host, Topology

COMPOSE_FILE = ROOT / "compose.yaml"
DOCKER_DIR = ROOT / "docker"
ZONES = ROOT / "dns" / "zones"
POLICIES = ROOT / "dns" / "gslb"
IMAGE = "double-11:latest"
BASE = "python:3.11-slim"  # what real users build on; D11_BASE_IMAGE picks another
PKI_DIR = "/var/lib/d11/pki"
# Only these reach the host: the public entry (through the NAT) and the trace viewer.
PUBLISHED = {"nat": "127.0.0.1:${D11_HTTPS_PORT:-8443}:443",
             "collector": "127.0.0.1:${D11_VIEWER_PORT:-16686}:4318"}  # fmt: skip
HEADER = """\
# Double-11 in containers: every host of infra/topology.yaml in its own container.
# RENDERED by `./d11 compose` from infra/topology.yaml; edit that file, not this one
# (a test fails when the two disagree).
#
#   docker compose up            (or docker-compose up, v1.29)
#   https://localhost:8443        the public entry, through the NAT gateway
#   http://localhost:16686        the trace viewer
#   docker compose exec phone python -m infra load --scenario flash-sale
#
# Networks (TEST-NET and benchmarking ranges): internet 198.19.0.0/16, underlay
# 198.18.0.0/24, and inside the containers the VXLAN VPCs 198.18.100.0/24 (VNI 100, the
# shop; VNI 200, another tenant). See docker/README.md.
"""
_CALLS = re.compile(r"\$\{([a-z0-9-]+)\}")  # ${host}: an endpoint it calls (not ${host.address})
_LOOPBACK = re.compile(r"(?<![\d.])127\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d.])")


def needs_net_admin(t: Topology, host: Host) -> bool:
    """VPC members (VXLAN), the NAT, the VPN and BGP routers, gateways (replies to DNATed
    clients go back through the NAT), and with BGP every host of the access network (its
    route to the sites' public prefixes through its ISP's router)."""
    if host.vpc is not None or host.role in topo.APPLIANCES or host.role == "gateway":
        return True
    return "bgp" in t.docker and "internet" in host.addresses


def depends(t: Topology, host: Host) -> list[str]:
    """Hosts this one needs healthy first: those whose endpoint its settings name (it calls
    them; naming an address alone is no dependency), and the collector."""
    names = {m.group(1) for v in host.env.values() for m in _CALLS.finditer(v)}
    names |= {h.name for h in t.by_role("collector")}
    names.discard(host.name)
    return [h.name for h in t.hosts if h.name in names]


def collector_for(t: Topology, networks: list[str]) -> str:
    collector = t.by_role("collector")[0]
    shared = [n for n in networks if n in collector.addresses] or list(collector.addresses)
    return f"http://{collector.address_on(shared[0])}:{collector.port}"


def environment(t: Topology, host: Host) -> dict[str, str]:
    env = {
        "D11_SERVICE": host.name,
        "D11_ROLE": host.role,
        "D11_ADDRESS": "0.0.0.0" if host.bind_any else host.address,
        "D11_PORT": str(host.port),
        "OTEL_SERVICE_NAME": host.name,
    }
    if host.metrics_port:
        env["D11_METRICS_PORT"] = str(host.metrics_port)
    if host.site:
        env.update(D11_SITE=host.site, D11_AZ=host.az)
    if host.vpc is not None:
        env["D11_VNI"] = str(t.segment(host)[0])
    if host.role != "collector":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector_for(t, list(host.addresses))
    env.update(t.environment(host))
    return env


def healthcheck(host: Host) -> dict[str, Any]:
    test = (["CMD", "python", "-m", "infra.nat", "--check"] if host.role == "nat"
            else ["CMD", "python", "-S", "infra/healthcheck.py", host.protocol])  # fmt: skip
    # Each check is a `docker exec` (runc, the shim, dockerd: ~0.1 s of CPU however cheap
    # the check), so 26 of them every 3 s kept most of a core busy on an idle stack. Compose
    # waits for health level by level at start, so the interval also paces `up`; v1.29's
    # engine has no start_interval for a faster first check.
    return {"test": test, "interval": "10s", "timeout": "3s", "retries": 20,
            "start_period": "60s"}  # fmt: skip


def networks_of(t: Topology, addresses: dict[str, str]) -> dict[str, Any]:
    return {net: {"ipv4_address": addresses[net]} for net in t.networks if net in addresses}


def service(t: Topology, host: Host) -> dict[str, Any]:
    out: dict[str, Any] = {
        "<<": "*service",
        "hostname": host.name,
        "environment": environment(t, host),
        "networks": networks_of(t, host.addresses),
        "healthcheck": healthcheck(host),
    }
    if deps := depends(t, host):
        out["depends_on"] = {d: {"condition": "service_healthy"} for d in deps}
    if needs_net_admin(t, host):
        out["cap_add"] = ["NET_ADMIN"]
        out["user"] = "root"  # infra.container sets the network up, then drops to d11
    if host.role in topo.APPLIANCES:
        out["sysctls"] = {"net.ipv4.ip_forward": 1}
    if host.role == "vpn":
        out["devices"] = ["/dev/net/tun"]  # wireguard-go's TUN, where the kernel has no module
    if host.role in PUBLISHED and host.site in ("", t.main_site):
        out["ports"] = [PUBLISHED[host.role]]  # one entry on this machine: the main site's
    if host.volumes:
        out["volumes"] = list(host.volumes)
    return out


def phone(t: Topology) -> dict[str, Any]:
    spec = t.docker["phone"]
    addresses = {k: v for k, v in spec.items() if k in t.networks}
    resolver = t.host(spec["resolver"])
    return {
        "<<": "*service",
        "hostname": "phone",
        # The phone container is ./d11 load's home: `docker compose exec phone python -m
        # infra load ...`. It idles until then.
        "environment": {
            "D11_SERVICE": "phone",
            # A flash sale in the phone's log once everything is healthy ("off": none).
            "D11_PHONE_DEMO": "${D11_PHONE_DEMO:-flash-sale}",
            "D11_API_PORT": "443",
            "D11_PHONE_PLACES": ",".join(f"{k}={v}" for k, v in spec["places"].items()),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector_for(t, list(addresses)),
        },
        "networks": networks_of(t, addresses),
        "dns": [resolver.address],
        "cap_add": ["NET_ADMIN"],  # its phones' addresses, one block per ISP/region
        # The phones stand for other machines: when the cores are contested they yield to
        # the shop (a restarting container first of all), as process mode's phones do by
        # running at nice 10. A nice inside a container cannot do it: the scheduler shares
        # the CPU between containers' cgroups first. 128 of the default 1024 is about the
        # weight nice 10 gives a process (110 of 1024).
        "cpu_shares": 128,
        "user": "root",
        "volumes": [f"pki:{PKI_DIR}:ro"],
        # Everything of the shop (the first VPC): not the other tenant.
        "depends_on": {h.name: {"condition": "service_healthy"} for h in t.hosts
                       if h.vpc is None or h.vpc[0] == next(iter(t.vpcs))},
    }  # fmt: skip


def boost() -> dict[str, Any]:
    """The startup CPU boost (infra/boost.py): the engine's socket, no network."""
    return {
        "<<": "*service",
        "entrypoint": ["python", "-m", "infra.boost"],
        "environment": {
            "D11_SERVICE": "boost",
            "D11_ADDRESS": "127.0.0.1",  # its health check's, on its own loopback
            "D11_PORT": "9000",
            "OTEL_SDK_DISABLED": "true",  # no network: nothing to export to
        },
        "network_mode": "none",
        # Root for the engine's socket (root:docker 0660), which is root's power on this
        # machine: a lab's trade, as any container given the socket (Portainer, Traefik).
        "user": "root",
        "volumes": ["/var/run/docker.sock:/var/run/docker.sock"],
        "healthcheck": {
            "test": ["CMD", "python", "-S", "infra/healthcheck.py", "http"],
            "interval": "10s", "timeout": "3s", "retries": 3, "start_period": "10s",
        },
    }  # fmt: skip


class _Dumper(yaml.SafeDumper):
    """Short all-scalar collections on one line ({ipv4_address: ...}, [CMD, ...]), the
    rest (environments) one entry per line, as people write compose files."""

    def represent_dict(self, data: dict) -> yaml.Node:  # type: ignore[override]
        flat = len(data) <= 2 and not any(isinstance(v, dict | list) for v in data.values())
        return self.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flat)

    def represent_list(self, data: list) -> yaml.Node:  # type: ignore[override]
        flat = not any(isinstance(v, dict | list) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(dict, _Dumper.represent_dict)
_Dumper.add_representer(list, _Dumper.represent_list)


def render(t: Topology) -> str:
    services = {h.name: service(t, h) for h in t.hosts}
    services["phone"] = phone(t)
    services["boost"] = boost()
    doc = {
        "x-service": {
            "build": {
                "context": ".",
                "args": {"BASE_IMAGE": f"${{D11_BASE_IMAGE:-{BASE}}}"},
            },
            "image": IMAGE,  # D11_MODE=docker, the run and PKI directories: the image's ENV
            "init": True,
            # The engine is Docker mode's supervisor: a container whose process dies is
            # started again (with the engine's own backoff); `docker compose stop` stays.
            "restart": "unless-stopped",
        },
        "services": services,
        # No masquerading by the host: the lab's networks are closed, and with the host's
        # bridge netfilter it would rewrite the NAT gateway's own DNATed packets.
        "networks": {
            name: {
                "driver": "bridge",
                "driver_opts": {"com.docker.network.bridge.enable_ip_masquerade": "false"},
                "ipam": {"config": [{"subnet": net["subnet"]}]},
            }
            for name, net in t.networks.items()
        },
        "volumes": {v.split(":")[0]: {} for h in t.hosts for v in h.volumes},
    }
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)
    # safe_dump knows nothing of anchors: name the shared block and merge it in each service.
    text = text.replace("x-service:\n", "x-service: &service\n", 1)
    text = text.replace("'<<': '*service'", "<<: *service")
    return HEADER + text


# -- the DNS data -----------------------------------------------------------------------------
def translations(process: Topology, docker: Topology) -> dict[str, str]:
    out = {}
    for host in process.hosts:
        try:
            other = docker.host(host.name)
        except KeyError:
            continue
        out[host.address] = other.address
    out.update({str(k): str(v) for k, v in (docker.docker.get("translate") or {}).items()})
    return out


def translate(text: str, table: dict[str, str], where: str) -> str:
    words = {k: v for k, v in table.items() if not _LOOPBACK.fullmatch(k)}
    for old, new in words.items():
        text = text.replace(old, new)

    def sub(match: re.Match[str]) -> str:
        try:
            return table[match.group(0)]
        except KeyError:
            raise SystemExit(f"{where}: {match.group(0)} has no Docker address") from None

    return _LOOPBACK.sub(sub, text)


REVERSE_HEAD = """\
; The reverse zone of the lab's {mode} addresses: every host's address → its name (the
; name servers' own names; other hosts <host>.lab.example.). RENDERED by `./d11 compose`
; from infra/topology.yaml and the forward zones: do not edit.
$ORIGIN {origin}
$TTL 3600
@   IN SOA  ns1.nic.example. hostmaster.nic.example. ( 1 7200 3600 1209600 3600 )
@   IN NS   ns1.nic.example.
@   IN NS   ns2.nic.example.
"""


def reverse_zone(t: Topology, forward: list[str], origin: str) -> str:
    """PTR records for every address a host of ``t`` holds under ``origin`` (one /8's
    in-addr.arpa). A name server is named by its NS name in the forward zones."""
    from dnslib import QTYPE, RR

    records = [rr for text in forward for rr in RR.fromZone(text)]
    ns_names = {str(rr.rdata.label) for rr in records if rr.rtype == QTYPE.NS}
    named = {str(rr.rdata): str(rr.rname) for rr in records
             if rr.rtype == QTYPE.A and str(rr.rname) in ns_names}  # fmt: skip
    first = origin.split(".")[0]
    ptr: dict[str, str] = {}
    for host in t.hosts:
        aliases = [a.strip() for a in host.env.get("D11_ADDRESS_ALIASES", "").split(",")]
        for address in dict.fromkeys([host.address, *host.addresses.values(), *aliases]):
            if not address:
                continue
            if address.split(".")[0] == first:
                ptr.setdefault(address, named.get(address, f"{host.name}.lab.example."))
    lines = [REVERSE_HEAD.format(mode=t.mode, origin=origin)]
    for address in sorted(ptr, key=ipaddress.IPv4Address):
        owner = ".".join(reversed(address.split(".")[1:]))
        lines.append(f"{owner:<12} IN PTR {ptr[address]}\n")
    return "".join(lines)


def data_files(process: Topology, docker: Topology) -> dict[Path, str]:
    """docker/zones/* and docker/gslb/* as the topology gives them, and the reverse zones
    of both modes."""
    table = translations(process, docker)
    note = "; Docker mode copy, rendered by `./d11 compose` from dns/zones/{}: do not edit.\n"
    out: dict[Path, str] = {}
    forward = [z for z in sorted(ZONES.glob("*.zone")) if not z.name.endswith(".arpa.zone")]
    for zone in forward:
        text = translate(zone.read_text(), table, str(zone))
        out[DOCKER_DIR / "zones" / zone.name] = note.format(zone.name) + text
    out[ZONES / "127.in-addr.arpa.zone"] = reverse_zone(
        process, [z.read_text() for z in forward], "127.in-addr.arpa."
    )
    out[DOCKER_DIR / "zones" / "198.in-addr.arpa.zone"] = reverse_zone(
        docker, [out[DOCKER_DIR / "zones" / z.name] for z in forward], "198.in-addr.arpa."
    )
    for policy in sorted(POLICIES.glob("*.yaml")):
        text = translate(policy.read_text(), table, str(policy))
        text = re.sub(r"^ipdb: (\S+)", r"ipdb: ../../dns/gslb/\1", text, count=1, flags=re.M)
        head = f"# Docker mode copy, rendered by `./d11 compose` from dns/gslb/{policy.name}.\n"
        out[DOCKER_DIR / "gslb" / policy.name] = head + text
    return out


def runtime_lock() -> str:
    """requirements.lock cut down to the closure of pyproject's run-time dependencies (with
    their extras, markers evaluated for this interpreter), read from the installed metadata
    of the venv that requirements.lock made."""
    from packaging.requirements import Requirement  # in the venv with pip and pytest

    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            pins[key(line.split("==")[0])] = line.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted: dict[str, set[str]] = {}
    todo = [Requirement(d) for d in project["dependencies"]]
    while todo:
        req = todo.pop()
        name, extras = key(req.name), set(req.extras)
        if name in wanted and extras <= wanted[name]:
            continue
        wanted.setdefault(name, set()).update(extras)
        for text in importlib.metadata.requires(req.name) or []:
            sub = Requirement(text)
            active = wanted[name] or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in active):
                todo.append(sub)
    missing = sorted(set(wanted) - set(pins))
    if missing:
        raise SystemExit(f"compose: requirements.lock does not pin {', '.join(missing)}")
    head = ("# The image's run-time pins, rendered by `./d11 compose` from requirements.lock\n"
            "# and pyproject's dependencies: do not edit.\n")  # fmt: skip
    return head + "".join(f"{pins[n]}\n" for n in sorted(wanted))


def rendered() -> dict[Path, str]:
    process, docker = topo.load(mode="process"), topo.load(mode="docker")
    return {COMPOSE_FILE: render(docker), **data_files(process, docker),
            DOCKER_DIR / "requirements.lock": runtime_lock()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return render_command("compose", __doc__ or "", rendered, argv)


if __name__ == "__main__":
    sys.exit(main())
