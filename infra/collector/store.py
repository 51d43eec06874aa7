"""Span storage in SQLite. Synchronous on purpose: the app runs it on its own thread
(``infra.db.ThreadOwned``), so the event loop never waits on the disk."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from infra.collector.otlp import SpanRecord
from infra.db import Transaction, open_database

log = logging.getLogger("d11.collector")

# Layout 3 (PRAGMA user_version). What a traced visit costs on disk (~27 spans over ~2
# traces) went from ~15 KB to the figure in docs/benchmarks.md by:
# * ids as BLOBs (16 and 8 bytes), not hex text (32 and 16);
# * spans in a rowid table, appended in arrival order (pages fill up), found by a
#   (trace_id, span_id) index, rather than clustered by a random trace id, whose page
#   splits left a third of every page empty;
# * attribute keys stored once (``attribute_keys``), a span's attributes a JSON object
#   keyed by their ids ({"3": "POST"} for {"http.request.method": "POST"});
# * a trace's services a list on its ``traces`` row, not a table with its own index.
LAYOUT = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id BLOB NOT NULL, span_id BLOB NOT NULL, parent_id BLOB,
    service TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status TEXT NOT NULL, status_message TEXT NOT NULL,
    attributes TEXT NOT NULL, events TEXT NOT NULL, resource_id INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_id, span_id);
-- A process's resource (service, instance, SDK) is the same on every span it sends:
-- stored once, by a hash of its JSON, rather than ~280 bytes on each span.
CREATE TABLE IF NOT EXISTS resources (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attribute_keys (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS traces (
    trace_id BLOB PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL, error_count INTEGER NOT NULL, services TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE TABLE IF NOT EXISTS aged_out (
    trace_id BLOB PRIMARY KEY, at_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aged_out_by_time ON aged_out (at_ns);
"""
EARLIER_TABLES = ("spans", "traces", "trace_services", "aged_out", "resources")
# Traces dropped by retention are remembered (id and when) so a reader is told "aged out"
# rather than "unknown"; the newest this many.
MAX_TOMBSTONES = 100_000
PRUNE_BATCH = 200

_COLUMNS = (
    "trace_id, span_id, parent_id, service, name, kind, start_ns, end_ns, status,"
    " status_message, attributes, events, resource_id"
)
# The columns read back: the resource joined in.
_READ = (
    "s.trace_id, s.span_id, s.parent_id, s.service, s.name, s.kind, s.start_ns, s.end_ns,"
    " s.status, s.status_message, s.attributes, s.events, r.body"
)
_COMPACT = (",", ":")
_SEEN = "SELECT 1 FROM spans WHERE trace_id=? AND span_id=?"


def resource_id(body: str) -> int:
    """A stable signed 64-bit id for a resource's JSON (SQLite's INTEGER range)."""
    return int.from_bytes(hashlib.blake2b(body.encode(), digest_size=8).digest(), "big",
                          signed=True)  # fmt: skip


def _id(hex_id: str) -> bytes | None:
    """A hex trace or span id as stored; None for a malformed one (it matches nothing)."""
    try:
        return bytes.fromhex(hex_id)
    except ValueError:
        return None


class SpanStore:
    def __init__(self, path: Path | str) -> None:
        self.db = open_database(path)
        layout = self.db.execute("PRAGMA user_version").fetchone()[0]
        earlier = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'spans'").fetchone()
        if earlier and layout < LAYOUT:  # traces are a cache: start afresh
            log.warning("span store %s has an earlier layout: its traces are dropped", path)
            self.db.executescript("".join(f"DROP TABLE IF EXISTS {t};" for t in EARLIER_TABLES))
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version = {LAYOUT}")
        self.resources: set[int] = set()  # ids known to be stored
        self.keys = dict(self.db.execute("SELECT key, id FROM attribute_keys").fetchall())
        self.names = {i: k for k, i in self.keys.items()}

    def close(self) -> None:
        self.db.close()

    def add(self, records: list[SpanRecord]) -> None:
        if not records:
            return
        bodies: dict[str, int] = {}
        new_keys: dict[str, int] = {}
        keys, next_key = self.keys, len(self.keys) + 1
        rows = []
        by_object: dict[int, int] = {}  # a request's spans share their resource's dict
        for r in records:
            rid = by_object.get(id(r.resource))
            if rid is None:
                body = json.dumps(r.resource, sort_keys=True, separators=_COMPACT)
                rid = bodies.get(body)
                if rid is None:
                    rid = bodies[body] = resource_id(body)
                by_object[id(r.resource)] = rid
            coded = {}
            for key, value in r.attributes.items():
                code = keys.get(key) or new_keys.get(key)
                if code is None:
                    code = new_keys[key] = next_key
                    next_key += 1
                coded[code] = value
            rows.append((bytes.fromhex(r.trace_id), bytes.fromhex(r.span_id),
                         bytes.fromhex(r.parent_id) if r.parent_id else None, r.service,
                         r.name, r.kind, r.start_ns, r.end_ns, r.status, r.status_message,
                         json.dumps(coded, separators=_COMPACT),
                         json.dumps(r.events, separators=_COMPACT) if r.events else "[]",
                         rid))  # fmt: skip
        new_resources = [(i, b) for b, i in bodies.items() if i not in self.resources]
        with Transaction(self.db):
            if new_resources:
                self.db.executemany("INSERT OR IGNORE INTO resources VALUES (?, ?)",
                                    new_resources)  # fmt: skip
            if new_keys:
                self.db.executemany("INSERT INTO attribute_keys VALUES (?, ?)",
                                    [(i, k) for k, i in new_keys.items()])  # fmt: skip
            # Spans re-sent by a retrying exporter replace themselves and are counted once.
            seen = self.db.execute
            fresh = [row for row in rows if seen(_SEEN, (row[0], row[1])).fetchone() is None]
            self.db.executemany(
                f"INSERT OR REPLACE INTO spans ({_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            # One upsert per (trace, service): the row's list gains the service once.
            per_service: dict[tuple[bytes, str], list[int]] = {}
            for row in fresh:
                agg = per_service.setdefault((row[0], row[3]), [row[6], row[7], 0, 0])
                agg[0], agg[1] = min(agg[0], row[6]), max(agg[1], row[7])
                agg[2] += 1
                agg[3] += row[8] == "ERROR"
            self.db.executemany(
                "INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (trace_id) DO UPDATE"
                " SET start_ns = min(start_ns, excluded.start_ns),"
                " end_ns = max(end_ns, excluded.end_ns),"
                " span_count = span_count + excluded.span_count,"
                " error_count = error_count + excluded.error_count,"
                " services = CASE WHEN instr(',' || services || ',', ',' || excluded.services"
                " || ',') THEN services ELSE services || ',' || excluded.services END",
                [(t, *agg, service) for (t, service), agg in per_service.items()],
            )
        self.resources.update(i for i, _ in new_resources)
        keys.update(new_keys)
        self.names.update((i, k) for k, i in new_keys.items())

    # -- retention, as Jaeger's --memory.max-traces and Badger's TTL ------------------------
    def used_bytes(self) -> int:
        """Bytes of the database's pages in use (freed pages are reused, not counted)."""
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        count = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return page * (count - free)

    def prune(self, now_ns: int, max_age_s: float, max_bytes: int) -> int:
        """Drop traces that started more than ``max_age_s`` ago, then the oldest until the
        store holds at most ``max_bytes``; returns how many traces went."""
        cutoff = now_ns - int(max_age_s * 1e9)
        old = [t for (t,) in self.db.execute(
            "SELECT trace_id FROM traces WHERE start_ns < ?", (cutoff,))]  # fmt: skip
        dropped = self._drop(old, now_ns)
        while self.used_bytes() > max_bytes:
            batch = "SELECT trace_id FROM traces ORDER BY start_ns LIMIT ?"
            oldest = [t for (t,) in self.db.execute(batch, (PRUNE_BATCH,))]
            if not oldest:
                break
            dropped += self._drop(oldest, now_ns)
        return dropped

    def _drop(self, trace_ids: list[bytes], now_ns: int) -> int:
        if not trace_ids:
            return 0
        rows = [(t,) for t in trace_ids]
        with Transaction(self.db):
            for table in ("spans", "traces"):
                self.db.executemany(f"DELETE FROM {table} WHERE trace_id = ?", rows)
            self.db.executemany("INSERT OR REPLACE INTO aged_out VALUES (?, ?)",
                                [(t, now_ns) for t in trace_ids])  # fmt: skip
            # The newest MAX_TOMBSTONES stay: one index step finds the cut, no sort.
            self.db.execute(
                "DELETE FROM aged_out WHERE at_ns <"
                " (SELECT at_ns FROM aged_out ORDER BY at_ns DESC LIMIT 1 OFFSET ?)",
                (MAX_TOMBSTONES,),
            )
        return len(trace_ids)

    def aged_out(self, trace_id: str) -> int | None:
        """When retention dropped this trace (ns since the epoch), if it did."""
        row = self.db.execute("SELECT at_ns FROM aged_out WHERE trace_id = ?", (_id(trace_id),))
        found = row.fetchone()
        return found[0] if found else None

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        cursor = self.db.execute(
            f"SELECT {_READ} FROM spans s JOIN resources r ON r.id = s.resource_id"
            " WHERE s.trace_id = ? ORDER BY s.start_ns, s.end_ns DESC",
            (_id(trace_id),),
        )
        return [self._span_dict(row) for row in cursor]

    def traces(
        self,
        *,
        service: str | None = None,
        attribute: tuple[str, str] | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if service:
            where.append("instr(',' || t.services || ',', ?)")
            args.append(f",{service},")
        if attribute:
            # A linear scan; fine for a lab-sized store, and only when asked for.
            where.append(
                "t.trace_id IN (SELECT s.trace_id FROM spans s, json_each(s.attributes) a"
                " WHERE a.key = ? AND CAST(a.value AS TEXT) = ?)"
            )
            args.extend((str(self.keys.get(attribute[0], 0)), attribute[1]))
        sql = "SELECT trace_id, start_ns, end_ns, span_count, error_count FROM traces t"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ns DESC LIMIT ?"
        summaries = []
        for trace_id, start, end, count, errors in self.db.execute(sql, (*args, limit)):
            root = self.db.execute(
                "SELECT service, name FROM spans WHERE trace_id = ? AND (parent_id IS NULL OR"
                " parent_id NOT IN (SELECT span_id FROM spans WHERE trace_id = ?))"
                " ORDER BY start_ns LIMIT 1",
                (trace_id, trace_id),
            ).fetchone()
            services = [
                s
                for (s,) in self.db.execute(
                    # By each service's first span: DISTINCT with ORDER BY a column it does
                    # not select leaves SQLite free to pick any of a service's spans.
                    "SELECT service FROM spans WHERE trace_id = ? GROUP BY service"
                    " ORDER BY min(start_ns), service",
                    (trace_id,),
                )
            ]
            summaries.append(
                {
                    "trace_id": trace_id.hex(),
                    "root_service": root[0] if root else None,
                    "root_name": root[1] if root else None,
                    "start_ns": start,
                    "duration_ns": end - start,
                    "span_count": count,
                    "error_count": errors,
                    "services": services,
                }
            )
        return summaries

    def _span_dict(self, row: tuple[Any, ...]) -> dict[str, Any]:
        (trace_id, span_id, parent_id, service, name, kind, start, end, status, message,
         attrs, events, resource) = row  # fmt: skip
        names = self.names
        return {
            "trace_id": trace_id.hex(),
            "span_id": span_id.hex(),
            "parent_span_id": parent_id.hex() if parent_id else None,
            "service": service,
            "name": name,
            "kind": kind,
            "start_ns": start,
            "end_ns": end,
            "duration_ns": end - start,
            "status": {"code": status, "message": message},
            "attributes": {names[int(k)]: v for k, v in json.loads(attrs).items()},
            "events": json.loads(events),
            "resource": json.loads(resource),
        }
