"""The trace store's retention, as Jaeger's: traces older than the age bound go, then the
oldest until the store fits its size bound; what went is remembered as aged out."""

from __future__ import annotations

import secrets

from infra.collector.otlp import SpanRecord
from infra.collector.store import SpanStore

SECOND = 1_000_000_000


def _trace(store: SpanStore, start_ns: int, spans: int = 5, big: int = 0) -> str:
    trace_id = secrets.token_hex(16)
    store.add([
        SpanRecord(trace_id, secrets.token_hex(8), "", "svc", "op", "SERVER", start_ns + i,
                   start_ns + i + 1000, "OK", "", {"pad": "x" * big})
        for i in range(spans)
    ])  # fmt: skip
    return trace_id


def test_old_traces_age_out_and_are_remembered(tmp_path):
    store = SpanStore(tmp_path / "spans.sqlite3")
    now = 10_000 * SECOND
    old, new = _trace(store, now - 7200 * SECOND), _trace(store, now - 60 * SECOND)
    assert store.prune(now, 3600, 1 << 30) == 1
    assert store.trace(old) == [] and store.aged_out(old) == now
    assert len(store.trace(new)) == 5 and store.aged_out(new) is None
    assert [t["trace_id"] for t in store.traces()] == [new]


def test_the_oldest_go_first_until_the_store_fits(tmp_path):
    store = SpanStore(tmp_path / "spans.sqlite3")
    now = 10_000 * SECOND
    ids = [_trace(store, now - (300 - i) * SECOND, big=2000) for i in range(300)]
    before = store.used_bytes()
    bound = before // 3
    dropped = store.prune(now, 86_400, bound)
    assert store.used_bytes() <= bound and dropped > 100
    kept = {t["trace_id"] for t in store.traces(limit=1000)}
    assert kept == set(ids[dropped:])  # exactly the newest ones stayed
    assert all(store.aged_out(t) == now for t in ids[:dropped])
    # New traces reuse the freed pages: the file stops growing.
    size = (tmp_path / "spans.sqlite3").stat().st_size
    for i in range(50):
        _trace(store, now + i, big=2000)
    store.prune(now + SECOND, 86_400, bound)
    assert (tmp_path / "spans.sqlite3").stat().st_size <= size * 1.1
