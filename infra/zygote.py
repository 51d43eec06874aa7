"""Start services by forking a warm interpreter, as Android's zygote or gunicorn's
``--preload`` do.

A fresh ``python -m`` spends most of its start importing aiohttp, grpc, OpenTelemetry and
the rest: 0.4 s of CPU on an idle machine, several seconds on two cores busy with a flash
sale, which is what a restart after ``kill -9`` waited for. The supervisor imports the
libraries once (``warm``) and every start forks it (``fork``): the child drops what it
inherited (signal handlers, descriptors, environment, the project's own modules) and runs
its module as ``python -m`` would. The libraries' pages stay shared copy-on-write, so the
stack's memory falls too.

Only third-party libraries carry over. The project's own modules are imported afresh in
each child, so a setting read from the environment at import time is the child's.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import runpy
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import setproctitle

from infra import ROOT

log = logging.getLogger("d11.zygote")

# The project's top-level packages: never shared between parent and child.
OWN = frozenset(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()) | {"tests"}


def own(module: str) -> bool:
    return module.partition(".")[0] in OWN


def warm(modules: Iterable[str]) -> list[str]:
    """Import ``modules`` (the services' entry points) for what they pull in, then forget
    the project's own modules again; returns the ones that failed to import."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken service must not stop the others' restarts
            log.warning("cannot preload %s: %r", name, exc)
            failed.append(name)
    # Objects that live as long as the process stay out of the collector's passes, so a
    # child's collections do not write to (and so unshare) the pages it inherited.
    gc.collect()
    gc.freeze()
    return failed


def name_process(title: str, module: str) -> None:
    """What ``ps`` and ``top`` show for a service run inside another entry point's
    interpreter (the supervisor's zygote, a container's set-up): the service, not the
    entry point."""
    setproctitle.setproctitle(f"{title} (python -m {module})")
    setproctitle.setthreadtitle(title)


class Child(BaseException):
    """Raised in the forked child. It unwinds the parent's stack (a BaseException, so no
    ``except Exception`` on the way takes it) to the entry point, which calls ``run``: the
    service then runs at the top of the stack and the interpreter exits as usual, with
    its atexit hooks and thread joins."""

    def __init__(self, module: str, env: dict[str, str], title: str) -> None:
        super().__init__(module)
        self.module, self.env, self.title = module, env, title

    def run(self) -> None:
        # What `ps` and `top` show: the service, not the supervisor it was forked from
        # (before the environment is replaced: the title reuses its memory).
        name_process(self.title, self.module)
        os.environ.clear()
        os.environ.update(self.env)
        for name in [m for m in sys.modules if own(m)]:
            del sys.modules[name]
        gc.unfreeze()
        for stream in (sys.stdout, sys.stderr):  # the parent's were buffered for a file
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(line_buffering=True, write_through=True)
        sys.argv = [self.module]
        runpy.run_module(self.module, run_name="__main__", alter_sys=True)


def fork(module: str, env: dict[str, str], log_file: Path, *, title: str,
         die_with_parent: bool) -> int:  # fmt: skip
    """Start ``module`` in a child of this process with ``env``, its output appended to
    ``log_file``, in a session of its own; returns the child's pid in the parent and
    raises ``Child`` in the child."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()  # its own process group: `down` signals the whole service
        if die_with_parent:
            from infra.procs import die_with_parent as tie

            tie()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, 1 << 16)  # the parent's locks, sockets and files stay its own
        os.chdir(ROOT)
        logging.getLogger().handlers.clear()
    except BaseException:  # the child must never return into the parent's loop
        os._exit(127)
    raise Child(module, env, title)
