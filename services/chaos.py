"""``./d11 chaos``: faults injected into the running stack while a flash sale runs, and what
they cost.

Every ``--every`` seconds a process of the stack (a host, or the group of hosts sharing
it) is picked at random among ``--targets`` (roles; default: every role) and given a fault:

* ``kill``: SIGKILL to its process group, as a crash or the OOM killer would. The
  supervisor (process mode) or the engine's restart policy (Docker mode) brings it back.
* ``hang``: SIGSTOP, then SIGCONT ``--hang`` seconds later: a process that holds its
  connections and answers nothing, which only deadlines and retries survive.
* ``site``: a whole access site goes down for ``--outage`` seconds and comes back
  (``./d11 down --site`` / ``up --site``; in Docker mode ``docker stop`` / ``start`` of its
  containers, its NAT and VPN gateway included): the GSLB sends its users to the main site
  meanwhile. Each window of the report counts who served each region's
  visits (``north>east``: a north phone served by the east). ``--targets`` names sites.

The same load runs twice in one invocation, first quiet and then under the faults, so the
throughput is compared on the same machine at the same moment. The report: each fault
(time, host, kind) and how long its host took to be healthy again; failed visits per
5-second window; the failed share, the retries, visits/s against the quiet run; and each
run's audit (nothing lost, nothing duplicated, stock conserved). Exit status 1 when an
audit fails or a killed host did not come back.

In Docker mode (``--docker``, or by itself when Compose's containers run and no process
stack does) the load runs in the phone container, a kill is SIGKILL to the container's
init process from the host (a crash: the engine's restart policy brings it back, where
``docker kill`` would count as a deliberate stop), and a hang is ``docker pause`` then
``docker unpause``. "Healthy again" is the container's own health check command answering
(run with ``docker exec``; the engine's checks run every 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from infra import ROOT
from infra import topology as topo
from infra.health import probe_all
from infra.launcher import Launcher, LaunchError
from infra.topology import Host
from services import load


def targets(topology: topo.Topology, roles: set[str] | None) -> list[list[Host]]:
    """The process groups a fault may hit (a group whose hosts have one of ``roles``)."""
    return [g for g in topology.groups() if roles is None or any(h.role in roles for h in g)]


class Prober:
    """The recovery probes' own event loop, in one worker thread for the whole run: the
    main loop also drives the phones, and a probe waiting behind 64 phones' callbacks would
    time out on a host that answers (a gateway, healthy 0.6 s after its kill, was seen
    "back" after 6.3 s). One loop, made once: a fresh loop per probe (20 a second, each
    made and closed in a thread beside the phones' uvloop) went with a chaos run that died
    of SIGABRT, its stderr empty, in two CI runs."""

    _shared: Prober | None = None

    def __init__(self) -> None:
        self.loop = asyncio.SelectorEventLoop()
        threading.Thread(target=self.loop.run_forever, name="chaos-probes", daemon=True).start()

    @classmethod
    def shared(cls) -> Prober:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    async def probe(self, hosts: list[Host], timeout: float) -> dict[str, bool]:
        future = asyncio.run_coroutine_threadsafe(probe_all(hosts, timeout=timeout), self.loop)
        return await asyncio.wrap_future(future)


async def back_healthy(hosts: list[Host], since: float, limit: float) -> float | None:
    """Seconds from ``since`` until every host of the group answers its health probe (on
    the probes' own loop, ``Prober``)."""
    while time.monotonic() - since < limit:
        results = await Prober.shared().probe(hosts, 0.3)
        if all(results.values()):
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    return None


PHONE_NICENESS = 5
Hit = Callable[[list[Host], str], Awaitable[None]]
Back = Callable[[dict[str, Any], list[Host], float], Awaitable[None]]


async def inject(args: argparse.Namespace, groups: list[list[Host]], hit: Hit, back: Back,
                 started: float, faults: list[dict[str, Any]]) -> None:  # fmt: skip
    """Every ``--every`` seconds a fault on a group picked at random, until the run's end;
    each fault's recovery is timed beside the ones that follow."""
    if not groups:
        raise SystemExit(f"nothing to hit has a role in --targets {args.targets}")
    rng = random.Random(args.seed)
    recoveries = []
    await asyncio.sleep(args.every)
    while time.monotonic() - started < args.duration - 1 and len(faults) < args.max_faults:
        group = rng.choice(groups)
        kind = rng.choice(("kill", "hang")) if args.fault == "mix" else args.fault
        fault: dict[str, Any] = {
            "at_s": round(time.monotonic() - started, 2),
            "host": ", ".join(h.name for h in group),
            "kind": kind,
        }
        if kind == "site":
            fault["host"] = f"site {group[0].site} ({fault['host']})"
        faults.append(fault)
        at = time.monotonic()
        try:
            await hit(group, kind)
        except Exception as exc:  # the report says what went wrong; the run goes on
            fault["skipped"] = f"{type(exc).__name__}: {exc}"
        else:
            if kind == "site":  # the outage was deliberate: time the way back from `up`
                fault["outage_s"], at = round(time.monotonic() - at, 2), time.monotonic()
            recoveries.append(asyncio.create_task(back(fault, group, at)))
        await asyncio.sleep(args.every)
    await asyncio.gather(*recoveries)


def site_targets(topology: topo.Topology, names: set[str] | None) -> list[list[Host]]:
    """For ``--fault site``: each access site's hosts (never the main site's: its stores
    are the shop's only copy), or the sites ``--targets`` names."""
    chosen = [s for s in topology.sites if (s in names if names else s != topology.main_site)]
    return [hosts for hosts in map(topology.in_site, chosen) if hosts]


def process_hit(args: argparse.Namespace, launcher: Launcher) -> Hit:
    async def hit(group: list[Host], kind: str) -> None:
        if kind == "site":
            # As the user would: `./d11 down --site`, the outage, `./d11 up --site`. The
            # site comes back whatever the outage met, and `up` is asked again if a
            # process of the site was still letting go of its address.
            names = [h.name for h in group]
            try:
                await asyncio.to_thread(launcher.down, names)
                left = set(names) & set(launcher.running())
                if left:
                    await asyncio.to_thread(launcher.down, sorted(left))
                await asyncio.sleep(args.outage)
            finally:
                for attempt in range(3):
                    try:
                        await asyncio.to_thread(launcher.up, names, timeout=30.0)
                        break
                    except LaunchError:
                        if attempt == 2:
                            raise
                        await asyncio.sleep(2.0)
            return
        record = launcher.running().get(group[0].name)
        if record is None:
            raise RuntimeError("not running")
        if kind == "kill":
            os.killpg(record.pid, signal.SIGKILL)
            return
        os.killpg(record.pid, signal.SIGSTOP)
        asyncio.get_running_loop().call_later(args.hang, os.killpg, record.pid, signal.SIGCONT)

    return hit


async def _record_back(fault: dict[str, Any], group: list[Host], hit: float) -> None:
    await asyncio.sleep(0.1)  # let the fault take effect before probing
    took = await back_healthy(group, hit, 30.0)
    fault["healthy_after_s"] = round(took, 2) if took is not None else None


def load_argv(args: argparse.Namespace) -> list[str]:
    return [
        "--scenario", args.scenario, "--protocol", args.protocol,
        "--concurrency", str(args.concurrency), "--orders", "1000000",
        "--duration", str(args.duration), "--stock", str(args.stock),
        "--trace-ratio", str(args.trace_ratio), "--seed", str(args.seed),
        "--rate", str(args.rate), "--json",
    ]  # fmt: skip


def load_args(args: argparse.Namespace) -> argparse.Namespace:
    return load.parser().parse_args(load_argv(args))


# Where the engine puts a container's processes: cgroup v1 (cgroupfs, or systemd's
# driver) and v2. Read directly, since dockerd answers slowly while it restarts one.
CGROUP_PROCS = ("/sys/fs/cgroup/pids/docker/{id}/cgroup.procs",
                "/sys/fs/cgroup/docker/{id}/cgroup.procs",
                "/sys/fs/cgroup/system.slice/docker-{id}.scope/cgroup.procs",
                "/sys/fs/cgroup/pids/system.slice/docker-{id}.scope/cgroup.procs")  # fmt: skip


def container_pids(container_id: str) -> list[int]:
    """The running container's processes (from its cgroup); none while it is down."""
    for pattern in CGROUP_PROCS:
        try:
            return [int(p) for p in Path(pattern.format(id=container_id)).read_text().split()]
        except OSError:
            continue
    return []


def container_pid(container_id: str) -> int | None:
    """A process of the running container (any shares its network namespace), or None
    while it is down."""
    pids = container_pids(container_id)
    return pids[0] if pids else None


def listening(pid: int, port: int, *, udp: bool = False) -> bool:
    """Whether a TCP socket listens (or, with ``udp``, a UDP socket is bound) on ``port`` in
    the network namespace of ``pid``: a read of /proc, where a health check costs an
    interpreter's start. A restarting service is looked at this way every 50 ms and checked
    for real once it listens."""
    wanted = "07" if udp else "0A"  # the kernel's TCP_CLOSE (an unconnected UDP socket), LISTEN
    for table in ("udp", "udp6") if udp else ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == wanted and int(local.rpartition(":")[2], 16) == port:
                return True
    return False


def runs_a_load(pid: int) -> bool:
    try:
        return b"-m\0infra\0load" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Docker:
    """The Compose project's containers, found by Compose's labels (v1 and v2 alike)."""

    def __init__(self) -> None:
        from infra.dockerlab import PROJECT

        self.project = PROJECT
        self.topology = topo.load(mode="docker")
        # A restarted container keeps its id: look each up once (docker is slow to ask).
        self.ids: dict[str, str] = {}
        self.tests: dict[str, list[str]] = {}
        self.envs: dict[str, dict[str, str]] = {}

    async def _docker(self, *argv: str, check: bool = True, stderr: bool = False) -> str:
        """``docker ARGV``'s output; ``stderr``: the command's stderr goes to ours."""
        process = await asyncio.create_subprocess_exec(
            "docker", *argv, stdout=asyncio.subprocess.PIPE,
            stderr=None if stderr else asyncio.subprocess.PIPE)  # fmt: skip
        out, err = await process.communicate()
        if check and process.returncode != 0:
            said = err.decode().strip() if err else f"exit {process.returncode}"
            raise RuntimeError(f"docker {' '.join(argv[:3])}: {said}")
        return out.decode()

    async def container(self, service: str) -> str:
        if service in self.ids:
            return self.ids[service]
        found = (await self._docker(
            "ps", "-aq", "--no-trunc", "--filter",  # -a: a stopped one is still ours to start
            f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}")).split()  # fmt: skip
        if len(found) != 1:
            raise RuntimeError(f"{service}: {len(found)} containers")
        self.ids[service] = found[0]
        return found[0]

    async def running(self) -> bool:
        try:
            return container_pid(await self.container("phone")) is not None
        except (RuntimeError, OSError):
            return False

    async def kill(self, service: str) -> None:
        pid = (await self._docker("inspect", "-f", "{{.State.Pid}}",
                                  await self.container(service))).strip()  # fmt: skip
        os.kill(int(pid), signal.SIGKILL)

    async def hang(self, service: str, seconds: float) -> None:
        cid = await self.container(service)
        await self._docker("pause", cid)
        await asyncio.sleep(seconds)
        await self._docker("unpause", cid)

    async def healthy(self, service: str) -> bool:
        """The container's own health check (compose.yaml's ``test``), run from this
        machine in the container's network namespace (nsenter): the same probe as
        Docker's, without ``docker exec``'s few hundred milliseconds per look."""
        try:
            cid = await self.container(service)
            if service not in self.tests:
                config = json.loads(await self._docker(
                    "inspect", "-f", "{{json .Config}}", cid))  # fmt: skip
                env = dict(e.split("=", 1) for e in config["Env"] if "=" in e)
                self.tests[service] = config["Healthcheck"]["Test"][1:]
                # A module's check (the NAT's rules) reads the host's settings too.
                self.envs[service] = {k: v for k, v in env.items() if k.startswith("D11_")}
            pid = container_pid(cid)
            if pid is None:
                return False
            host = self.topology.host(service)
            if host.protocol != "nat" and not listening(pid, host.port,
                                                        udp=host.protocol == "dns"):  # fmt: skip
                return False
            _python, flag, script, *rest = self.tests[service]
            target = script if flag == "-m" else str(ROOT / script)  # a module, or a file
            process = await asyncio.create_subprocess_exec(
                "nsenter", "-t", str(pid), "-n", "--", sys.executable, flag, target, *rest,
                cwd=ROOT,
                env={**os.environ, **self.envs[service], "D11_HEALTH_TIMEOUT": "0.3"},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)  # fmt: skip
            return await process.wait() == 0
        except (RuntimeError, OSError, ValueError, TypeError, KeyError):
            return False

    async def other_load_done(self, limit: float = 180.0) -> None:
        """Wait out a load already running in the phone container (the demo `docker
        compose up` starts, a user's): its orders on the same item would count in our
        audit as units nobody of ours ordered."""
        phone, deadline, said = await self.container("phone"), time.monotonic() + limit, False
        while any(runs_a_load(p) for p in container_pids(phone)):
            if time.monotonic() > deadline:
                raise RuntimeError("a load in the phone container has not ended")
            if not said:
                print("chaos: waiting for the phone container's running load (the demo of"
                      " D11_PHONE_DEMO) to end", file=sys.stderr)  # fmt: skip
                said = True
            await asyncio.sleep(1)

    async def load(self, args: argparse.Namespace) -> dict[str, Any]:
        # Niced as in process mode: the phones are the outside world, not the data centre.
        # A failed audit exits 1 with its report: the report is what counts. Its stderr
        # (visits cut off, a run given up and where it waited) is the user's to see.
        out = await self._docker("exec", await self.container("phone"), "nice", "-n",
                                 str(PHONE_NICENESS), "python", "-m", "infra", "load",
                                 *load_argv(args), check=False, stderr=True)  # fmt: skip
        if not out.strip():
            raise RuntimeError("the phone container's ./d11 load printed no report")
        return json.loads(out)


def docker_targets(docker: Docker, roles: set[str] | None) -> list[list[Host]]:
    # The phone is the load itself; the network's appliances (a site's NAT, its VPN
    # gateway, the BGP routers) are one each, as a cloud's managed gateways: not targets.
    return [[h] for h in docker.topology.hosts
            if h.role not in topo.APPLIANCES and h.name != "tenant-b-inventory"
            and (roles is None or h.role in roles)]  # fmt: skip


def docker_hit(args: argparse.Namespace, docker: Docker) -> Hit:
    hangs: set[asyncio.Task[None]] = set()

    async def hit(group: list[Host], kind: str) -> None:
        if kind == "site":
            # `docker stop` (a stop the restart policy respects), the outage, `docker start`.
            ids = [await docker.container(h.name) for h in group]
            await docker._docker("stop", "-t", "2", *ids)
            await asyncio.sleep(args.outage)
            await docker._docker("start", *ids)
            return
        if kind == "kill":
            await docker.kill(group[0].name)
            return
        task = asyncio.create_task(docker.hang(group[0].name, args.hang))
        hangs.add(task)
        task.add_done_callback(hangs.discard)

    return hit


def docker_back(docker: Docker) -> Back:
    async def back(fault: dict[str, Any], group: list[Host], hit: float) -> None:
        await asyncio.sleep(0.2)
        while time.monotonic() - hit < 60:
            if all([await docker.healthy(h.name) for h in group]):
                fault["healthy_after_s"] = round(time.monotonic() - hit, 2)
                return
            await asyncio.sleep(0.05)  # cheap until the service listens (see `listening`)
        fault["healthy_after_s"] = None

    return back


async def run(args: argparse.Namespace) -> dict[str, Any]:
    launcher = Launcher(topo.load())
    docker = Docker() if args.docker or launcher.supervisor() is None else None
    roles = set(args.targets.split(",")) if args.targets else None  # sites for --fault site
    if docker is not None and not await docker.running():
        raise SystemExit("no stack is running: ./d11 up --detach (or docker compose up) first")
    quiet = None
    faults: list[dict[str, Any]] = []
    if docker is not None:
        await docker.other_load_done()
        if not args.no_quiet:
            quiet = await docker.load(args)
        started = time.monotonic()
        chaos_load = asyncio.create_task(docker.load(args))
        groups = (site_targets(docker.topology, roles) if args.fault == "site"
                  else docker_targets(docker, roles))  # fmt: skip
        await inject(args, groups, docker_hit(args, docker),
                     docker_back(docker), started, faults)  # fmt: skip
        report = await chaos_load
    else:
        # The phones stand for other machines: on this one they yield the CPU to the shop
        # (a restarting service first of all), in the quiet run and the chaos run alike.
        os.nice(PHONE_NICENESS)
        if not args.no_quiet:
            quiet = await load.execute(load_args(args), live=False)
        started = time.monotonic()
        chaos_load = asyncio.create_task(load.execute(load_args(args), live=False))
        groups = (site_targets(launcher.topology, roles) if args.fault == "site"
                  else targets(launcher.topology, roles))  # fmt: skip
        await inject(args, groups, process_hit(args, launcher), _record_back, started,
                     faults)  # fmt: skip
        report = await chaos_load
    report.pop("journeys", None)
    out: dict[str, Any] = {
        "fault": args.fault,
        "every_s": args.every,
        "duration_s": args.duration,
        "faults": faults,
        "windows": report["windows"],
        "visits": report["visits"],
        "failed": report["failed"],
        "failed_share": report["failed_share"],
        "retries": report["retries"],
        "visits_retried": report["visits_retried"],
        "dns_fallbacks": report["dns_fallbacks"],
        "sites_by_region": report["sites_by_region"],
        "visits_per_s": report["visits_per_s"],
        "outcomes": report["outcomes"],
        "errors": report["errors"],
        "audit": report["audit"],
    }
    out["mode"] = "docker" if docker is not None else "process"
    if quiet is not None:
        quiet.pop("journeys", None)
        out["quiet"] = {k: quiet[k] for k in ("visits", "failed", "visits_per_s")}
        out["quiet"]["audit_passed"] = quiet["audit"]["passed"]
        out["throughput_vs_quiet"] = (
            round(report["visits_per_s"] / quiet["visits_per_s"], 3) if quiet["visits_per_s"]
            else None
        )  # fmt: skip
    backs = [f["healthy_after_s"] for f in faults if "healthy_after_s" in f]
    out["slowest_recovery_s"] = max((b for b in backs if b is not None), default=None)
    out["all_back"] = all(b is not None for b in backs)
    return out


def print_report(r: dict[str, Any], console: Console) -> None:
    t = Table(title=f"faults ({r['fault']}, every {r['every_s']}s)", title_justify="left")
    for col in ("at s", "host", "kind", "healthy again after"):
        t.add_column(col)
    for f in r["faults"]:
        back = f.get("skipped") or (
            "not back" if f.get("healthy_after_s") is None else f"{f['healthy_after_s']:.2f}s"
        )
        t.add_row(str(f["at_s"]), f["host"], f["kind"], back)
    console.print(t)
    t = Table(title="visits per 5 s window", title_justify="left")
    for col in ("from s", "visits", "failed", "errors", "served (region>site)"):
        t.add_column(col)
    for w in r["windows"]:
        errors = ", ".join(f"{k} {v}" for k, v in w["errors"].items())
        served = ", ".join(f"{k} {v}" for k, v in w.get("served", {}).items())
        t.add_row(str(w["from_s"]), str(w["visits"]), str(w["failed"]), errors, served)
    console.print(t)
    console.print(f"failed visits: {r['failed']} of {r['visits']} ({r['failed_share']:.2%});"
                  f" retries {r['retries']} in {r['visits_retried']} visits;"
                  f" HTTPDNS fallbacks {r['dns_fallbacks']}")  # fmt: skip
    for outcome, messages in r["errors"].items():
        for message in messages:
            console.print(f"  {outcome}: {message}", markup=False, highlight=False)
    if "quiet" in r:
        console.print(f"visits/s: {r['visits_per_s']} under faults, {r['quiet']['visits_per_s']}"
                      f" quiet ({r['throughput_vs_quiet']:.0%})")  # fmt: skip
    verdict = "[green]PASSED[/]" if r["audit"]["passed"] else "[red]FAILED[/]"
    console.print(
        f"audit {verdict}: "
        + ", ".join(f"{'✓' if ok else '✗'} {check}" for check, ok in r["audit"]["checks"].items())
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d11 chaos", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load under faults")
    p.add_argument("--every", type=float, default=4.0, help="seconds between faults")
    p.add_argument("--fault", choices=["kill", "hang", "mix", "site"], default="kill")
    p.add_argument("--targets", default="",
                   help="roles to hit (sites for --fault site), comma-separated (default all)")
    p.add_argument("--hang", type=float, default=3.0, help="seconds a hung process stays stopped")
    p.add_argument("--outage", type=float, default=15.0, help="seconds a site stays down")
    p.add_argument("--max-faults", type=int, default=1_000_000, help="stop injecting after N")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scenario", choices=["flash-sale", "mixed"], default="mixed")
    p.add_argument("--protocol", default="mix")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0,
                   help="open-loop visits per second (default: closed loop, each phone as "
                        "fast as the shop answers, which keeps every core busy)")  # fmt: skip
    p.add_argument("--stock", type=int, default=100_000, help="the hot item's stock")
    p.add_argument("--trace-ratio", type=float, default=0.01)
    p.add_argument("--no-quiet", action="store_true", help="skip the quiet comparison run")
    p.add_argument(
        "--docker",
        action="store_true",
        help="the Compose stack (default when no process stack runs)",
    )
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # A native crash (SIGSEGV, SIGABRT) says where: the Python stacks on stderr.
    faulthandler.enable()
    if min(args.duration, args.every, args.hang, args.outage, args.max_faults) <= 0:
        raise SystemExit("--duration, --every, --hang, --outage and --max-faults must be positive")
    try:
        import uvloop

        report = uvloop.run(run(args))
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, Console())
    return 0 if report["audit"]["passed"] and report["all_back"] else 1


if __name__ == "__main__":
    sys.exit(main())
