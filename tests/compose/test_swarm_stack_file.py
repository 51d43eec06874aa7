"""swarm/stack.yaml against the topology it is rendered from, and the fabric's directory over
real UDP, without a Docker engine."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket

import pytest
import yaml

from infra import fabric, swarm
from infra import topology as topo
from tests.conftest import d11

T = topo.load(mode="docker")


@pytest.fixture(scope="module")
def stack() -> dict:
    return yaml.safe_load(swarm.STACK_FILE.read_text())


def test_rendered_stack_is_current() -> None:
    result = d11("swarm", "render", "--check", check=False)
    assert result.returncode == 0, result.stderr


def test_every_host_is_one_placed_replica_on_the_fabric(stack: dict) -> None:
    services = stack["services"]
    assert set(services) == {h.name for h in T.hosts} | {"phone", fabric.DIRECTORY}
    for name, s in services.items():
        deploy = s["deploy"]
        assert deploy["replicas"] == 1, name
        assert deploy["restart_policy"]["condition"] == "any", name
        assert s["networks"] == ["fabric"], name  # no fixed address: Swarm has none
        assert s["image"] == f"${{D11_IMAGE:-{swarm.IMAGE}}}", name
        if name == fabric.DIRECTORY:
            continue
        assert s["environment"]["D11_FABRIC"] == "1", name
        assert s["cap_add"] == ["NET_ADMIN"] and s["user"] == "root", name
        (constraint,) = deploy["placement"]["constraints"]
        where = "phones" if name == "phone" else swarm.part(T, T.host(name))
        assert constraint == f"node.labels.d11.{where} == true", name
    # Hosts sharing a (node-local) volume must share a part, hence a node.
    by_volume: dict[str, set[str]] = {}
    for s in services.values():
        for v in s.get("volumes", []):
            by_volume.setdefault(v.split(":")[0], set()).add(
                s["deploy"]["placement"]["constraints"][0]
            )
    assert by_volume and all(len(parts) == 1 for parts in by_volume.values()), by_volume
    assert stack["networks"]["fabric"]["driver"] == "overlay"


def test_the_ca_reaches_the_hosts_that_used_the_pki_volume(stack: dict) -> None:
    compose = yaml.safe_load((swarm.ROOT / "compose.yaml").read_text())["services"]
    users = {n for n, s in compose.items()
             if any(v.startswith("pki:") for v in s.get("volumes", []))}  # fmt: skip
    assert users, "compose.yaml shares the CA through the pki volume"
    for name in users:
        targets = {c["target"]: c for c in stack["services"][name]["configs"]}
        assert f"{swarm.PKI_TARGET}/ca.crt" in targets, name
        key = targets.get(f"{swarm.PKI_TARGET}/ca.key")
        assert (key is None) == (name == "phone"), name  # the phone only trusts
        if key:
            assert key["mode"] == 0o400 and key["uid"] == swarm.D11_UID


def test_placement_keeps_the_sites_and_the_phones_apart() -> None:
    three = swarm.placement(T, 3)
    assert three[T.main_site] == 1 and three["north"] == 2 and three["phones"] == 3
    two = swarm.placement(T, 2)
    assert two[T.main_site] == 1 and {two["north"], two["internet"], two["phones"]} == {2}


def test_fabric_networks_each_get_their_own_vni() -> None:
    vnis = {net: fabric.vni(T, net) for net in T.networks}
    assert len(set(vnis.values())) == len(vnis)
    vpc_vnis = {v for vpc in T.vpcs for v, _ in T.segments(vpc).values()}
    assert not vpc_vnis & set(vnis.values())  # a lab network never shares a VPC's VNI
    members = fabric.members(T)
    assert members["internet"]["phone"] == T.docker["phone"]["internet"]
    for host in T.hosts:
        for net, address in host.addresses.items():
            assert members[net][host.name] == address


def test_the_directory_answers_every_host_it_has_heard_with_its_source_address() -> None:
    async def scenario() -> tuple[dict, dict, bool]:
        task = asyncio.create_task(fabric.serve_directory(47911))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()

        def ask(name: bytes, source: str) -> dict | None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((source, 0))
                s.settimeout(1)
                s.sendto(name, ("127.0.0.1", 47911))
                try:
                    return json.loads(s.recv(65535))
                except TimeoutError:
                    return None

        first = await loop.run_in_executor(None, ask, b"dns-root", "127.0.0.2")
        second = await loop.run_in_executor(None, ask, b"gateway\n", "127.0.0.3")
        junk = await loop.run_in_executor(None, ask, b"\x00\xff" * 40, "127.0.0.4")
        task.cancel()
        return first or {}, second or {}, junk is None

    first, second, junk_ignored = asyncio.run(scenario())
    assert first == {"dns-root": "127.0.0.2"}
    assert second == {"dns-root": "127.0.0.2", "gateway": "127.0.0.3"}
    assert junk_ignored  # no answer, no entry, the directory still serving


def test_peers_know_every_address_a_host_holds_without_arp() -> None:
    extra = fabric.extra_addresses(T)
    blocks = T.docker["phone"]["places"].values()
    phones = {str(a) for b in blocks for a in ipaddress.IPv4Network(b).hosts()}
    assert set(extra["internet"]["phone"]) == phones
    for nat in T.by_role("nat"):
        public = {a for a in T.environment(nat)["D11_NAT_PUBLIC"].split(",")}
        (edge,) = [n for n in nat.addresses if n != "underlay"]
        assert set(extra[edge][nat.name]) == public - {nat.addresses[edge]}
