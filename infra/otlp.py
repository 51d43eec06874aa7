"""OTLP/HTTP span export without ``requests``.

The SDK's own OTLP/HTTP exporter imports ``requests`` (and urllib3, idna, charset
normalisers…): about 6 MiB in each of the stack's thirteen processes. This one sends the
same request: the batch as a protobuf ``ExportTraceServiceRequest`` (written by
``infra.otlp_wire``, which tests hold to OpenTelemetry's own encoder at a third of its
CPU), POSTed as ``application/x-protobuf`` to
``/v1/traces`` over a kept-alive ``http.client`` connection, from the batch processor's
thread. It reads the standard variables, so ``OTEL_*`` still points the services at
Jaeger or any OTLP backend:

* ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL), else
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces`` (default ``http://localhost:4318``);
* ``OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`` (``key=value,…``, URL-encoded values);
* ``OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`` (milliseconds, default 10 s);
* ``OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION`` (``gzip`` or none);
* ``OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE`` (a CA file for an https endpoint).

Failures are logged and the batch dropped, with one reconnect for a connection the
collector closed; a 429/502/503/504 is retried once after a short pause. Spans dropped
are counted (:func:`dropped`, ``d11_spans_dropped_total`` on every ``/metrics``). Export
runs on the batch processor's thread, so a dead or hung collector never holds a request:
the processor's queue fills and drops instead.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from infra.otlp_wire import Encoder

log = logging.getLogger("d11.otlp")
RETRYABLE = frozenset({429, 502, 503, 504})

_dropped = 0
_dropped_lock = threading.Lock()


def dropped() -> int:
    """Spans this process's exporters gave up on (collector down, refused, too slow)."""
    return _dropped


def _count_dropped(n: int) -> None:
    global _dropped
    with _dropped_lock:
        _dropped += n


def _setting(env: Mapping[str, str], name: str) -> str | None:
    """The traces-specific variable, else the general one."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")


def endpoint(env: Mapping[str, str]) -> str:
    if url := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return url
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def headers(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for item in (_setting(env, "HEADERS") or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return out


class SpanExporterHTTP(SpanExporter):
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.url = urllib.parse.urlsplit(endpoint(env))
        if self.url.scheme not in ("http", "https") or not self.url.hostname:
            raise ValueError(f"OTLP endpoint {self.url.geturl()!r} is not an http(s) URL")
        self.path = self.url.path or "/v1/traces"
        self.timeout = float(_setting(env, "TIMEOUT") or 10_000) / 1000
        self.gzip = (_setting(env, "COMPRESSION") or "").lower() == "gzip"
        self.headers = {"Content-Type": "application/x-protobuf", **headers(env)}
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.context: ssl.SSLContext | None = None
        if self.url.scheme == "https":
            self.context = ssl.create_default_context(cafile=_setting(env, "CERTIFICATE"))
        self.connection: http.client.HTTPConnection | None = None
        self.lock = threading.Lock()  # export and shutdown may come from different threads
        self.closed = False
        self.encoder = Encoder()  # used under the lock: its caches are not thread-safe

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            port = self.url.port
            if self.context is not None:
                self.connection = http.client.HTTPSConnection(
                    self.url.hostname, port, timeout=self.timeout, context=self.context
                )
            else:
                self.connection = http.client.HTTPConnection(
                    self.url.hostname, port, timeout=self.timeout
                )
        return self.connection

    def _post(self, body: bytes) -> int:
        connection = self._connect()
        try:
            connection.request("POST", self.path, body, self.headers)
            response = connection.getresponse()
            response.read()
            if response.will_close:
                self._drop()
            return response.status
        except (OSError, http.client.HTTPException):
            self._drop()
            raise

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._export(spans)
        if result is not SpanExportResult.SUCCESS:
            _count_dropped(len(spans))
        return result

    def _export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.closed:
            return SpanExportResult.FAILURE
        with self.lock:
            body = self.encoder.request(spans)
            if self.gzip:
                body = gzip.compress(body)
            for attempt in range(2):
                try:
                    status = self._post(body)
                except (OSError, http.client.HTTPException) as exc:
                    if attempt:  # the second try was on a fresh connection
                        log.warning("span export failed: %s", exc)
                        return SpanExportResult.FAILURE
                    continue
                if 200 <= status < 300:
                    return SpanExportResult.SUCCESS
                if status not in RETRYABLE or attempt:
                    log.warning("span export refused: HTTP %d", status)
                    return SpanExportResult.FAILURE
                time.sleep(0.5)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        with self.lock:
            self.closed = True
            self._drop()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
