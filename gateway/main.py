"""``python -m gateway``: nginx's process model. The master reads the config, binds the
listening sockets and forks ``worker_processes`` workers that inherit them (all accept on
the same sockets, as nginx's workers do). Signals, as nginx's:

* ``SIGHUP``: reload. A new config is checked first; if it is bad the old workers keep
  serving and the error is logged. Otherwise new workers start on the same sockets and
  the old ones drain their in-flight requests and exit: nothing is refused or dropped,
  because the sockets never close.
* ``SIGTERM``/``SIGINT``: workers drain and exit, then the master.

``python -m gateway -t [-c FILE]`` tests a config and exits, like ``nginx -t``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.config import Config, ConfigError, load
from gateway.limit import Zone
from infra import ROOT
from infra.config import Settings
from infra.logs import setup_logging
from infra.service import (
    EXIT_CONFIG,
    EXIT_PORT_IN_USE,
    Component,
    Context,
    PortInUse,
    bind_socket,
    run,
)

log = logging.getLogger("d11.gateway")

DEFAULT_CONF = ROOT / "gateway" / "gateway.conf"
DEFAULT_EXTENSIONS = ROOT / "gateway" / "extensions.conf"

Listeners = dict[tuple[str, int, bool], socket.socket]


def config_paths(
    env: dict[str, str] | os._Environ[str], conf: str | None
) -> tuple[Path, Path | None]:
    path = Path(conf or env.get("D11_GATEWAY_CONF") or DEFAULT_CONF)
    ext = env.get("D11_GATEWAY_EXTENSIONS")
    if ext is None:
        return path, DEFAULT_EXTENSIONS if path == DEFAULT_CONF else None
    return path, Path(ext) if ext else None


def host_addresses(settings: Settings) -> list[str]:
    """The host's own address and its aliases (``D11_ADDRESS_ALIASES``: the regions' entry
    addresses the api GSLB answers with, all served by this gateway in process mode)."""
    return [settings.address, *settings.get_list("ADDRESS_ALIASES", [])]


def listen_groups(config: Config, addresses: list[str]) -> dict[tuple[str, int, bool], list]:
    """(address, port, ssl) → server blocks. In process mode a host is its own loopback
    address(es): a port-only ``listen`` binds those, as it binds all of a machine's."""
    groups: dict[tuple[str, int, bool], list] = {}
    for server in config.servers:
        for listen in server.listens:
            for address in [listen.address] if listen.address else addresses:
                groups.setdefault((address, listen.port, listen.ssl), []).append(server)
    return groups


class Master:
    def __init__(self, settings: Settings, conf: Path, ext: Path | None) -> None:
        self.settings, self.conf, self.ext = settings, conf, ext
        self.listeners: Listeners = {}
        self.zones: dict[str, Zone] = {}
        self.workers: dict[int, int] = {}  # pid -> generation
        self.generation = 0
        self.config: Config | None = None
        self.stopping = False
        self.reload_asked = False

    # -- configuration -----------------------------------------------------------------
    def prepare(self, config: Config) -> None:
        """Bind new listeners and create new zones; keep the ones that stay (nginx keeps a
        zone across reloads when its name and size are unchanged)."""
        groups = listen_groups(config, host_addresses(self.settings))
        for key in groups:
            if key not in self.listeners:
                # Forked workers inherit the master's descriptors: no SO_REUSEPORT needed.
                self.listeners[key] = bind_socket(key[0], key[1])
        for key in list(self.listeners):
            if key not in groups:
                self.listeners.pop(key).close()
        zones = {}
        for name, zone in config.zones.items():
            old = self.zones.get(name)
            same = old is not None and old.size == zone.size and old.key == zone.key
            zones[name] = old if same and old.rate == int(zone.rate * 1000) else Zone(zone)
        self.zones = zones
        self.config = config

    def spawn(self) -> None:
        assert self.config is not None
        self.generation += 1
        for n in range(self.config.worker_processes):
            self._fork(n)

    def _fork(self, n: int) -> None:
        """One worker of the current generation."""
        pid = os.fork()
        if pid == 0:
            self._worker(n)  # never returns
        self.workers[pid] = self.generation

    def _worker(self, n: int) -> None:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        config, zones, listeners = self.config, self.zones, self.listeners
        assert config is not None

        async def build(ctx: Context) -> Sequence[Component]:
            from gateway.proxy import start_gateway

            return await start_gateway(ctx, config, zones, listeners)

        code = 0
        try:
            run(build, name="gateway", role="gateway", port=self.settings.port)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d crashed", n)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    # -- running -----------------------------------------------------------------------
    def serve(self) -> int:
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_asked", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the sleep below
        self.spawn()
        started = time.monotonic()
        while not self.stopping:
            if self.reload_asked:
                self.reload_asked = False
                self.reload()
            code = self._reap(started)
            if code is not None:
                self._stop_all()
                return code
            time.sleep(0.2)
        self._stop_all()
        return 0

    def _reap(self, started: float) -> int | None:
        """Collect exited workers; respawn ones of the current generation that died. A
        worker failing at start-up (port taken, bad setting) stops the gateway with its
        exit code, as a service that cannot start must."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            generation = self.workers.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if generation != self.generation or self.stopping:
                continue  # an old worker finished draining after a reload
            if code in (EXIT_PORT_IN_USE, EXIT_CONFIG) or time.monotonic() - started < 2:
                log.error("worker %d exited with %d at start-up", pid, code)
                return code if code > 0 else 1
            log.error("worker %d exited with %d; starting another", pid, code)
            self._fork(0)

    def reload(self) -> None:
        try:
            config = load(self.conf, os.environ, self.ext)
        except ConfigError as exc:
            log.error("reload refused, old configuration kept: %s", exc)
            return
        old = [pid for pid, gen in self.workers.items() if gen == self.generation]
        self.prepare(config)
        self.spawn()
        time.sleep(0.5)  # let the new workers start accepting before the old ones stop
        for pid in old:
            _signal(pid, signal.SIGTERM)  # drains in-flight requests, then exits
        log.info("reloaded", extra={"workers": config.worker_processes, "retired": len(old)})

    def _stop_all(self) -> None:
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.workers.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in self.workers:
            _signal(pid, signal.SIGKILL)


def link_config(conf: Path, run_dir: Path) -> None:
    """Links to the config files in the run directory, so that real nginx checks the very
    files this gateway runs, resolving their relative paths as the gateway does: nginx
    takes ``include`` and ``ssl_certificate`` from the config file's folder, where the run
    directory's ``pki/`` then is:
    ``nginx -t -p "$PWD/.run/" -c "$PWD/.run/gateway.conf" -g 'pid nginx.pid; error_log stderr;'``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    for source in conf.parent.glob("*.conf"):
        tmp = run_dir / f".{source.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source.resolve())
        tmp.replace(run_dir / source.name)  # atomic: two gateways may share the run dir


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - Linux only
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n")[0])
    parser.add_argument("-t", action="store_true", help="test the configuration and exit")
    parser.add_argument("-c", metavar="FILE", help="configuration file (default gateway.conf)")
    args = parser.parse_args(argv)
    conf, ext = config_paths(os.environ, args.c)
    try:
        config = load(conf, os.environ, ext)
    except ConfigError as exc:
        print(f"gateway: [emerg] {exc}", file=sys.stderr)
        if args.t:
            print(f"gateway: configuration file {conf} test failed", file=sys.stderr)
        raise SystemExit(1 if args.t else EXIT_CONFIG) from None
    if args.t:
        print(f"gateway: the configuration file {conf} syntax is ok", file=sys.stderr)
        print(f"gateway: configuration file {conf} test is successful", file=sys.stderr)
        return
    settings = Settings.from_env(name="gateway", role="gateway", port=8080)
    setup_logging(settings.name, settings.log_level)
    link_config(conf, settings.run_dir)
    master = Master(settings, conf, ext)
    try:
        master.prepare(config)
    except PortInUse as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_PORT_IN_USE) from None
    raise SystemExit(master.serve())
