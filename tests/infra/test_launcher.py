"""The launcher as a user meets it: failing fast on a taken port, and leaving no process
behind after ``down`` or after the launcher itself is killed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from infra import ROOT
from infra.procs import PidDir
from tests.conftest import D11, d11, one_host_env, stack_env, wait_for

PROBE_CONTROLLER = {
    "name": "probe-controller",
    "role": "controller",
    "address": "127.10.8.21",
    "port": 8080,
    "protocol": "http",
    "module": "services.controller",
    "env": {
        "D11_ORDER_GRPC": "127.10.8.99:50051",
        "D11_INVENTORY": "127.10.8.99:50061",
        "D11_COUPON": "127.10.8.99:50062",
    },
}


@pytest.fixture
def solo(tmp_path):
    """A one-host topology on an address no other test uses."""
    env = one_host_env(tmp_path, PROBE_CONTROLLER)
    yield env, tmp_path / "run"
    d11("down", env=env, check=False)


class Output:
    """Collects a child's output on a thread, so waits see everything written so far."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.data = b""
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for chunk in iter(lambda: process.stdout.read1(4096), b""):
            self.data += chunk

    def has(self, text: bytes) -> bool:
        return text in self.data


def _pids(run_dir) -> list[int]:
    return [r.pid for r in PidDir(run_dir / "pids").read_all().values()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_taken_port_fails_fast_naming_the_port(solo):
    env, _ = solo
    with socket.socket() as blocker:
        blocker.bind(("127.10.8.21", 8080))
        blocker.listen()
        started = time.monotonic()
        result = d11("up", "--detach", env=env, check=False)
        took = time.monotonic() - started
    assert result.returncode == 1
    assert "127.10.8.21:8080" in result.stderr
    assert "address already in use" in result.stderr
    assert took < 8, f"took {took:.1f}s to report a taken port"


def test_a_service_on_a_taken_port_exits_98_naming_it(tmp_path):
    env = stack_env(tmp_path / "run")
    env.update(
        D11_ADDRESS="127.10.8.22",
        D11_PORT="8080",
        D11_ORDER_GRPC="127.10.8.99:1",
        D11_INVENTORY="127.10.8.99:2",
        D11_COUPON="127.10.8.99:3",
        OTEL_TRACES_EXPORTER="none",
        PYTHONPATH=str(ROOT),
    )
    with socket.socket() as blocker:
        blocker.bind(("127.10.8.22", 8080))
        blocker.listen()
        result = subprocess.run(
            [sys.executable, "-m", "services.controller"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 98
    assert "cannot listen on 127.10.8.22:8080/tcp: address already in use" in result.stderr


def test_down_stops_every_process(solo):
    env, run_dir = solo
    d11("up", "--detach", env=env)
    pids = _pids(run_dir)
    assert pids and all(_alive(p) for p in pids)
    assert "probe-controller" in d11("down", env=env).stdout
    assert not any(_alive(p) for p in pids)
    rows = json.loads(d11("status", "--json", env=env, check=False).stdout)
    assert rows == [{**rows[0], "pid": None, "healthy": False, "rss_bytes": 0, "pss_bytes": 0}]


@contextlib.contextmanager
def foreground_launcher(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``./d11 up`` in the foreground, returned once it reports every service healthy."""
    launcher = subprocess.Popen(
        [D11, "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = Output(launcher)
    try:
        wait_for(
            lambda: output.has(b"Streaming logs"),
            timeout=20,
            what="the foreground launcher to report healthy",
        )
        yield launcher
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


def test_killed_foreground_launcher_leaves_nothing_behind(solo):
    env, run_dir = solo
    with foreground_launcher(env) as launcher:
        pids = _pids(run_dir)
        assert pids and all(_alive(p) for p in pids)
        launcher.kill()  # SIGKILL: no chance to clean up
        launcher.wait(5)
        wait_for(
            lambda: not any(_alive(p) for p in pids),
            timeout=10,
            what="services to exit after their launcher died",
        )


def test_sigterm_to_foreground_launcher_stops_everything(solo):
    env, run_dir = solo
    with foreground_launcher(env) as launcher:
        pids = _pids(run_dir)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(15) == 0
        assert pids and not any(_alive(p) for p in pids)
