"""``./d11``: the Double-11 command line.

up [--detach] [HOST...]   start the topology as local processes and wait for health
   [--site SITE]          (--site: every host of that data centre)
down [HOST...]            stop everything ``up`` started (works after a launcher crash)
     [--site SITE]        (--site: a whole data centre, which stays down until up)
status [--json]           one row per host: address, pid, health, memory
logs [HOST] [-f]          service logs (JSON lines), pretty-printed or --raw
trace [TRACE_ID]          a trace's waterfall in the terminal (no id: recent traces)
test [PYTEST ARGS]        the whole test suite
chaos [--fault kill|hang] faults during a flash sale, and what they cost
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from infra import ROOT, topology
from infra.launcher import Launcher, LaunchError

# Piped output (tests, CI logs) gets a wide fixed width instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _launcher(args: argparse.Namespace) -> Launcher:
    return Launcher(topology.load(args.topology))


def _named(args: argparse.Namespace, launcher: Launcher) -> list[str]:
    """The hosts named on the command line, and with ``--site`` every host of that site."""
    names = list(args.hosts)
    if args.site:
        try:
            site = [h.name for h in launcher.topology.in_site(args.site)]
        except topology.TopologyError as exc:
            raise LaunchError(str(exc)) from None
        if not site:  # never the empty list: `down` would take it for everything
            raise LaunchError(f"site {args.site!r} has no hosts")
        names += site
    return names


def cmd_up(args: argparse.Namespace) -> int:
    launcher = _launcher(args)
    started_at = time.monotonic()
    try:
        args.hosts = _named(args, launcher)
        started = launcher.up(args.hosts, tie_to_launcher=not args.detach, timeout=args.timeout)
    except LaunchError as exc:
        err.print(f"[red]d11 up failed:[/] {exc}")
        return 1
    took = time.monotonic() - started_at
    _print_status(launcher.status())
    console.print(
        f"{len(started)} started, all healthy in {took:.1f}s, supervised (a process that"
        f" dies is restarted). Runtime files: {launcher.dir}"
    )
    if args.detach:
        console.print("Stop with [bold]./d11 down[/].")
        return 0
    console.print("Streaming logs; Ctrl-C stops everything.")
    names = [h.name for h in launcher._select(args.hosts)] if args.hosts else None
    return _foreground(launcher, names or [h.name for h in launcher.topology.hosts])


def _foreground(launcher: Launcher, names: list[str]) -> int:
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # Hosts sharing a process share its log (their log paths link to it): read it once,
    # under the process's name. The supervisor's log says what it restarted.
    files = {}
    for path in [*(launcher.log_path(n) for n in names), launcher.logs / "supervisor.log"]:
        path = path.resolve()
        if path.stem not in files and path.exists():
            files[path.stem] = open(path, "rb")  # noqa: SIM115
    for f in files.values():
        f.seek(0, os.SEEK_END)
    try:
        while not stop:
            quiet = True
            for name, f in files.items():
                for line in f.readlines():
                    quiet = False
                    _print_log(name, line)
            if launcher.supervisor() is None:
                err.print("[red]the supervisor stopped unexpectedly[/]")
                break
            if quiet:
                time.sleep(0.2)
    finally:
        console.print("stopping…")
        launcher.down()
        for f in files.values():
            f.close()
    return 0


def _print_log(name: str, raw: bytes, *, as_json: bool = False) -> None:
    line = raw.decode(errors="replace").rstrip("\n")
    if as_json:
        print(line)
        return
    try:
        event = json.loads(line)
        level = event.pop("level", "info")
        msg = event.pop("msg", "")
        ts = event.pop("ts", "")[11:23]
        for key in ("service", "logger"):
            event.pop(key, None)
        extra = " ".join(f"{k}={v}" for k, v in event.items())
        style = {"error": "red", "warning": "yellow"}.get(level, "")
        console.print(
            f"[dim]{ts}[/] [bold]{name:>14}[/] [{style}]{msg}[/{style}] [dim]{extra}[/]"
            if style
            else f"[dim]{ts}[/] [bold]{name:>14}[/] {msg} [dim]{extra}[/]",
            highlight=False,
            markup=True,
            soft_wrap=True,
        )
    except (ValueError, AttributeError):
        console.print(f"[bold]{name:>14}[/] {line}", highlight=False, markup=True, soft_wrap=True)


def cmd_down(args: argparse.Namespace) -> int:
    launcher = _launcher(args)
    try:
        names = _named(args, launcher)
    except LaunchError as exc:
        err.print(f"[red]d11 down failed:[/] {exc}")
        return 1
    stopped = launcher.down(names)
    console.print(f"stopped {len(stopped)}: {', '.join(stopped)}" if stopped else "nothing running")
    return 0


def _print_status(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Double-11 hosts", title_justify="left")
    table.caption = ("PSS divides pages shared between processes (the interpreter, libraries)"
                     " among them: its total is the stack's real footprint; RSS counts them"
                     " in each")  # fmt: skip
    numeric = ("pid", "RSS MiB", "PSS MiB")
    columns = ("name", "role", "site", "az", "address", "protocol", "pid", "health", "restarts",
               "last exit")  # fmt: skip
    for column in (*columns, *numeric[1:]):
        table.add_column(column, justify="right" if column in numeric else "left")
    for r in rows:
        health = "[green]healthy[/]" if r["healthy"] else "[red]down[/]"
        if not r["healthy"] and r.get("state") in ("restarting", "gave-up"):
            health = f"[red]{r['state']}[/]"
        table.add_row(
            r["name"],
            r["role"],
            r.get("site") or "",
            r.get("az") or "",
            f"{r['address']}:{r['port']}",
            r["protocol"],
            str(r["pid"] or "-"),
            health,
            str(r.get("restarts", 0)),
            r.get("last_exit") or "",
            f"{r['rss_bytes'] / 2**20:.1f}",
            f"{r['pss_bytes'] / 2**20:.1f}",
        )
    # Hosts sharing a process report that process's memory: count each process once.
    rss = sum({r["pid"]: r["rss_bytes"] for r in rows if r["pid"]}.values())
    pss = sum({r["pid"]: r["pss_bytes"] for r in rows if r["pid"]}.values())
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        "",
        "",
        "",
        "",
        f"{sum(r['healthy'] for r in rows)}/{len(rows)}",
        str(sum(r.get("restarts", 0) for r in rows)),
        "",
        f"{rss / 2**20:.1f}",
        f"{pss / 2**20:.1f}",
    )
    console.print(table)


def cmd_status(args: argparse.Namespace) -> int:
    rows = _launcher(args).status()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_status(rows)
    return 0 if all(r["healthy"] for r in rows) else 3


def cmd_logs(args: argparse.Namespace) -> int:
    launcher = _launcher(args)
    names = [args.host] if args.host else [h.name for h in launcher.topology.hosts]
    files = {}
    for name in names:
        path = launcher.log_path(name)
        if path.exists():
            files[name] = open(path, "rb")  # noqa: SIM115
        elif args.host:
            err.print(f"no log for {name} at {path}")
            return 1
    try:
        for name, f in files.items():
            for line in f.readlines()[-args.lines :]:
                _print_log(name, line, as_json=args.raw)
        while args.follow:
            quiet = True
            for name, f in files.items():
                for line in f.readlines():
                    quiet = False
                    _print_log(name, line, as_json=args.raw)
            if quiet:
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for f in files.values():
            f.close()
    return 0


def _collector_url(args: argparse.Namespace) -> str:
    if args.collector:
        return args.collector.rstrip("/")
    collectors = topology.load(args.topology).by_role("collector")
    if not collectors:
        raise LaunchError("no collector in the topology; pass --collector URL")
    return f"http://{collectors[0].endpoint}"


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _trace_or_order(base: str, ident: str) -> Any:
    """A trace by its id, or else the newest trace of the order with that id."""
    try:
        return _get_json(f"{base}/api/traces/{ident}")
    except urllib.error.HTTPError as exc:
        if exc.code not in (400, 404):
            raise
        query = urllib.parse.urlencode({"attr": f"order.id={ident}", "limit": 1})
        found = _get_json(f"{base}/api/traces?{query}")["traces"]
        if not found:
            raise
        return _get_json(f"{base}/api/traces/{found[0]['trace_id']}")


def cmd_trace(args: argparse.Namespace) -> int:
    from infra.traceview import render

    base = _collector_url(args)
    try:
        if not args.trace_id:
            listing = _get_json(f"{base}/api/traces?limit={args.limit}")["traces"]
            table = Table(title=f"recent traces at {base}", title_justify="left")
            for column in ("trace id", "root", "spans", "errors", "ms"):
                table.add_column(column)
            for t in listing:
                table.add_row(
                    t["trace_id"],
                    f"{t['root_service']}: {t['root_name']}",
                    str(t["span_count"]),
                    str(t["error_count"]),
                    f"{t['duration_ns'] / 1e6:.2f}",
                )
            console.print(table)
            return 0
        doc = _trace_or_order(base, args.trace_id)
    except urllib.error.HTTPError as exc:
        err.print(f"[red]{exc.code}[/] {exc.read().decode(errors='replace').strip()}")
        return 1
    except (urllib.error.URLError, OSError) as exc:
        err.print(f"[red]collector at {base} not reachable:[/] {exc}")
        return 1
    render(doc["trace_id"], doc["spans"], console, attrs=args.attrs)
    console.print(f"web: {base}/traces/{doc['trace_id']}")
    return 0


def cmd_dig(args: argparse.Namespace) -> int:
    """The resolution path of a name: hop by hop from the root (--trace), or one question
    to an ISP resolver or HTTPDNS (--via)."""
    from dnslib import RCODE

    from dns.walk import via, walk

    topo = topology.load(args.topology)
    qtype = args.type.upper()
    try:
        if args.trace or not args.via:
            root = topo.host("dns-root").address
            table = Table(title=f"{args.name} {qtype}, from the root {root}", title_justify="left")
            for column in ("server", "asked as", "status", "aa", "ms", "said"):
                table.add_column(column)
            for hop in walk(root, args.name, qtype):
                referral = [f"→ NS {n}" for n in hop.referral] + [f"  glue {g}" for g in hop.glue]
                said = hop.answer or referral
                if hop.note:
                    said = [*said, f"[dim]{hop.note}[/]"]
                table.add_row(hop.server, hop.zone, hop.rcode, "aa" if hop.aa else "",
                              f"{hop.ms:.1f}", "\n".join(said) or "-")  # fmt: skip
            console.print(table)
            return 0
        host = topo.host(args.via)
        if host.role == "httpdns":
            url = f"http://{host.endpoint}/resolve?" + urllib.parse.urlencode(
                {"name": args.name, "type": qtype}
            )
            doc = _get_json(url)
            console.print(f"{args.via} ({host.endpoint}) status {doc['Status']}")
            for a in doc.get("Answer", []) + doc.get("Authority", []):
                console.print(f"  {a['name']} {a['TTL']} {a['type']} {a['data']}")
            return 0
        reply, ms = via(host.address, args.name, qtype, host.port)
        flags = " ".join(f for f in ("qr", "aa", "rd", "ra") if getattr(reply.header, f))
        status = RCODE.get(reply.header.rcode)
        console.print(f"{args.via} ({host.address}) {status} flags: {flags}; {ms:.1f} ms")
        for rr in reply.rr + reply.auth:
            console.print(f"  {rr.toZone()}")
        return 0
    except (OSError, urllib.error.URLError) as exc:
        err.print(f"[red]no answer:[/] {exc} (is ./d11 up running?)")
        return 1


def cmd_profile(args: argparse.Namespace) -> int:
    from infra import profile

    return profile.main(args, _launcher(args))


def cmd_test(args: argparse.Namespace, rest: list[str]) -> int:
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *rest])


def cmd_top(args: argparse.Namespace) -> int:
    from infra.top import main as top_main

    return top_main(args)


def cmd_load(args: argparse.Namespace, rest: list[str]) -> int:
    from services.load import main as load_main

    return load_main(rest)


def cmd_chaos(args: argparse.Namespace, rest: list[str]) -> int:
    from services.chaos import main as chaos_main

    return chaos_main(rest)


def cmd_compose(args: argparse.Namespace, rest: list[str]) -> int:
    from infra.compose import main as compose_main

    return compose_main(rest)


def cmd_k8s(args: argparse.Namespace, rest: list[str]) -> int:
    from infra.k8s import main as k8s_main

    return k8s_main(rest)


def cmd_bgp(args: argparse.Namespace) -> int:
    from infra.router import show

    return show(args.json)


def cmd_docker(args: argparse.Namespace, rest: list[str]) -> int:
    from infra.dockerlab import main as docker_main

    return docker_main(rest)


def cmd_swarm(args: argparse.Namespace, rest: list[str]) -> int:
    from infra.swarm import main as swarm_main

    return swarm_main(rest)


PASSTHROUGH = (
    ("load", "drive a flash sale with simulated phones, then audit it (see --help)", cmd_load),
    ("chaos", "kill or hang processes during a load; report failures and recovery", cmd_chaos),
    ("compose", "render compose.yaml and docker/ from the topology (--check)", cmd_compose),
    ("k8s", "render the Kubernetes manifests (k8s/base) from the topology (--check)", cmd_k8s),
    ("docker", "Docker mode where no registry answers: build, up, down, compose", cmd_docker),
    ("swarm", "the lab on a multi-node Docker Swarm (Docker in Docker): up, load, down", cmd_swarm),
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d11", description="Double-11: one purchase, every protocol.")
    p.add_argument(
        "--topology",
        type=Path,
        default=None,
        help="topology file (default: $D11_TOPOLOGY or infra/topology.yaml)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start every service as a local process")
    up.add_argument("hosts", nargs="*", help="only these hosts (default: all)")
    up.add_argument("-d", "--detach", action="store_true", help="return once healthy")
    up.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for health")
    up.add_argument("--site", help="every host of this site (infra/topology.yaml sites:)")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop what up started")
    down.add_argument("hosts", nargs="*")
    down.add_argument("--site", help="every host of this site; it stays down until up")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="one row per host")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", help="service logs")
    logs.add_argument("host", nargs="?")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("--raw", action="store_true", help="the JSON lines as written")
    logs.set_defaults(func=cmd_logs)

    trace = sub.add_parser("trace", help="draw a trace's waterfall (by trace or order id)")
    trace.add_argument("trace_id", nargs="?")
    trace.add_argument("--attrs", action="store_true", help="show span attributes")
    trace.add_argument("--limit", type=int, default=20)
    trace.add_argument("--collector", help="collector base URL (default: from the topology)")
    trace.set_defaults(func=cmd_trace)

    dig = sub.add_parser("dig", help="resolve a name and show the path (root → … → answer)")
    dig.add_argument("name")
    dig.add_argument("type", nargs="?", default="A")
    dig.add_argument(
        "--via", help="ask this resolver or httpdns host instead (e.g. resolver-telecom)"
    )
    dig.add_argument("--trace", action="store_true", help="walk from the root (the default)")
    dig.set_defaults(func=cmd_dig)

    from infra import profile

    profile.add_parser(sub)
    sub.choices["profile"].set_defaults(func=cmd_profile)

    test = sub.add_parser("test", help="run the test suite (extra args go to pytest)")
    test.set_defaults(func=cmd_test)

    top = sub.add_parser("top", help="live request rates, errors and latencies per service")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    top.add_argument("--count", type=int, default=0, help="stop after this many (0: Ctrl-C)")
    top.add_argument("--json", action="store_true", help="one interval, as JSON, then exit")
    top.set_defaults(func=cmd_top)

    bgp = sub.add_parser("bgp", help="Docker mode: each BGP router's sessions and routes")
    bgp.add_argument("--json", action="store_true")
    bgp.set_defaults(func=cmd_bgp)

    # Commands whose arguments (and --help) belong to the module they hand over to.
    for name, helptext, func in PASSTHROUGH:
        sub.add_parser(name, help=helptext, add_help=False).set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    # Everything after `test` belongs to pytest, after `load` to the load script, etc.:
    # the first word that names a command decides (`docker compose ps` is docker's).
    passthrough = {"test": cmd_test, **{n: f for n, _, f in PASSTHROUGH}}
    for i, word in enumerate(argv):
        if i and argv[i - 1] == "--topology":
            continue
        if word in passthrough:
            args = p.parse_args(argv[: i + 1])
            raise SystemExit(passthrough[word](args, argv[i + 1 :]))
        if not word.startswith("-"):
            break  # another command: argparse has it
    args = p.parse_args(argv)
    try:
        raise SystemExit(args.func(args))
    except (LaunchError, topology.TopologyError) as exc:
        err.print(f"[red]d11:[/] {exc}")
        raise SystemExit(1) from None
