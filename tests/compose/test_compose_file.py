"""compose.yaml and the Docker copies of the DNS data against the topology they are
rendered from, checked without a Docker engine: the renderer's --check, Compose v1 itself
(`docker-compose config`), named-checkzone, and the file read service by service."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess

import pytest
import yaml

from infra import ROOT
from infra import topology as topo
from infra.compose import DOCKER_DIR
from tests.conftest import d11

COMPOSE = ROOT / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def docker_topology() -> topo.Topology:
    return topo.load(mode="docker")


def test_rendered_files_are_current() -> None:
    result = d11("compose", "--check", check=False)
    assert result.returncode == 0, result.stderr


def test_compose_v1_accepts_the_file() -> None:
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose (v1) is not installed")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "name" not in yaml.safe_load(COMPOSE.read_text())  # v2 only: keep it out


def test_every_host_has_its_container(compose: dict, docker_topology: topo.Topology) -> None:
    process = topo.load(mode="process")
    services = compose["services"]
    assert {h.name for h in process.hosts} <= set(services)
    assert {h.name for h in docker_topology.hosts} | {"phone", "boost"} == set(services)
    for host in docker_topology.hosts:
        s = services[host.name]
        env = s["environment"]
        assert env["D11_SERVICE"] == host.name and env["D11_ROLE"] == host.role
        assert env["D11_PORT"] == str(host.port)
        assert (env.get("D11_SITE", ""), env.get("D11_AZ", "")) == (host.site, host.az)
        assert env["D11_ADDRESS"] in (host.address, "0.0.0.0")
        addresses = {net: spec["ipv4_address"] for net, spec in s["networks"].items()}
        assert addresses == host.addresses, host.name
        for net, address in addresses.items():
            subnet = ipaddress.ip_network(compose["networks"][net]["ipam"]["config"][0]["subnet"])
            assert ipaddress.ip_address(address) in subnet
        assert s["healthcheck"]["test"][0] == "CMD", host.name
        for dep in (s.get("depends_on") or {}).values():
            assert dep == {"condition": "service_healthy"}
        # Only the network set-up needs privileges; the services themselves do not.
        assert ("NET_ADMIN" in (s.get("cap_add") or [])) == (s.get("user") == "root")


def test_no_address_is_held_twice(compose: dict) -> None:
    """Containers' addresses and the NATs' public aliases, per network: a NAT alias on a
    resolver's address once made that resolver unreachable."""
    held: dict[str, str] = {}
    for name, s in compose["services"].items():
        addresses = [spec["ipv4_address"] for spec in s.get("networks", {}).values()]
        aliases = str(s["environment"].get("D11_NAT_PUBLIC", "")).split(",")
        for address in {*addresses, *filter(None, aliases)}:
            other = held.setdefault(address, name)
            assert other == name, f"{address}: {other} and {name}"


def test_only_the_entry_and_the_viewer_are_published(compose: dict) -> None:
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"nat-east", "collector"}
    for name in published:
        for port in compose["services"][name]["ports"]:
            assert port.startswith("127.0.0.1:"), port  # never on the host's other interfaces


def test_networks_are_benchmarking_or_test_net(compose: dict) -> None:
    allowed = [ipaddress.ip_network(n) for n in
               ("198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24")]  # fmt: skip
    for name, net in compose["networks"].items():
        subnet = ipaddress.ip_network(net["ipam"]["config"][0]["subnet"])
        assert any(subnet.subnet_of(a) for a in allowed), (name, subnet)


def test_the_booster_has_the_engine_and_no_network(compose: dict) -> None:
    boost = compose["services"]["boost"]
    assert boost["network_mode"] == "none" and "networks" not in boost
    assert boost["volumes"] == ["/var/run/docker.sock:/var/run/docker.sock"]
    assert boost["entrypoint"] == ["python", "-m", "infra.boost"]


def test_phone_uses_our_resolver(compose: dict, docker_topology: topo.Topology) -> None:
    phone = compose["services"]["phone"]
    assert phone["dns"] == [docker_topology.host("resolver-telecom").address]
    places = dict(p.split("=") for p in phone["environment"]["D11_PHONE_PLACES"].split(","))
    assert set(places) == {"telecom/east", "telecom/north", "unicom/east", "unicom/north"}


def test_vpc_members_share_vnis(docker_topology: topo.Topology) -> None:
    vpcs = docker_topology.vpcs
    assert vpcs["shop"]["vni"] != vpcs["tenant-b"]["vni"]
    shop = {h.name for h in docker_topology.hosts if h.vpc and h.vpc[0] == "shop"}
    assert {"controller-1", "controller-2", "order-soap", "order-dubbo", "order-grpc",
            "inventory", "coupon"} <= shop  # fmt: skip


@pytest.mark.parametrize("zone", sorted(p.name for p in (DOCKER_DIR / "zones").glob("*.zone")))
def test_docker_zones_pass_named_checkzone(zone: str) -> None:
    origin = "." if zone == "root.zone" else zone.removesuffix(".zone") + "."
    result = subprocess.run(
        ["named-checkzone", "-k", "fail", "-n", "fail", origin, str(DOCKER_DIR / "zones" / zone)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_dns_data_has_no_loopback_addresses(docker_topology: topo.Topology) -> None:
    """Glue, zone data and GSLB entries point at Docker addresses, and the ones naming a
    host (name servers, edges) at that host's address."""
    loopback = re.compile(r"(?<![\d.])127\.\d+\.\d+\.\d+")
    for path in [*DOCKER_DIR.glob("zones/*.zone"), *DOCKER_DIR.glob("gslb/*.yaml")]:
        assert not loopback.search(path.read_text()), path
    root = (DOCKER_DIR / "zones" / "root.zone").read_text()
    assert docker_topology.host("dns-tld").address in root
    cdn = yaml.safe_load((DOCKER_DIR / "gslb" / "cdn.yaml").read_text())
    for edge in cdn["services"][0]["edges"]:
        assert edge["address"] == docker_topology.host(edge["name"]).address
