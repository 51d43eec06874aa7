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


def test_each_delete_and_trim_of_retention_uses_an_index(tmp_path):
    """Retention deletes by trace id and trims tombstones by time: a full scan of a store
    at its size bound per deleted trace took most of the collector's CPU."""
    store = SpanStore(tmp_path / "spans.sqlite3")
    for table in ("spans", "traces", "aged_out"):
        plan = " ".join(str(row[-1]) for row in store.db.execute(
            f"EXPLAIN QUERY PLAN DELETE FROM {table} WHERE trace_id = ?", ("x",)))  # fmt: skip
        assert "SCAN" not in plan, f"{table}: {plan}"
    cut = "SELECT at_ns FROM aged_out ORDER BY at_ns DESC LIMIT 1 OFFSET 5"
    plan = " ".join(str(row[-1]) for row in store.db.execute(f"EXPLAIN QUERY PLAN {cut}"))
    assert "TEMP B-TREE" not in plan, plan


def test_a_resource_is_stored_once_and_read_back_on_every_span(tmp_path):
    store = SpanStore(tmp_path / "spans.sqlite3")
    resources = [{"service.name": f"svc-{n}", "telemetry.sdk.name": "opentelemetry"}
                 for n in range(2)]  # fmt: skip
    trace_id = secrets.token_hex(16)
    for batch in range(3):  # three export requests, as a batching exporter sends them
        store.add([
            SpanRecord(trace_id, secrets.token_hex(8), "", f"svc-{i % 2}", "op", "SERVER",
                       batch * 100 + i, batch * 100 + i + 10, "OK", "", {"i": i},
                       resource=resources[i % 2])
            for i in range(10)
        ])  # fmt: skip
    assert store.db.execute("SELECT count(*) FROM resources").fetchone()[0] == 2
    spans = store.trace(trace_id)
    assert len(spans) == 30
    assert all(s["resource"] == resources[int(s["service"][-1])] for s in spans)
    # A new store on the same file knows the stored resources from the table, not memory.
    again = SpanStore(tmp_path / "spans.sqlite3")
    again.add([SpanRecord(trace_id, secrets.token_hex(8), "", "svc-0", "op", "SERVER", 1, 2,
                          "OK", "", resource=resources[0])])  # fmt: skip
    assert again.db.execute("SELECT count(*) FROM resources").fetchone()[0] == 2
    assert len(again.trace(trace_id)) == 31


def _visit_spans(trace_id: str, n: int, services: list[str]) -> list[SpanRecord]:
    """Spans shaped as the chain's: seven or so HTTP attributes each."""
    attributes = {"http.request.method": "POST", "url.path": "/api/orders",
                  "http.route": "/api/orders", "server.address": "127.10.0.22",
                  "server.port": 8080, "client.address": "127.101.0.3",
                  "d11.request_id": secrets.token_hex(16),
                  "http.response.status_code": 201}  # fmt: skip
    return [SpanRecord(trace_id, secrets.token_hex(8), "" if i == 0 else "ab" * 8,
                       services[i % len(services)], "POST /api/orders", "SERVER", i, i + 10,
                       "OK", "", dict(attributes)) for i in range(n)]  # fmt: skip


def test_attribute_keys_are_stored_once_and_searches_still_work(tmp_path):
    store = SpanStore(tmp_path / "spans.sqlite3")
    first, second = secrets.token_hex(16), secrets.token_hex(16)
    store.add(_visit_spans(first, 6, ["gateway", "controller-1"]))
    store.add(_visit_spans(second, 4, ["order-grpc"]))
    assert store.db.execute("SELECT count(*) FROM attribute_keys").fetchone()[0] == 8
    span = store.trace(first)[0]
    assert span["attributes"]["http.request.method"] == "POST" and span["parent_span_id"] is None
    assert store.trace(first)[1]["parent_span_id"] == "ab" * 8
    assert [t["trace_id"] for t in store.traces(service="controller-1")] == [first]
    assert [t["trace_id"] for t in store.traces(service="controller")] == []
    found = store.traces(attribute=("d11.request_id", span["attributes"]["d11.request_id"]))
    assert [t["trace_id"] for t in found] == [first]
    assert store.traces(attribute=("no.such.key", "x")) == []
    assert store.trace("not hex") == [] and store.aged_out("zz") is None
    # A store reopened reads the keys back.
    again = SpanStore(tmp_path / "spans.sqlite3")
    assert again.trace(second)[0]["attributes"]["server.port"] == 8080
    assert {t["services"][0] for t in again.traces()} == {"gateway", "order-grpc"}


def test_a_traced_visit_takes_at_most_10_kb(tmp_path):
    """#17's bound: ~27 spans in ~2 traces per visit, stored in at most 10 KB."""
    store = SpanStore(tmp_path / "spans.sqlite3")
    before = store.used_bytes()
    visits = 300
    for _ in range(visits):
        store.add(_visit_spans(secrets.token_hex(16), 14, ["phone", "gateway", "controller-1"]))
        store.add(_visit_spans(secrets.token_hex(16), 13, ["phone", "cdn-edge-east"]))
    per_visit = (store.used_bytes() - before) / visits
    assert per_visit <= 10_000, per_visit
