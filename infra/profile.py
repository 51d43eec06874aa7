"""``./d11 profile HOST [--seconds N]``: a flame graph of a running host, by py-spy.

py-spy samples the interpreter's stacks from outside (ptrace and /proc, never code in the
service), so the host keeps serving while it is looked at; ``--nonblocking`` (the default)
does not even pause it between samples. The graph is an SVG: open it in a browser, hover a
frame for its share, click to zoom. Hosts that share a process (the DNS servers, the CDN's
nodes, an order process's wires) share one graph; the gateway's workers are forked
children, sampled with it (``--subprocesses``).

In Docker mode (no supervisor here, a Compose project running) the host's container is
profiled through its process as this machine's kernel sees it.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from infra import ROOT
from infra.dockerlab import PROJECT
from infra.launcher import Launcher


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("profile: py-spy is not installed (it is in requirements.lock: ./d11 "
                         "re-syncs the venv)")  # fmt: skip
    return found


def host_pid(launcher: Launcher, name: str) -> tuple[int, str]:
    """The process serving ``name`` (a host, or a process that several hosts share, as
    ``bench.chain`` names them: ``orders-1``, ``dns``) and where it runs ("process" or
    "docker")."""
    topology = launcher.topology
    if name not in {h.name for h in topology.hosts}:
        shared = [h.name for h in topology.hosts if h.group == name]
        if not shared:  # a clear error, not a traceback or an empty graph
            known = sorted({h.name for h in topology.hosts} | {h.group for h in topology.hosts})
            raise SystemExit(f"profile: no host or process {name!r}; one of: {', '.join(known)}")
        name = shared[0]  # any of its hosts: they are one process
    record = launcher.running().get(name)
    if record is not None:
        return record.pid, "process"
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        ids = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
             "--filter", f"label=com.docker.compose.service={name}"],
            capture_output=True, text=True, timeout=10, check=True).stdout.split()  # fmt: skip
        if ids:
            inspect = ["docker", "inspect", "-f", "{{.State.Pid}}", ids[0]]
            pid = int(subprocess.run(inspect, capture_output=True, text=True, timeout=10,
                                     check=True).stdout.strip())  # fmt: skip
            if pid > 0:
                return pid, "docker"
    raise SystemExit(f"profile: {name} is not running (./d11 up {name})")


# py-spy's SVG names each frame "function (file:line) (N samples, P%)".
FRAME = re.compile(r"<title>(.+?) \((\d[\d,]*) samples?, ([\d.]+)%\)</title>")


def hottest(svg: str, count: int) -> list[tuple[str, float]]:
    """The frames holding the largest share of samples, the process's outer frames
    (runpy, the supervisor, the event loop's own run) left out."""
    shares: Counter[str] = Counter()
    for frame, _samples, share in FRAME.findall(svg):
        frame = html.unescape(frame)
        shares[frame] = max(shares[frame], float(share))
    outer = ("all", "<module>", "_run_code", "run_module", "_run_module", "Child.run",
             "main (", "run (infra/service", "_run (infra/service", "Runner.run",
             "Thread._bootstrap", "Thread.run", "process ", "thread ")  # fmt: skip
    rows = [(f, s) for f, s in shares.items() if not f.startswith(outer)]
    return sorted(rows, key=lambda r: -r[1])[:count]


def main(args: argparse.Namespace, launcher: Launcher) -> int:
    pid, mode = host_pid(launcher, args.host)
    default = launcher.dir / "profiles" / f"{args.host}-{time.strftime('%Y%m%d-%H%M%S')}.svg"
    out = Path(args.output) if args.output else default
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy(), "record", "--pid", str(pid), "--duration", str(args.seconds),
               "--rate", str(args.rate), "--format", "flamegraph", "--output", str(out),
               "--subprocesses", "--threads"]  # fmt: skip
    if not args.blocking:
        command.append("--nonblocking")
    if args.idle:
        command.append("--idle")
    print(f"profile: sampling {args.host} (pid {pid}, {mode} mode) for {args.seconds} s at "
          f"{args.rate} Hz…", file=sys.stderr)  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                         timeout=args.seconds + 60)  # fmt: skip
    if run.returncode != 0 or not out.exists():
        raise SystemExit(f"profile: py-spy failed ({run.returncode}): "
                         f"{(run.stderr or run.stdout).strip()[-800:]}")  # fmt: skip
    svg = out.read_text(errors="replace")
    samples = re.search(r"<title>all \((\d[\d,]*) samples", svg)
    print(f"flame graph: {out} ({samples.group(1) if samples else '?'} samples)")
    rows = hottest(svg, args.top)
    if rows:
        print("hottest frames (share of samples, callees included):")
        for frame, share in rows:
            print(f"  {share:5.1f} %  {frame}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("profile", help="a flame graph (SVG) of a running host, by py-spy")
    p.add_argument("host", help="a host of the topology (./d11 status lists them)")
    p.add_argument("--seconds", type=int, default=10, help="how long to sample (default 10)")
    p.add_argument("--rate", type=int, default=100, help="samples per second (default 100)")
    p.add_argument("--output", "-o", help="the SVG to write (default .run/profiles/HOST-…)")
    p.add_argument("--idle", action="store_true", help="keep idle threads' samples")
    p.add_argument(
        "--blocking",
        action="store_true",
        help="pause the process at each sample (exact stacks, slower service)",
    )
    p.add_argument("--top", type=int, default=12, help="hottest frames to list (default 12)")
