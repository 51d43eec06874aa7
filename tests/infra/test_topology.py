from __future__ import annotations

import ipaddress
import json

import httpx
import pytest
import yaml

from infra import topology
from infra.config import ConfigError, Settings


def test_shipped_topology_is_valid_and_uses_the_role_vocabulary():
    t = topology.load()
    roles = {h.role for h in t.hosts}
    assert {r for r in roles if not topology.ORDER_ROLE.fullmatch(r)} <= topology.ROLES
    assert t.by_role("collector"), "traces need a collector"
    for host in t.hosts:
        assert host.address.startswith("127."), host


def test_references_expand_to_address_and_port():
    t = topology.load()
    gw = t.environment(t.host("gateway"))
    c1, c2 = t.host("controller-1"), t.host("controller-2")
    assert gw["D11_UPSTREAM_CONTROLLERS"] == f"{c1.address}:{c1.port},{c2.address}:{c2.port}"
    assert t.expand("${gateway.address}|${gateway.port}") == "127.10.0.10|8080"


def _write(tmp_path, hosts):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"hosts": hosts}))
    return path


HOST = {"name": "a", "role": "gateway", "address": "127.1.0.1", "port": 1, "module": "gateway"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "load-balancer"}, "unknown role"),
        ({"protocol": "smtp"}, "unknown protocol"),
        ({"address": "localhost"}, "bad address"),
        ({"port": "eighty"}, "invalid literal"),
        ({"env": {"X": "${nowhere}"}}, "unknown host"),
    ],
)
def test_bad_topologies_are_refused_with_the_reason(tmp_path, change, message):
    with pytest.raises(topology.TopologyError, match=message):
        topology.load(_write(tmp_path, [{**HOST, **change}]))


def test_two_hosts_on_one_listener_are_refused(tmp_path):
    with pytest.raises(topology.TopologyError, match=r"both listen on 127\.1\.0\.1:1"):
        topology.load(_write(tmp_path, [HOST, {**HOST, "name": "b"}]))


SITES = {"east": {"main": True, "azs": ["east-a", "east-b"]}, "north": {"azs": ["north-a"]}}


@pytest.mark.parametrize(
    ("sites", "hosts", "message"),
    [
        (SITES, [{**HOST, "site": "south"}], "unknown site 'south'"),
        (SITES, [{**HOST, "site": "east", "az": "north-a"}], "az 'north-a' is not one of"),
        (SITES, [{**HOST, "az": "east-a"}], "az 'east-a' is not one of"),
        (SITES, [{**HOST, "site": "east", "process": "p"},
                 {**HOST, "name": "b", "port": 2, "site": "north", "process": "p"}],
         "process 'p' spans two sites"),
        ({"east": {"azs": []}}, [HOST], "exactly one main site"),
    ],
)  # fmt: skip
def test_sites_and_zones_are_checked(tmp_path, sites, hosts, message):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"sites": sites, "hosts": hosts}))
    with pytest.raises(topology.TopologyError, match=message):
        topology.load(path)


def test_every_data_centre_host_has_a_site_and_an_az_and_north_is_an_access_site():
    t = topology.load()
    assert t.main_site == "east" and list(t.sites) == ["east", "north"]
    for host in t.hosts:
        in_dc = any(n.startswith("dc") for n in host.networks)
        assert bool(host.site) == in_dc and bool(host.az) == in_dc, host.name
    north = t.in_site("north")
    assert {h.role for h in north} == {"gateway", "controller"}
    assert len({h.az for h in north if h.role == "gateway"}) == 2, "gateways in both AZs"
    # Every store is the main site's.
    for role in ("inventory", "coupon", "registry"):
        assert all(h.site == "east" for h in t.by_role(role))
    # Docker mode adds the north's own NAT, each site's VPN gateway (in its own VPC), BGP
    # border router and VPC router (between its AZ subnets).
    docker = topology.load(mode="docker")
    north = {h.role for h in docker.in_site("north")}
    assert north == {"gateway", "controller", "nat", "vpn", "router", "vpc-router"}
    # Each AZ of a site's VPC is its own subnet and segment: every member sits in its AZ's
    # subnet, and the VPC's router holds the first address of each.
    for name, spec in docker.vpcs.items():
        if not spec.get("azs"):
            continue
        router = docker.vpc_router(name)
        segments = docker.segments(name)
        assert router is not None and len({v for v, _ in segments.values()}) == len(segments)
        for h in docker.hosts:
            if h.vpc and h.vpc[0] == name and h is not router:
                _vni, net = docker.segment(h)
                assert ipaddress.IPv4Address(h.vpc[1]) in net, (h.name, net)
                assert topology.router_address(net) != h.vpc[1]
    assert {h.vpc[0] for h in docker.by_role("vpn")} == {"shop", "north"}
    with pytest.raises(topology.TopologyError, match="no site 'south'"):
        t.in_site("south")


def test_settings_come_from_d11_variables():
    env = {"D11_SERVICE": "x", "D11_PORT": "81", "D11_UPSTREAMS": "a:1, b:2", "D11_T": "0.5"}
    s = Settings.from_env(env, name="d", role="gateway", port=80)
    assert (s.name, s.role, s.port) == ("x", "gateway", 81)
    assert s.get_list("UPSTREAMS") == ["a:1", "b:2"]
    assert s.get_float("T", 1.0) == 0.5
    with pytest.raises(ConfigError, match="D11_MISSING"):
        s.get("MISSING")
    with pytest.raises(ConfigError, match="D11_PORT"):
        Settings.from_env({"D11_PORT": "x"}, name="d", role="gateway", port=80)


def test_hosts_sharing_a_process_are_still_hosts(stack):
    """The DNS servers and the CDN's nodes share a process each, yet each has its own
    address and health, its own /metrics, its own log name, and its own service name on
    spans (checked in test_cdn's tier-by-tier trace)."""
    topology = stack.topology
    groups = {tuple(h.name for h in g) for g in topology.groups() if len(g) > 1}
    assert any("dns-root" in g for g in groups) and any("cdn-edge-east" in g for g in groups)
    rows = {r["name"]: r for r in json.loads(stack.d11("status", "--json").stdout)}
    for group in groups:
        pids = {rows[name]["pid"] for name in group}
        assert len(pids) == 1 and None not in pids, group
        assert all(rows[name]["healthy"] for name in group)
        for name in group:
            host = topology.host(name)
            port = host.metrics_port or host.port
            metrics = httpx.get(f"http://{host.address}:{port}/metrics", timeout=5)
            assert metrics.status_code == 200 and "d11_requests" in metrics.text, name
            assert (stack.run_dir / "logs" / f"{name}.log").exists()
    # Stopping one of them stops its process; starting it brings the whole process back.
    stack.d11("down", "cdn-region-north")
    rows = {r["name"]: r for r in json.loads(stack.d11("status", "--json", check=False).stdout)}
    assert not rows["cdn-edge-east"]["healthy"] and not rows["cdn-region-north"]["healthy"]
    stack.d11("up", "--detach", "cdn-region-north")
    rows = {r["name"]: r for r in json.loads(stack.d11("status", "--json").stdout)}
    cdn = [h.name for h in topology.hosts if h.group == topology.host("cdn-edge-east").group]
    assert all(rows[name]["healthy"] for name in cdn)
