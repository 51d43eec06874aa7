"""The one start-up skeleton every Double-11 service runs through.

A service module has a ``main()`` that calls :func:`run` with a builder: an async function
that takes the :class:`Settings` and returns the components to start (an HTTP app, a gRPC
server, ...). ``run`` does the rest the same way for every service: logging, tracing,
uvloop, binding (failing fast with the address and port when it is taken), readiness,
SIGTERM/SIGINT handling with a drain of in-flight work, and flushing spans on the way out.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from opentelemetry import trace

from infra.config import ConfigError, Settings
from infra.logs import setup_logging
from infra.telemetry import Metrics, host_scope, host_tracer, setup_tracing

log = logging.getLogger("d11.service")

# Exit status when a listening address is taken, so the launcher can tell it from a crash.
EXIT_PORT_IN_USE = 98
EXIT_CONFIG = 78


class PortInUse(RuntimeError):
    def __init__(self, address: str, port: int, proto: str = "tcp") -> None:
        super().__init__(f"cannot listen on {address}:{port}/{proto}: address already in use")
        self.address, self.port = address, port


# A flash sale is thousands of simultaneous connects: a short accept queue overflows and
# the kernel resets them. The kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = 8192


def bind_socket(address: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket bound to address:port (and listening, for TCP), non-blocking. Binding it
    ourselves means a taken port is reported as PortInUse, not as a traceback."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if is_addr_in_use(exc):
            raise PortInUse(address, port, "tcp" if kind == socket.SOCK_STREAM else "udp") from None
        raise
    if kind == socket.SOCK_STREAM:
        sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


class Component(Protocol):
    """Something a service starts and stops: a listener, a background task, a client pool.

    A component may also define ``async def warm(self) -> None``: work that can wait until
    the host is ready (a schema to compile, say). It runs as a background task once every
    component has started, so a restart is ready (and healthy) without paying for it first.
    """

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class Context:
    """What a builder gets: the settings and the service's metrics registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.name)
        # Set while draining: health checks turn unhealthy so balancers stop sending work.
        self.draining = False
        # The host's own tracer when several hosts share a process (infra.group); None:
        # the process's global one.
        self.tracer: trace.Tracer | None = None

    def health(self) -> tuple[int, dict[str, str]]:
        """The ``/healthz`` answer, whichever HTTP stack serves it: 503 while draining."""
        s = self.settings
        body = {"status": "draining" if self.draining else "ok", "service": s.name, "role": s.role}
        return 503 if self.draining else 200, body


Builder = Callable[[Context], Awaitable[Sequence[Component]]]


def is_addr_in_use(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def run(build: Builder, *, name: str, role: str, port: int, grace: float = 5.0) -> None:
    """Run a service until SIGTERM/SIGINT. ``name``/``role``/``port`` are defaults for
    running the module alone; the launcher and containers override them with D11_*."""
    try:
        settings = Settings.from_env(name=name, role=role, port=port)
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    _run([(build, settings)], settings.name, settings.log_level, grace, shared_tracing=True)


def run_hosts(members: list[tuple[Builder, Settings]], name: str, grace: float = 5.0) -> None:
    """Several hosts in one process (infra.group): each its own settings, listeners,
    metrics and tracer, one event loop, stopped together."""
    _run(members, name, members[0][1].log_level, grace, shared_tracing=False)


def _run(
    members: list[tuple[Builder, Settings]],
    name: str,
    log_level: str,
    grace: float,
    *,
    shared_tracing: bool,
) -> None:
    setup_logging(name, log_level)
    _raise_fd_limit()
    hosts: list[tuple[Context, Builder]] = []
    providers = []
    for build, settings in members:
        ctx = Context(settings)
        provider = setup_tracing(settings, install=shared_tracing)
        if provider is not None:
            providers.append(provider)
            if not shared_tracing:
                ctx.tracer = host_tracer(provider)
        hosts.append((ctx, build))
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is pinned, but keep running without it
        runner = asyncio.Runner()
    code = 0
    with runner:
        try:
            runner.run(_serve(hosts, grace))
        except PortInUse as exc:
            log.error(str(exc))
            print(f"{name}: {exc}", file=sys.stderr)
            code = EXIT_PORT_IN_USE
        except ConfigError as exc:
            log.error("configuration error: %s", exc)
            print(f"{name}: configuration error: {exc}", file=sys.stderr)
            code = EXIT_CONFIG
    for provider in providers:
        provider.shutdown()  # flushes spans still queued for export
    if code:
        raise SystemExit(code)


def _raise_fd_limit() -> None:
    """A flash sale is thousands of sockets: use the hard limit, not the 1024 soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(hosts: list[tuple[Context, Builder]], grace: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Component] = []
    try:
        for ctx, build in hosts:
            # A host's servers, clients and tasks inherit its tracer (infra.group).
            with host_scope(ctx.tracer):
                for component in await build(ctx):
                    await component.start()
                    started.append(component)
        for ctx, _ in hosts:
            s = ctx.settings
            log.info("ready", extra={"host": s.name, "role": s.role, "address": s.address,
                                     "port": s.port})  # fmt: skip
        warming = [asyncio.create_task(c.warm()) for c in started if hasattr(c, "warm")]
        await stop.wait()
        for task in warming:
            task.cancel()
        log.info("draining", extra={"grace_s": grace})
        for ctx, _ in hosts:
            ctx.draining = True
    finally:
        for component in reversed(started):
            try:
                await component.stop(grace)
            except Exception:  # keep stopping the rest
                log.exception("error while stopping %r", component)
