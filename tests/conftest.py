"""Shared fixtures: the process-mode stack, started with ``./d11 up`` as a user would."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from infra import ROOT
from infra import topology as topo

D11 = str(ROOT / "d11")


def d11(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the real ``./d11`` command line."""
    result = subprocess.run(
        [D11, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"./d11 {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@dataclass
class Stack:
    topology: topo.Topology
    env: dict[str, str]
    up_seconds: float

    @property
    def run_dir(self) -> Path:
        return Path(self.env["D11_RUN_DIR"])

    def url(self, host: str, path: str = "") -> str:
        return f"http://{self.topology.host(host).endpoint}{path}"

    def d11(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return d11(*args, env=self.env, **kwargs)


def one_host_env(tmp_path: Path, host: dict) -> dict[str, str]:
    """The environment for ``./d11`` with a topology of one host (a mapping as in
    topology.yaml) written under ``tmp_path``, and its run files in ``tmp_path/run``."""
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump({"hosts": [host]}))
    return stack_env(tmp_path / "run", path)


def stack_env(run_dir: Path, topology_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # A user's OTEL endpoint must not capture the tests' spans.
    for key in list(env):
        if key.startswith("OTEL_") or key.startswith("D11_"):
            del env[key]
    env["D11_RUN_DIR"] = str(run_dir)
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    if topology_path is not None:
        env["D11_TOPOLOGY"] = str(topology_path)
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = stack_env(tmp_path_factory.mktemp("run"))
    started = time.monotonic()
    d11("up", "--detach", env=env)
    up_seconds = time.monotonic() - started
    try:
        yield Stack(topo.load(), env, up_seconds)
    finally:
        d11("down", env=env, check=False)


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as client:
        yield client


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"):
    """Poll until ``predicate()`` returns something truthy; return it or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def set_stock(stack: Stack, item_id: int, available: int) -> None:
    """Give a test its own stock level (other tests, and schemathesis, order items too)."""
    import grpc

    from rpc.proto import inventory_pb2, inventory_pb2_grpc

    with grpc.insecure_channel(stack.topology.host("inventory").endpoint) as channel:
        inventory_pb2_grpc.InventoryServiceStub(channel).SetStock(
            inventory_pb2.SetStockRequest(item_id=item_id, available=available), timeout=5
        )


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback (Debian's server binaries, which .ci/run
    installs); yields its URL. Root cannot run the server, so as root it runs as the
    ``postgres`` user the Debian package creates."""
    import shutil
    import socket
    import tempfile

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert found, "PostgreSQL server binaries missing: apt-get install postgresql"
    bindir = found[-1].parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="d11-pg-"))
    base.chmod(0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=60)

    pg(str(bindir / "initdb"), "-D", f"{base}/data", "-U", "d11", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
    pg(str(bindir / "pg_ctl"), "-D", f"{base}/data", "-l", f"{base}/log", "-w", "-o", options,
       "start")  # fmt: skip
    try:
        yield f"postgresql://d11@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", f"{base}/data", "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The pure parts' tables (tests/unit) run first: seconds, no process started, so a
    broken rule fails before any stack comes up. The rest keep their order."""
    items.sort(key=lambda item: 0 if "tests/unit/" in str(item.path) else 1)
