"""The lab on a multi-node Docker Swarm: ``./d11 swarm up|load|status|down|render``.

``./d11 swarm up --nodes N`` makes N Swarm nodes on this machine as Docker-in-Docker
containers (``swarm/Dockerfile``: Debian's engine on the project's base image) on a bridge
of TEST-NET-1 addresses (192.0.2.11, .12, …), starts Debian's registry on the first node,
pushes the lab's image there, joins the nodes (the first is the manager), labels each with
the parts of the lab it holds, and deploys ``swarm/stack.yaml`` with ``docker stack
deploy``. ``./d11 swarm render`` writes that file from the topology (``--check``: fails
when it is stale), as ``./d11 compose`` writes compose.yaml.

Placement, by node labels: the main site's data centre (its stores and order services, which
share one volume) on node 1, the second site on node 2, the public side (DNS, CDN, ISPs) on
node 3, the phones on node 4; with fewer nodes the later parts share the last node. So the
lab's own networks (infra/fabric.py, over Swarm's overlay) cross real node boundaries.

``./d11 swarm load ARGS`` runs ``./d11 load ARGS`` in the phone's task; ``./d11 swarm down``
removes the nodes with their volumes and the bridge, and with them everything inside.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from infra import ROOT, fabric, render_command
from infra import compose as cmp
from infra import topology as topo
from infra.dockerlab import DockerError, base_image, build, ensure_engine, quiet, say
from infra.pki import ensure_ca
from infra.topology import Host, Topology

STACK_FILE = ROOT / "swarm" / "stack.yaml"
STACK = "d11"
NODE_IMAGE = "d11-swarm-node:latest"
NODE_PREFIX = "d11-node-"
BRIDGE = "d11-swarm"
BRIDGE_SUBNET = "192.0.2.0/24"  # TEST-NET-1: the machines' own network
FABRIC_SUBNET = "203.0.113.0/24"  # TEST-NET-3: Swarm's overlay, the lab networks' underlay
REGISTRY = "192.0.2.11:5000"
IMAGE = f"{REGISTRY}/double-11:latest"
IMAGE_REF = f"${{D11_IMAGE:-{IMAGE}}}"  # on another swarm: D11_IMAGE=its registry's copy
LABEL = "d11.swarm"
PKI_TARGET = cmp.PKI_DIR
D11_UID = "1111"  # the image's d11 user (Dockerfile)
HEADER = """\
# Double-11 on Docker Swarm: every host of infra/topology.yaml as a service of one replica.
# RENDERED by `./d11 swarm render` from infra/topology.yaml; edit that file, not this one.
#
#   ./d11 swarm up --nodes 3      nodes (Docker in Docker), registry, swarm, this stack
#   ./d11 swarm load --scenario flash-sale --orders 1000 --concurrency 64
#   ./d11 swarm down
#
# A task's address on the overlay is Swarm's to choose, so the lab's hosts build their own
# networks over it, with the topology's fixed addresses (D11_FABRIC; infra/fabric.py).
# Placement by node label: d11.east (the main site's data centre), d11.north, d11.internet
# (DNS, CDN, ISPs), d11.phones. See swarm/README.md.
"""


def node_address(index: int) -> str:
    return f"192.0.2.{10 + index}"


def part(t: Topology, host: Host) -> str:
    """The part of the lab a host belongs to: its site, else the public side; the other
    tenant's hosts and other site-less VPC members sit in the main site's data centre."""
    if host.site:
        return host.site
    return "internet" if "internet" in host.addresses else t.main_site


def parts(t: Topology) -> list[str]:
    """In placement order: the main site, the other sites, the public side, the phones."""
    sites = [t.main_site] + [s for s in t.sites if s != t.main_site]
    return [*sites, "internet", "phones"]


def placement(t: Topology, nodes: int) -> dict[str, int]:
    """Each part's node (1-based): one part per node while there are nodes, the rest on
    the last."""
    return {p: min(i + 1, nodes) for i, p in enumerate(parts(t))}


def pki_configs(read_only: bool) -> list[dict[str, Any]]:
    crt = {"source": "ca-crt", "target": f"{PKI_TARGET}/ca.crt", "uid": D11_UID,
           "gid": D11_UID, "mode": 0o444}  # fmt: skip
    key = {"source": "ca-key", "target": f"{PKI_TARGET}/ca.key", "uid": D11_UID,
           "gid": D11_UID, "mode": 0o400}  # fmt: skip
    return [crt] if read_only else [crt, key]


def swarm_service(spec: dict[str, Any], where: str) -> dict[str, Any]:
    """A Compose service as a Swarm service: the registry's image, the fabric instead of
    fixed addresses, the CA as configs instead of a shared volume, and ``deploy:``."""
    env = dict(spec["environment"])
    env["D11_FABRIC"] = "1"
    if "D11_PHONE_DEMO" in env:
        env["D11_PHONE_DEMO"] = "off"  # the load runs through `./d11 swarm load`
    out: dict[str, Any] = {"image": IMAGE_REF, "init": True, "hostname": spec["hostname"],
                           "environment": env}  # fmt: skip
    if "dns" in spec:
        out["dns"] = spec["dns"]
    out["networks"] = ["fabric"]
    if "healthcheck" in spec:
        out["healthcheck"] = spec["healthcheck"]
    out["cap_add"] = ["NET_ADMIN"]  # every host builds its own lab networks (the fabric)
    out["user"] = "root"
    if "sysctls" in spec:
        out["sysctls"] = spec["sysctls"]
    volumes = [v for v in spec.get("volumes", []) if not v.startswith("pki:")]
    if volumes:
        out["volumes"] = volumes
    pki = [v for v in spec.get("volumes", []) if v.startswith("pki:")]
    if pki:
        out["configs"] = pki_configs(read_only=pki[0].endswith(":ro"))
    out["deploy"] = {
        "replicas": 1,
        # No virtual IP: one address per task in the fabric's /24, and the directory is
        # found as its task itself (tasks.fabric-directory).
        "endpoint_mode": "dnsrr",
        "placement": {"constraints": [f"node.labels.d11.{where} == true"]},
        "restart_policy": {"condition": "any", "delay": "1s"},
    }
    return out


def render(t: Topology) -> str:
    services = {h.name: swarm_service(cmp.service(t, h), part(t, h)) for h in t.hosts}
    services["phone"] = swarm_service(cmp.phone(t), "phones")
    services[fabric.DIRECTORY] = {
        "image": IMAGE_REF, "init": True, "entrypoint": ["python", "-m", "infra.fabric"],
        "networks": ["fabric"],
        "deploy": {"replicas": 1, "endpoint_mode": "dnsrr",
                   "placement": {"constraints": ["node.role == manager"]},
                   "restart_policy": {"condition": "any", "delay": "1s"}},
    }  # fmt: skip
    doc = {
        "version": "3.8",
        "services": services,
        "networks": {
            "fabric": {"driver": "overlay", "ipam": {"config": [{"subnet": FABRIC_SUBNET}]}}
        },
        "volumes": {
            v.split(":")[0]: {} for h in t.hosts for v in h.volumes if not v.startswith("pki:")
        },
        "configs": {"ca-crt": {"file": "./pki/ca.crt"}, "ca-key": {"file": "./pki/ca.key"}},
    }
    return HEADER + yaml.dump(doc, Dumper=cmp._Dumper, sort_keys=False, width=100)


def rendered() -> dict[Path, str]:
    return {STACK_FILE: render(topo.load(mode="docker"))}


# -- running it ----------------------------------------------------------------------------
def run(*argv: str, stdin: bytes | None = None, timeout: float = 300, check: bool = True) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"{shlex.join(argv)}: no answer in {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        raise DockerError(f"{shlex.join(argv)} failed: {done.stderr.decode().strip()[-800:]}")
    return done.stdout.decode()


def on(node: int, *argv: str, **kw: Any) -> str:
    """A command inside node ``node`` (1-based): its own Docker engine's client."""
    return run("docker", "exec", "-i", f"{NODE_PREFIX}{node}", *argv, **kw)


def nodes() -> list[str]:
    out = run("docker", "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
    return sorted(n for n in out.split() if n.startswith(NODE_PREFIX))


def build_node_image(base: str) -> None:
    say(f"building {NODE_IMAGE} on {base}", "swarm")
    run("docker", "build", "-q", "-f", str(ROOT / "swarm" / "Dockerfile"),
        "--build-arg", f"BASE_IMAGE={base}", "-t", NODE_IMAGE, str(ROOT / "swarm"),
        timeout=900)  # fmt: skip


def start_nodes(count: int) -> None:
    if not quiet("docker", "network", "inspect", BRIDGE):
        run("docker", "network", "create", "--driver", "bridge", "--label", LABEL,
            "--subnet", BRIDGE_SUBNET, BRIDGE)  # fmt: skip
    for i in range(1, count + 1):
        # What Docker in Docker needs here without --privileged, which this host's runc
        # refuses (../shared/DESIGN.md): mounts, devices' and networks' administration.
        run("docker", "run", "-d", "--name", f"{NODE_PREFIX}{i}", "--hostname", f"node-{i}",
            "--label", LABEL, "--network", BRIDGE, "--ip", node_address(i),
            "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            NODE_IMAGE, "dockerd", "--insecure-registry", REGISTRY,
            "--default-address-pool", "base=10.211.0.0/16,size=24")  # fmt: skip
    for i in range(1, count + 1):
        deadline = time.monotonic() + 90
        while not quiet("docker", "exec", f"{NODE_PREFIX}{i}", "docker", "info"):
            if time.monotonic() > deadline:
                logs = run("docker", "logs", "--tail", "20", f"{NODE_PREFIX}{i}", check=False)
                raise DockerError(f"node-{i}'s engine did not start in 90 s:\n{logs}")
            time.sleep(0.5)


def distribute_image(count: int) -> None:
    """The lab's image into node 1's registry, and pulled by every node before the deploy
    (so the deploy's own start is not a pull on each node)."""
    say(f"pushing double-11:latest to the registry on node-1 ({REGISTRY})", "swarm")
    on(1, "sh", "-c", "nohup docker-registry serve /etc/docker/registry/d11.yml "
       ">/var/log/registry.log 2>&1 &")  # fmt: skip
    image = subprocess.Popen(["docker", "save", cmp.IMAGE], stdout=subprocess.PIPE)
    try:
        loader = ["docker", "exec", "-i", f"{NODE_PREFIX}1", "docker", "load", "-q"]
        subprocess.run(loader, stdin=image.stdout, check=True, capture_output=True, timeout=600)
    finally:
        image.wait()
    on(1, "docker", "tag", cmp.IMAGE, IMAGE)
    deadline = time.monotonic() + 30
    while True:  # the registry may still be starting
        try:
            on(1, "docker", "push", "-q", IMAGE)
            break
        except DockerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    pull = ["docker", "pull", "-q", IMAGE]
    pulls = [subprocess.Popen(["docker", "exec", f"{NODE_PREFIX}{i}", *pull],
                              stdout=subprocess.DEVNULL) for i in range(2, count + 1)]  # fmt: skip
    if any(p.wait(timeout=600) != 0 for p in pulls):
        raise DockerError(f"a node could not pull {IMAGE}")


def form_swarm(t: Topology, count: int) -> None:
    on(1, "docker", "swarm", "init", "--advertise-addr", node_address(1))
    token = on(1, "docker", "swarm", "join-token", "-q", "worker").strip()
    for i in range(2, count + 1):
        on(i, "docker", "swarm", "join", "--token", token, f"{node_address(1)}:2377")
    for p, node in placement(t, count).items():
        on(1, "docker", "node", "update", "--label-add", f"d11.{p}=true", f"node-{node}")


def deploy() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "stack"
        (work / "pki").mkdir(parents=True)
        ensure_ca(work / "pki")  # one CA for every node: the phones trust what gateways show
        (work / "stack.yaml").write_text(STACK_FILE.read_text())
        run("docker", "cp", str(work), f"{NODE_PREFIX}1:/d11")
    on(1, "docker", "stack", "deploy", "--compose-file", "/d11/stack.yaml", STACK)


def tasks() -> list[dict[str, str]]:
    """Every running container of the stack, on every node: node, id, service, status."""
    out = []
    for name in nodes():
        node = int(name.removeprefix(NODE_PREFIX))
        listing = on(node, "docker", "ps", "--filter", f"label=com.docker.stack.namespace={STACK}",
                     "--format", "{{json .}}", check=False)  # fmt: skip
        for line in listing.splitlines():
            c = json.loads(line)
            service = c["Names"].split(".")[0].removeprefix(f"{STACK}_")
            out.append({"node": str(node), "id": c["ID"], "service": service,
                        "status": c["Status"]})  # fmt: skip
    return out


def wait_healthy(t: Topology, timeout: float = 420) -> float:
    wanted = {h.name for h in t.hosts} | {"phone", fabric.DIRECTORY}
    started = time.monotonic()
    while True:
        running = tasks()
        healthy = {c["service"] for c in running if "(healthy)" in c["status"]}
        unchecked = ("phone", fabric.DIRECTORY)  # no health check of their own
        healthy |= {c["service"] for c in running if c["service"] in unchecked}
        if wanted <= healthy:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise DockerError(f"not healthy after {timeout:.0f} s: {sorted(wanted - healthy)}")
        time.sleep(2)


def up(count: int) -> None:
    if count < 2:
        raise DockerError("a swarm of one node is Compose with extra steps: --nodes 2 or more")
    if nodes():
        raise DockerError("a swarm is up already (./d11 swarm down first)")
    started = time.monotonic()
    build()
    build_node_image(base_image())
    t = topo.load(mode="docker")
    say(f"starting {count} nodes on {BRIDGE} ({BRIDGE_SUBNET})", "swarm")
    start_nodes(count)
    distribute_image(count)
    form_swarm(t, count)
    say(f"deploying {STACK_FILE.relative_to(ROOT)} as stack {STACK}", "swarm")
    deploy()
    took = wait_healthy(t)
    say(f"every service healthy {took:.0f} s after the deploy, "
        f"{time.monotonic() - started:.0f} s in all", "swarm")  # fmt: skip
    status()


def status() -> None:
    for node in range(1, len(nodes()) + 1):
        print(f"node-{node}:", " ".join(sorted(c["service"] for c in tasks()
                                               if c["node"] == str(node))))  # fmt: skip


def phone_task() -> tuple[int, str]:
    for c in tasks():
        if c["service"] == "phone":
            return int(c["node"]), c["id"]
    raise DockerError("no phone task is running (./d11 swarm up first)")


def load(args: list[str]) -> int:
    node, container = phone_task()
    command = ["docker", "exec", f"{NODE_PREFIX}{node}", "docker", "exec", container,
               "python", "-m", "infra", "load", *args]  # fmt: skip
    return subprocess.run(command).returncode


def inner_containers(node: str) -> list[str]:
    out = run("docker", "exec", node, "docker", "ps", "-aq", "--no-trunc", check=False, timeout=60)
    return out.split()


def down() -> None:
    """The nodes go, and with them everything inside; first each node's engine removes its
    containers itself. A node shares the host's cgroup tree (``--cgroupns=host``), so a
    container it did not remove would leave its cgroups behind on the host, one per
    controller; any such leftovers are removed after."""
    ensure_engine()
    names = nodes()
    if names:  # the stack first, or Swarm starts again what is removed under it
        run("docker", "exec", names[0], "docker", "stack", "rm", STACK, check=False)
        deadline = time.monotonic() + 60
        while tasks() and time.monotonic() < deadline:
            time.sleep(1)
    inner = {n: inner_containers(n) for n in names}
    for name, ids in inner.items():
        if ids:
            run("docker", "exec", name, "docker", "rm", "-f", *ids, check=False, timeout=300)
    if names:
        run("docker", "rm", "-f", "-v", *names, timeout=300)
    for ids in inner.values():
        for cid in ids:
            for group in Path("/sys/fs/cgroup").glob(f"*/docker/{cid}"):
                with contextlib.suppress(OSError):  # busy, or gone with the node
                    group.rmdir()
    if quiet("docker", "network", "inspect", BRIDGE):
        run("docker", "network", "rm", BRIDGE)
    say(f"removed {len(names)} nodes and {BRIDGE}", "swarm")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["render"]:
        return render_command("swarm render", __doc__ or "", rendered, argv[1:])
    if argv[:1] == ["load"]:  # every argument is the load's own (--help included)
        try:
            return load(argv[1:])
        except DockerError as exc:
            say(str(exc), "swarm")
            return 1
    p = argparse.ArgumentParser(prog="d11 swarm", description=(__doc__ or "").split("\n")[0])
    p.add_argument("action", choices=["up", "load", "status", "down", "render"],
                   help="load ARGS: ./d11 load ARGS in the phone's task; render [--check]")
    p.add_argument("--nodes", type=int, default=3, help="up: how many nodes (2 or more)")
    a = p.parse_args(argv)
    try:
        if a.action == "up":
            ensure_engine()
            up(a.nodes)
        elif a.action == "status":
            status()
        else:
            down()
    except (DockerError, subprocess.CalledProcessError) as exc:
        say(str(exc), "swarm")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
