"""nginx variables for one request (``$remote_addr``, ``$request_time``, ``$upstream_addr``…),
templates that use them (``log_format``, ``proxy_set_header``, keys of ``hash`` and
``limit_req_zone``), and the access log writer."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.http1 import Request

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# nginx's $hostname is the machine's name; each emulated host here is a machine of its own.
HOSTNAME = os.environ.get("D11_SERVICE") or socket.gethostname()


class Template:
    """A string with ``$variables``, split once so rendering is a join."""

    __slots__ = ("parts",)

    def __init__(self, text: str) -> None:
        self.parts: list[tuple[bool, str]] = []
        pos = 0
        for m in _VAR.finditer(text):
            if m.start() > pos:
                self.parts.append((False, text[pos : m.start()]))
            self.parts.append((True, m.group(1) or m.group(2)))
            pos = m.end()
        if pos < len(text):
            self.parts.append((False, text[pos:]))

    def render(self, v: Vars, empty: str = "") -> str:
        """``empty`` stands for a variable without a value (nginx logs ``-``)."""
        return "".join((v.get(p) or empty) if is_var else p for is_var, p in self.parts)


@functools.lru_cache(maxsize=256)
def template(text: str) -> Template:
    """Keys (``hash``, ``limit_req_zone``) are rendered on every request: split once."""
    return Template(text)


def request_id(header: str | None) -> str:
    """Kept from ``X-Request-ID`` when a sane one came in (so a trace can be followed
    across the gateway), else 32 random hex digits as nginx's ``$request_id``."""
    if header and len(header) <= 128 and header.isprintable():
        return header
    return os.urandom(16).hex()


class Vars:
    """The variables of one request, computed when asked for."""

    def __init__(self, request: Request, scheme: str) -> None:
        self.request = request
        self.scheme = scheme
        self.started = time.time()
        self.perf = time.perf_counter()
        self.request_id = request_id(request.headers.get("X-Request-ID"))
        self.upstream_addr: list[str] = []
        self.upstream_status: list[str] = []
        self.upstream_response_time: list[float] = []
        self.status = 0
        self.body_bytes_sent = 0
        self.limit_req_status = ""
        self.location = None
        self.remote_addr = request.remote_addr
        self.remote_port = str(request.remote_port)

    def get(self, name: str) -> str:
        r = self.request
        if name.startswith("http_"):
            return r.headers.get(name[5:].replace("_", "-"), "")
        if name.startswith("arg_"):
            return r.query.get(name[4:], "")
        if name.startswith("cookie_"):
            return r.cookies.get(name[7:], "")
        match name:
            case "remote_addr":
                return self.remote_addr
            case "binary_remote_addr":
                return self.key("$binary_remote_addr").decode("latin-1")
            case "remote_port":
                return self.remote_port
            case "request_id":
                return self.request_id
            case "host":
                return r.host.rsplit(":", 1)[0] if r.host else ""
            case "scheme":
                return self.scheme
            case "request":
                return f"{r.method} {r.raw_path} HTTP/{r.version}"
            case "request_method":
                return r.method
            case "request_uri":
                return r.raw_path
            case "uri":
                return r.path
            case "args":
                return r.query_string
            case "server_port":
                return str(r.server_port)
            case "status":
                return str(self.status)
            case "body_bytes_sent" | "bytes_sent":
                return str(self.body_bytes_sent)
            case "request_length":
                return str(len(r.body))
            case "request_time":
                return f"{time.perf_counter() - self.perf:.3f}"
            case "upstream_addr":
                return ", ".join(self.upstream_addr)
            case "upstream_status":
                return ", ".join(self.upstream_status)
            case "upstream_response_time" | "upstream_connect_time":
                return ", ".join(f"{t:.3f}" for t in self.upstream_response_time)
            case "time_local":
                return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(self.started))
            case "time_iso8601":
                return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
            case "msec":
                return f"{time.time():.3f}"
            case "proxy_add_x_forwarded_for":
                forwarded = r.headers.get("X-Forwarded-For")
                return f"{forwarded}, {self.remote_addr}" if forwarded else self.remote_addr
            case "pid":
                return str(os.getpid())
            case "hostname":
                return HOSTNAME
            case "limit_req_status":
                return self.limit_req_status
        return ""

    def key(self, variable: str) -> bytes:
        """A limit_req_zone key; ``$binary_remote_addr`` is the packed address (4 or 16
        bytes) as in nginx, other keys their text."""
        if variable == "$binary_remote_addr":
            family = socket.AF_INET6 if ":" in self.remote_addr else socket.AF_INET
            try:
                return socket.inet_pton(family, self.remote_addr)
            except OSError:
                return b""
        return template(variable).render(self).encode()

    def render_key(self, text: str) -> str:
        return template(text).render(self)


class AccessLog:
    """Access log lines in their ``log_format``, buffered and written off the event loop
    (each flush is one write per file, like nginx's ``buffer=`` option)."""

    def __init__(self, run_dir: Path, formats: Mapping[str, str]) -> None:
        self.run_dir = run_dir
        self.templates = {name: Template(fmt) for name, fmt in formats.items()}
        self.buffers: dict[Path, list[str]] = {}
        self.task: asyncio.Task[None] | None = None

    def write(self, targets: tuple[tuple[str, str], ...], v: Vars) -> None:
        for path, fmt in targets:
            full = Path(path) if Path(path).is_absolute() else self.run_dir / path
            self.buffers.setdefault(full, []).append(self.templates[fmt].render(v, "-") + "\n")

    async def _flush_now(self) -> None:
        buffers, self.buffers = self.buffers, {}
        if buffers:
            await asyncio.get_running_loop().run_in_executor(None, _append, buffers)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._flush_now()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def stop(self, grace: float) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self._flush_now()


def _append(buffers: dict[Path, list[str]]) -> None:
    for path, lines in buffers.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
