"""Process mode's supervisor: ``python -m infra.supervisor`` (started by ``./d11 up``).

It keeps the hosts that ``up`` asked for running, as systemd's ``Restart=on-failure`` or a
kubelet would: a process that exits without being asked to is started again after a
backoff (0.1 s, doubling, capped at 5 s; reset once it has stayed up 5 s). A crash loop
(8 exits in a row that each came sooner than that) is given up, and said so in the log and
in ``./d11 status``. A configuration error (exit 78) is never retried: it would fail again.

What it must keep is the *wanted* set (``.run/supervisor/wanted.json``), which ``up``
adds to and ``down`` removes from before it stops anything: so an intentional ``down``
stays down. Processes are tracked by their pid files, not as children only, so a new
supervisor adopts what an earlier one (killed, say) left running; a child's exit status is
known, an adopted process's is not ("gone"). ``state.json`` beside it holds each host's
restarts, last exit and state, for ``./d11 status``.

Detached (``./d11 up --detach``), the services do not depend on the supervisor: killing it
leaves them running, and the next ``./d11 up`` or ``status`` starts another that adopts
them. Tied (``--tie``, the foreground ``./d11 up``), it dies with its parent and stops
everything on its way out, so a killed foreground launcher leaves nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from infra import write_atomic, zygote
from infra.logs import setup_logging
from infra.service import EXIT_CONFIG

log = logging.getLogger("d11.supervisor")

TICK_S = 0.05


@dataclass(frozen=True)
class Backoff:
    """When to restart, as a pure function of the history (tests replay it with a clock)."""

    first: float = 0.1
    factor: float = 2.0
    cap: float = 5.0
    stable_after: float = 5.0  # up this long: the next exit starts the count again
    give_up_after: int = 8  # this many quick exits in a row: a crash loop

    def delay(self, quick_exits: int) -> float:
        """The wait before restart number ``quick_exits`` (1-based) of a series."""
        return min(self.cap, self.first * self.factor ** max(0, quick_exits - 1))


@dataclass
class HostState:
    state: str = "stopped"  # running | restarting | gave-up | stopped
    restarts: int = 0
    last_exit: str | None = None  # "exit 1", "SIGKILL", "gone" (not our child: no status)
    last_exit_at: float | None = None  # wall clock
    last_exit_code: int | None = None
    requested_at: float = 0.0  # the `up` request this state answers (Wanted's time)
    started_at: float = 0.0  # monotonic, this supervisor's clock
    quick_exits: int = 0  # exits in a row that came before Backoff.stable_after
    restart_at: float | None = None


def describe_status(status: int | None) -> str:
    if status is None:
        return "gone"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def exit_code(status: int | None) -> int | None:
    return None if status is None else os.waitstatus_to_exitcode(status)


class Wanted:
    """The hosts that should be running, each with the time ``up`` last asked for it;
    shared by the CLI and the supervisor, changed under an exclusive lock so concurrent
    ``up``/``down`` never lose an update. A newer request restarts a host given up on."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "wanted.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "wanted.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _change(self, update: Callable[[dict[str, float]], dict[str, float]]) -> dict[str, float]:
        with self._locked():
            names = update(self.read())
            write_atomic(self.path, json.dumps(names, sort_keys=True))
            return names

    def add(self, names: set[str]) -> dict[str, float]:
        now = time.time()
        return self._change(lambda current: {**current, **dict.fromkeys(names, now)})

    def remove(self, names: set[str] | None) -> dict[str, float]:
        if names is None:
            return self._change(lambda current: {})
        return self._change(lambda current: {k: v for k, v in current.items() if k not in names})


def read_state(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((directory / "state.json").read_text())["hosts"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class Supervisor:
    def __init__(self, launcher: Any, *, tied: bool, policy: Backoff | None = None) -> None:
        self.launcher = launcher
        self.tied = tied
        self.policy = policy or Backoff()
        self.dir = launcher.dir / "supervisor"
        self.wanted = Wanted(self.dir)
        self.states: dict[str, HostState] = {}
        now = time.monotonic()
        for name, saved in read_state(self.dir).items():
            # An earlier supervisor's history carries over; its clock does not.
            fields = {k: v for k, v in saved.items() if k in HostState.__annotations__}
            self.states[name] = replace(HostState(**fields), started_at=now, restart_at=None)
        self.exits: dict[int, int] = {}  # pid -> wait status, for children we reaped
        self.stopping = False

    # -- bookkeeping ---------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exits[pid] = status

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        hosts = {n: asdict(s) for n, s in self.states.items()}
        write_atomic(self.dir / "state.json", json.dumps({"hosts": hosts}))

    # -- the loop ------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One look at every process group: a pure step over (wanted, pid files, exits)."""
        self._reap()
        wanted = self.wanted.read()
        records = self.launcher.pids.read_all()
        changed = False
        for group in self.launcher.topology.groups():
            names = [h.name for h in group]
            state = self.states.setdefault(names[0], HostState())
            asked = max((wanted[n] for n in names if n in wanted), default=None)
            record = records.get(names[0])
            alive = record is not None and record.alive()
            before = asdict(state)
            if asked is None:
                state.state, state.restart_at = "stopped", None
            elif asked > state.requested_at and not alive and state.state != "restarting":
                # A fresh `up` (or one after giving up): start now, counting nothing.
                state.requested_at, state.quick_exits = asked, 0
                self._start(group, state, now, counted=False)
            elif alive:
                state.requested_at = max(state.requested_at, asked)
                state.state, state.restart_at = "running", None
                if state.quick_exits and now - state.started_at >= self.policy.stable_after:
                    state.quick_exits = 0
            elif state.state == "running":
                self._exited(group, state, record, now)
            elif state.state == "restarting" and now >= (state.restart_at or 0):
                self._start(group, state, now, counted=True)
            changed |= asdict(state) != before
        if changed:
            self._save()

    def _exited(self, group: list[Any], state: HostState, record: Any, now: float) -> None:
        names = [h.name for h in group]
        status = self.exits.pop(record.pid, None) if record is not None else None
        if record is not None and status is None:
            # It died after this tick's reaping: a child of ours is a zombie until now.
            with contextlib.suppress(ChildProcessError):
                pid, raw = os.waitpid(record.pid, os.WNOHANG)
                if pid == 0:
                    # Our child's main thread is gone but its other threads are still
                    # exiting (a killed multi-threaded process): its status comes next tick.
                    return
                status = raw
        if record is not None:
            # A dead leader's workers (the gateway's forks) may still hold its sockets.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGKILL)
        for name in names:
            self.launcher.pids.remove(name)
        quick = now - state.started_at < self.policy.stable_after
        state.quick_exits = state.quick_exits + 1 if quick else 1
        state.last_exit = describe_status(status)
        state.last_exit_code = exit_code(status)
        state.last_exit_at = time.time()
        if state.last_exit_code == EXIT_CONFIG or state.quick_exits > self.policy.give_up_after:
            state.state, state.restart_at = "gave-up", None
            why = (
                "a configuration error (exit 78)"
                if state.last_exit_code == EXIT_CONFIG
                else f"{state.quick_exits} quick exits in a row (a crash loop)"
            )
            log.error("giving up on %s: %s; ./d11 up %s tries again", ", ".join(names), why,
                      names[0], extra={"hosts": names, "last_exit": state.last_exit})  # fmt: skip
            return
        delay = self.policy.delay(state.quick_exits)
        state.state, state.restart_at = "restarting", now + delay
        log.warning("%s exited (%s); restarting in %.2fs", ", ".join(names), state.last_exit,
                    delay, extra={"hosts": names, "last_exit": state.last_exit})  # fmt: skip

    def _start(self, group: list[Any], state: HostState, now: float, *, counted: bool) -> None:
        names = [h.name for h in group]
        if not set(self.wanted.read()) & set(names):  # a `down` since the exit was seen
            state.state, state.restart_at = "stopped", None
            return
        try:
            self.launcher.spawn(group, tie_to_launcher=self.tied)
        except OSError as exc:
            log.error("cannot start %s: %s", ", ".join(names), exc)
            state.state = "restarting"
            state.restart_at = now + self.policy.delay(state.quick_exits + 1)
            return
        if counted:
            state.restarts += 1
            log.info("restarted %s", ", ".join(names),
                     extra={"hosts": names, "restarts": state.restarts})  # fmt: skip
        state.state, state.started_at, state.restart_at = "running", now, None

    def run(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("supervising", extra={"run_dir": str(self.launcher.dir), "tied": self.tied})
        while not self.stopping:
            self.tick(time.monotonic())
            time.sleep(TICK_S)
        if self.tied:  # the foreground launcher is gone: so is everything it started
            self.wanted.remove(None)
            self.launcher.stop_processes(None)
        log.info("supervisor stopped")


def main() -> None:
    from infra import topology
    from infra.launcher import Launcher

    p = argparse.ArgumentParser(prog="python -m infra.supervisor")
    p.add_argument("--tie", action="store_true", help="die with the parent, stopping all")
    args = p.parse_args()
    if args.tie:
        from infra.procs import die_with_parent

        die_with_parent()
        if os.getppid() == 1:  # the parent died before prctl took effect
            return
    setup_logging("supervisor", os.environ.get("D11_LOG_LEVEL", "INFO").upper())
    launcher = Launcher(topology.load(os.environ.get("D11_TOPOLOGY") or None))
    # Every start is a fork of this warm process: a restart under load skips the imports.
    zygote.warm(["infra.group", *sorted({h.module for h in launcher.topology.hosts})])
    try:
        Supervisor(launcher, tied=args.tie).run()
    except zygote.Child as child:  # in a service just forked: run it here, at the top
        child.run()


if __name__ == "__main__":
    main()
