"""The caller's deadline, as every order wire carries it to the server.

A client sends what is left of its deadline with each call: gRPC in its own
``grpc-timeout``, Dubbo as the ``timeout`` attachment (milliseconds, as Dubbo's own
consumers send it), SOAP in a ``timeoutMs`` header block. The server adapter opens a
:func:`scope` with it, and the domain reads :func:`left` to bound its work (the saga and
its lease), so a request never runs on after its caller has stopped waiting.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_until: ContextVar[float | None] = ContextVar("d11_deadline", default=None)

# What a server accepts from a caller: a longer deadline is cut to this.
MAX_S = 60.0


def parse_ms(raw: object) -> float | None:
    """Seconds from a wire's millisecond value (an int or a decimal string); None when it
    is absent or not a positive number (a malformed deadline is ignored, not an error)."""
    try:
        ms = int(str(raw).strip())
    except (TypeError, ValueError):
        return None
    return min(ms / 1000, MAX_S) if ms > 0 else None


@contextlib.contextmanager
def scope(seconds: float | None) -> Iterator[None]:
    """The deadline of the call being served (None: the caller set none)."""
    token = _until.set(time.monotonic() + seconds if seconds else None)
    try:
        yield
    finally:
        _until.reset(token)


def left(default: float) -> float:
    """Seconds left of the current call's deadline, or ``default`` without one."""
    until = _until.get()
    return default if until is None else max(0.0, until - time.monotonic())
