"""Process mode: start every host of the topology as a local process on its own loopback
address, wait for health, report status, and stop everything again."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from infra import ROOT, write_atomic, zygote
from infra.health import probe_all
from infra.procs import (
    PidDir,
    PidRecord,
    group_memory,
    proc_start_time,
    terminate_group,
)
from infra.service import EXIT_CONFIG, EXIT_PORT_IN_USE, is_addr_in_use
from infra.supervisor import Wanted, read_state
from infra.topology import Host, Topology

log = logging.getLogger("d11.launcher")

DEFAULT_RUN_DIR = ROOT / ".run"


class LaunchError(RuntimeError):
    pass


def run_dir() -> Path:
    return Path(os.environ.get("D11_RUN_DIR") or DEFAULT_RUN_DIR)


def check_free(host: Host) -> None:
    """Fail before starting anything when a host's address:port is taken (by another
    ./d11 up, say): a health probe would otherwise be answered by the other process."""
    for port in filter(None, (host.port, host.metrics_port)):
        with socket.socket(socket.AF_INET6 if ":" in host.address else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.address, port))
            except OSError as exc:
                reason = "address already in use" if is_addr_in_use(exc) else exc.strerror
                raise LaunchError(
                    f"{host.name} cannot listen on {host.address}:{port}: {reason}"
                    " (is another ./d11 up running? ./d11 down stops it)"
                ) from None


class Launcher:
    def __init__(self, topology: Topology, directory: Path | None = None) -> None:
        self.topology = topology
        self.dir = directory or run_dir()
        self.pids = PidDir(self.dir / "pids")
        self.logs = self.dir / "logs"

    # -- environment -------------------------------------------------------------------
    def environment(self, host: Host) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            D11_SERVICE=host.name,
            D11_ROLE=host.role,
            D11_ADDRESS=host.address,
            D11_PORT=str(host.port),
            D11_RUN_DIR=str(self.dir),
            # Per host, never inherited: one user-wide OTEL_SERVICE_NAME would merge services.
            OTEL_SERVICE_NAME=host.name,
        )
        if host.metrics_port:
            env["D11_METRICS_PORT"] = str(host.metrics_port)
        else:
            env.pop("D11_METRICS_PORT", None)
        for variable, value in (("D11_SITE", host.site), ("D11_AZ", host.az)):
            if value:
                env[variable] = value
            else:
                env.pop(variable, None)
        collectors = self.topology.by_role("collector")
        if collectors:
            # A user's own OTEL_EXPORTER_OTLP_ENDPOINT (Jaeger, ...) wins over ours.
            env.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{collectors[0].endpoint}")
        # Each export is a wake-up, an HTTP request and a store transaction in the exporter
        # and the collector: every 200 ms cost a traced visit ~5 ms more CPU than every
        # second (bench.chain, #17). A second is still "at once" for the viewer.
        env.setdefault("OTEL_BSP_SCHEDULE_DELAY", "1000")
        env.update(self.topology.environment(host))
        return env

    def log_path(self, name: str) -> Path:
        """A host's log (for a host sharing a process, a link to the process's log)."""
        return self.logs / f"{name}.log"

    # -- up ----------------------------------------------------------------------------
    def running(self) -> dict[str, PidRecord]:
        """Services of ours that are alive (stale pid files stay: the supervisor reads a
        death from them)."""
        return {name: r for name, r in self.pids.read_all().items() if r.alive()}

    def spawn(self, hosts: list[Host], *, tie_to_launcher: bool) -> int:
        """One process for these hosts: the host's module, or infra.group for several.

        The process is a fork of the caller (the supervisor, warmed by ``zygote.warm``):
        in the child this raises ``zygote.Child``, which the caller's entry point runs."""
        self.logs.mkdir(parents=True, exist_ok=True)
        first = hosts[0]
        if len(hosts) == 1 and not first.process:
            module, env, log_name = first.module, self.environment(first), first.name
        else:
            # What every member shares is the process's environment; the rest is each one's.
            envs = [self.environment(h) for h in hosts]
            env = {k: v for k, v in envs[0].items() if all(e.get(k) == v for e in envs[1:])}
            members = [
                {"module": h.module, "env": {k: v for k, v in e.items() if env.get(k) != v}}
                for h, e in zip(hosts, envs, strict=True)
            ]
            env["D11_GROUP"] = json.dumps({"name": first.group, "hosts": members})
            module, log_name = "infra.group", first.group
        log_file = self.logs / f"{log_name}.log"
        pid = zygote.fork(module, env, log_file, title=f"d11 {log_name}",
                          die_with_parent=tie_to_launcher)  # fmt: skip
        for host in hosts:
            if self.log_path(host.name) != log_file:
                self.log_path(host.name).unlink(missing_ok=True)
                self.log_path(host.name).symlink_to(log_file.name)
        start_time = proc_start_time(pid)
        if start_time is not None:
            for host in hosts:
                self.pids.write(PidRecord(host.name, pid, start_time))
        return pid

    # -- the supervisor ------------------------------------------------------------------
    @property
    def wanted(self) -> Wanted:
        return Wanted(self.dir / "supervisor")

    def supervisor(self) -> PidRecord | None:
        """The running supervisor of this run directory, if any."""
        try:
            record = PidRecord(**json.loads((self.dir / "supervisor" / "pid.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return record if record.alive() else None

    def ensure_supervisor(self, *, tied: bool = False) -> bool:
        """Start a supervisor unless one runs (it adopts whatever is running); True when
        one was started."""
        if self.supervisor() is not None:
            return False
        (self.dir / "supervisor").mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), D11_RUN_DIR=str(self.dir),
                   D11_TOPOLOGY=str(self.topology.path))  # fmt: skip
        with open(self.logs / "supervisor.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "infra.supervisor", *(["--tie"] if tied else [])],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=not tied,
            )
        start_time = proc_start_time(process.pid)
        record = {"name": "supervisor", "pid": process.pid, "start_time": start_time}
        write_atomic(self.dir / "supervisor" / "pid.json", json.dumps(record))
        return True

    def supervision(self) -> dict[str, dict[str, Any]]:
        """Each host's supervision state (restarts, last exit, state), by host name."""
        by_leader = read_state(self.dir / "supervisor")
        return {
            h.name: by_leader[group[0].name]
            for group in self.topology.groups()
            for h in group
            if group[0].name in by_leader
        }

    def up(
        self,
        names: Iterable[str] | None = None,
        *,
        tie_to_launcher: bool = False,
        timeout: float = 20.0,
    ) -> list[str]:
        """Ask the supervisor for the named hosts (default: all) and wait until healthy;
        returns the names that were not running before. A host that shares a process
        brings the whole process: the others in it are down with it, and they come back
        together."""
        selected = {h.group for h in self._select(names)}
        wanted = [h for h in self.topology.hosts if h.group in selected]
        already = self.running()
        to_start = [h for h in wanted if h.name not in already]
        for host in to_start:
            check_free(host)
        asked_at = time.time()
        self.wanted.add({h.name for h in wanted})
        self.ensure_supervisor(tied=tie_to_launcher)
        try:
            asyncio.run(self._wait_healthy(wanted, {h.name for h in to_start}, asked_at, timeout))
        except BaseException:
            self.stop_processes([h.name for h in to_start], forget=True)
            raise
        return [h.name for h in to_start]

    async def _wait_healthy(
        self, hosts: list[Host], starting: set[str], asked_at: float, timeout: float
    ) -> None:
        pending = {h.name: h for h in hosts}
        deadline = time.monotonic() + timeout
        while pending:
            if self.supervisor() is None:
                lines = "\n  ".join(self.tail("supervisor", 8))
                raise LaunchError(f"the supervisor stopped:\n  {lines}")
            supervision = self.supervision()
            for name in starting & set(pending):
                state = supervision.get(name, {})
                code = state.get("last_exit_code")
                if (state.get("last_exit_at") or 0) >= asked_at and (
                    code in (EXIT_PORT_IN_USE, EXIT_CONFIG) or state.get("state") == "gave-up"
                ):
                    raise LaunchError(self._exit_message(self.topology.host(name), state))
            results = await probe_all(list(pending.values()), timeout=0.5)
            for name, ok in results.items():
                if ok:
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                raise LaunchError(f"not healthy after {timeout:.0f}s: {names} (see ./d11 logs)")
            await asyncio.sleep(0.1)

    def _exit_message(self, host: Host, state: dict[str, Any]) -> str:
        tail = self.tail(host.name, 5)
        code = state.get("last_exit_code")
        reason = "its address is taken" if code == EXIT_PORT_IN_USE else state.get("last_exit")
        lines = "\n  ".join(tail)
        return f"{host.name} ({host.endpoint}) stopped at start-up, {reason}:\n  {lines}"

    def tail(self, name: str, count: int) -> list[str]:
        try:
            data = self.log_path(name).read_bytes()[-16384:]
        except OSError:
            return []
        return data.decode(errors="replace").splitlines()[-count:]

    # -- down --------------------------------------------------------------------------
    def stop_processes(self, names: Iterable[str] | None, *, forget: bool = False) -> list[str]:
        """SIGTERM (then SIGKILL) the processes of these hosts (default: every pid file's);
        returns the names that were running. ``forget``: no longer wanted either."""
        records = self.pids.read_all()
        selected = set(names) if names is not None else set(records)
        if forget:
            self.wanted.remove(selected if names is not None else None)
        stopped = []
        for name in sorted(selected & set(records)):
            record = records[name]
            if record.alive():
                stopped.append(name)
            terminate_group(record)
            self.pids.remove(name)
        return stopped

    def down(self, names: Iterable[str] | None = None) -> list[str]:
        """Stop what we started (by pid file, so it works after a launcher crash, even
        for hosts no longer in the topology), and keep it stopped: the hosts leave the
        supervisor's wanted set first (a host sharing a process takes the process's
        others with it). Without names the supervisor stops too."""
        if not names:
            self.wanted.remove(None)
            supervisor = self.supervisor()
            if supervisor is not None:
                terminate_group(supervisor)
            stopped = self.stop_processes(None)
            # The next `up` is a new run: its restarts count from zero.
            (self.dir / "supervisor" / "state.json").unlink(missing_ok=True)
            return stopped
        known = {h.name: h for h in self.topology.hosts}
        groups = {known[n].group for n in names if n in known}
        selected = set(names) | {h.name for h in self.topology.hosts if h.group in groups}
        self.wanted.remove(selected)
        return self.stop_processes(selected)

    # -- status ------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        if self.wanted.read() and self.ensure_supervisor():
            log.warning("no supervisor was running; started one (it adopts the hosts)")
        running = self.running()
        supervision = self.supervision()
        health = asyncio.run(probe_all(list(self.topology.hosts), timeout=1.0))
        rows = []
        for host in self.topology.hosts:
            record = running.get(host.name)
            rss, pss = group_memory(record.pid) if record else (0, 0)
            state = supervision.get(host.name, {})
            rows.append(
                {
                    "name": host.name,
                    "role": host.role,
                    "site": host.site,
                    "az": host.az,
                    "address": host.address,
                    "port": host.port,
                    "protocol": host.protocol,
                    "metrics_port": host.metrics_port,
                    "module": host.module,
                    "pid": record.pid if record else None,
                    "healthy": health[host.name],
                    "rss_bytes": rss,
                    "pss_bytes": pss,
                    "state": state.get("state", "stopped"),
                    "restarts": state.get("restarts", 0),
                    "last_exit": state.get("last_exit"),
                }
            )
        return rows

    def _select(self, names: Iterable[str] | None) -> list[Host]:
        if not names:
            return list(self.topology.hosts)
        selected = []
        for name in names:
            try:
                selected.append(self.topology.host(name))
            except KeyError:
                raise LaunchError(f"no host named {name!r} in {self.topology.path}") from None
        return selected
