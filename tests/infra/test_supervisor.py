"""Supervision in process mode: a killed service comes back by itself, an intentional
``down`` stays down, a crash loop is given up, and a killed supervisor's services keep
running and are adopted by the next one."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path

import pytest

from infra.procs import PidDir, PidRecord, proc_start_time
from infra.supervisor import Backoff, Supervisor, Wanted
from infra.topology import Host
from tests.conftest import d11, one_host_env, wait_for
from tests.infra.test_launcher import PROBE_CONTROLLER


@pytest.mark.parametrize(
    ("quick_exits", "delay"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 3.2), (7, 5.0), (20, 5.0)],
)
def test_backoff_starts_well_under_a_second_doubles_and_is_capped(quick_exits, delay):
    assert Backoff().delay(quick_exits) == pytest.approx(delay)


class FakeTopology:
    def __init__(self, host: Host) -> None:
        self.hosts = (host,)

    def groups(self, hosts=None):
        return [[self.hosts[0]]]


class CrashingLauncher:
    """Every spawn 'starts' a process that is already dead (a pid file whose start time
    matches no process), as a service that crashes at once would leave."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pids = PidDir(directory / "pids")
        self.topology = FakeTopology(Host(name="crasher", role="controller",
                                          address="127.10.8.40", port=1, protocol="http",
                                          module="none"))  # fmt: skip
        self.spawns: list[float] = []
        self.clock = 0.0

    def spawn(self, hosts, *, tie_to_launcher):
        self.spawns.append(self.clock)
        self.pids.write(PidRecord("crasher", os.getpid(), -1))


def drive(launcher: CrashingLauncher, supervisor: Supervisor, until: float) -> None:
    while launcher.clock < until:
        supervisor.tick(launcher.clock)
        launcher.clock += 0.05


def test_crash_loop_is_given_up_after_a_bounded_number_of_tries(tmp_path):
    launcher = CrashingLauncher(tmp_path)
    policy = Backoff()
    supervisor = Supervisor(launcher, tied=False, policy=policy)
    Wanted(tmp_path / "supervisor").add({"crasher"})
    drive(launcher, supervisor, 60)
    # The first start, then one restart per quick exit until the loop is given up.
    assert len(launcher.spawns) == 1 + policy.give_up_after
    gaps = [b - a for a, b in itertools.pairwise(launcher.spawns)]
    assert gaps[0] < 0.5
    assert all(later >= earlier for earlier, later in itertools.pairwise(gaps))
    assert max(gaps) <= policy.cap + 0.1
    state = supervisor.states["crasher"]
    assert state.state == "gave-up"
    assert state.restarts == policy.give_up_after
    saved = json.loads((tmp_path / "supervisor" / "state.json").read_text())
    assert saved["hosts"]["crasher"]["state"] == "gave-up"
    # A new `up` of the host is a new request: it is tried again.
    time.sleep(0.01)
    Wanted(tmp_path / "supervisor").add({"crasher"})
    drive(launcher, supervisor, 61)
    assert len(launcher.spawns) > 1 + policy.give_up_after


def test_a_stable_stretch_resets_the_backoff(tmp_path):
    launcher = CrashingLauncher(tmp_path)
    supervisor = Supervisor(launcher, tied=False)
    Wanted(tmp_path / "supervisor").add({"crasher"})
    drive(launcher, supervisor, 3)
    assert supervisor.states["crasher"].quick_exits >= 3
    # Now the process stays up (this test's own pid, with its real start time) past 5 s.
    launcher.pids.write(PidRecord("crasher", os.getpid(), proc_start_time(os.getpid())))
    supervisor.states["crasher"].state = "running"
    drive(launcher, supervisor, 16)
    assert supervisor.states["crasher"].quick_exits == 0


@pytest.fixture
def solo(tmp_path):
    env = one_host_env(tmp_path, PROBE_CONTROLLER)
    yield env, tmp_path / "run"
    d11("down", env=env, check=False)


def _status(env) -> dict:
    return json.loads(d11("status", "--json", env=env, check=False).stdout)[0]


def _pid(run_dir: Path) -> int:
    return PidDir(run_dir / "pids").read_all()["probe-controller"].pid


def _supervisor_pid(run_dir: Path) -> int:
    return json.loads((run_dir / "supervisor" / "pid.json").read_text())["pid"]


def test_killed_service_is_restarted_and_status_shows_it(solo):
    env, run_dir = solo
    d11("up", "--detach", env=env)
    old = _pid(run_dir)
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: _status(env)["healthy"] and _pid(run_dir) != old, timeout=10,
             what="the killed controller to be healthy again")  # fmt: skip
    assert time.monotonic() - killed < 3.5
    row = _status(env)
    assert row["restarts"] == 1
    assert row["last_exit"] == "SIGKILL"
    assert row["state"] == "running"


def test_intentional_down_stays_down(solo):
    env, run_dir = solo
    d11("up", "--detach", env=env)
    supervisor = _supervisor_pid(run_dir)
    d11("down", "probe-controller", env=env)
    time.sleep(1.5)  # several supervisor ticks
    row = _status(env)
    assert row["pid"] is None and not row["healthy"]
    assert row["state"] == "stopped"
    assert proc_start_time(supervisor) is not None, "down HOST must not stop the supervisor"
    d11("up", "--detach", "probe-controller", env=env)
    assert _status(env)["healthy"]


def test_killed_supervisor_leaves_services_running_and_the_next_adopts_them(solo):
    env, run_dir = solo
    d11("up", "--detach", env=env)
    service = _pid(run_dir)
    first = _supervisor_pid(run_dir)
    os.kill(first, signal.SIGKILL)
    time.sleep(0.5)
    assert proc_start_time(service) is not None, "the service died with its supervisor"
    row = _status(env)  # status notices and starts a supervisor that adopts the service
    assert row["healthy"] and row["pid"] == service
    second = _supervisor_pid(run_dir)
    assert second != first and proc_start_time(second) is not None
    os.kill(service, signal.SIGKILL)
    wait_for(lambda: _status(env)["healthy"] and _pid(run_dir) != service, timeout=10,
             what="the adopted controller to be restarted")  # fmt: skip
    # Not the new supervisor's child: it saw the death, not the status.
    assert _status(env)["last_exit"] == "gone"
    d11("down", env=env)
    assert proc_start_time(second) is None
