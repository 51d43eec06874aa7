"""The lab on a three-node Docker Swarm, as `./d11 swarm up --nodes 3` brings it up, checked
from outside: where Swarm put each task (`docker node ps` on the manager), a flash sale with
its audit through `./d11 swarm load`, the lab's own VXLAN between the nodes on the wire
(tshark on the nodes' bridge), a killed task started again by Swarm, and `./d11 swarm down`
leaving no container, network or volume behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from infra import dockerlab, fabric, swarm
from infra import topology as topo
from tests.conftest import d11

T = topo.load(mode="docker")
NODES = 3


def docker(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout


def volumes() -> set[str]:
    return set(docker("volume", "ls", "-q").split())


@pytest.fixture(scope="module")
def volumes_before() -> set[str]:
    try:
        dockerlab.ensure_engine()
    except dockerlab.DockerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine: {exc}")
        pytest.skip(str(exc))
    d11("swarm", "down", timeout=300, check=False)
    return volumes()


@pytest.fixture(scope="module")
def lab(volumes_before: set[str]) -> Iterator[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D11_", "OTEL_"))}
    try:
        d11("swarm", "up", "--nodes", str(NODES), env=env, timeout=1200)
        yield
    finally:
        d11("swarm", "down", env=env, timeout=300, check=False)


def node_tasks(node: int) -> set[str]:
    """The running tasks Swarm placed on node-N, by service, as its manager reports them."""
    out = swarm.on(1, "docker", "node", "ps", f"node-{node}", "--filter",
                   "desired-state=running", "--format", "{{.Name}}")  # fmt: skip
    return {line.split(".")[0].removeprefix(f"{swarm.STACK}_") for line in out.split()}


def test_tasks_spread_over_the_nodes_by_site_and_role(lab: None) -> None:
    placed = {n: node_tasks(n) for n in range(1, NODES + 1)}
    where = swarm.placement(T, NODES)
    assert all(placed.values()), placed
    for host in T.hosts:
        node = where[swarm.part(T, host)]
        assert host.name in placed[node], (host.name, node, placed)
    assert "phone" in placed[where["phones"]]
    assert where[T.main_site] != where["phones"]  # the data centre and the phones apart
    assert {h.name for h in T.hosts if h.site == "north"} <= placed[where["north"]]
    assert where["north"] != where[T.main_site]


def test_a_killed_task_comes_back_on_its_own(lab: None) -> None:
    """A gateway's task killed: Swarm starts another (a new fabric address), which must
    also be reachable again (the flash sale after this test goes through it)."""
    victim = next(c for c in swarm.tasks() if c["service"] == "gateway-north")
    swarm.on(int(victim["node"]), "docker", "kill", victim["id"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        again = [c for c in swarm.tasks() if c["service"] == "gateway-north"
                 and c["id"] != victim["id"] and "(healthy)" in c["status"]]  # fmt: skip
        if again:
            return
        time.sleep(1)
    pytest.fail("gateway-north was not running and healthy again within 120 s")


def test_a_flash_sale_passes_its_audit(lab: None) -> None:
    result = d11("swarm", "load", "--scenario", "flash-sale", "--orders", "300",
                 "--concurrency", "32", "--duration", "120", timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "audit PASSED" in result.stdout, result.stdout[-3000:]
    failed = re.search(r"failed visits: (\d+)", result.stdout)
    assert failed and int(failed.group(1)) <= 6, result.stdout[-3000:]  # 2 % of 300


def test_the_lab_networks_cross_the_nodes_inside_swarms_vxlan(lab: None) -> None:
    if not shutil.which("tshark"):
        pytest.skip("tshark is not installed")
    bridge = "br-" + docker("network", "inspect", swarm.BRIDGE, "--format", "{{.Id}}")[:12]
    capture = subprocess.Popen(
        ["tshark", "-i", bridge, "-a", "duration:20", "-c", "400", "-f", "udp port 4789",
         "-d", f"udp.port=={fabric.PORT},vxlan", "-T", "fields", "-e", "vxlan.vni"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    time.sleep(3)
    d11("swarm", "load", "--scenario", "browse", "--orders", "40", "--concurrency", "4",
        "--duration", "30", timeout=300, check=False)  # fmt: skip
    out, _ = capture.communicate(timeout=60)
    vnis = {int(v) for line in out.split() for v in line.split(",") if v.isdigit()}
    lab_vnis = {fabric.vni(T, net) for net in T.networks}
    # Swarm's VNI outside, one of the lab networks' inside: a VXLAN in a VXLAN between nodes
    assert vnis & lab_vnis, vnis


def test_down_leaves_nothing_behind(lab: None, volumes_before: set[str]) -> None:
    d11("swarm", "down", timeout=300)
    assert not docker("ps", "-aq", "--filter", f"label={swarm.LABEL}").split()
    assert swarm.BRIDGE not in docker("network", "ls", "--format", "{{.Name}}").split()
    assert volumes() <= volumes_before
