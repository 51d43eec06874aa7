"""Span storage in SQLite. Synchronous on purpose: the app runs it on its own thread
(``infra.db.ThreadOwned``), so the event loop never waits on the disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infra.collector.otlp import SpanRecord
from infra.db import Transaction, open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT NOT NULL,
    service TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status TEXT NOT NULL, status_message TEXT NOT NULL,
    attributes TEXT NOT NULL, events TEXT NOT NULL, resource TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL, error_count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE TABLE IF NOT EXISTS trace_services (
    service TEXT NOT NULL, trace_id TEXT NOT NULL, PRIMARY KEY (service, trace_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aged_out (
    trace_id TEXT PRIMARY KEY, at_ns INTEGER NOT NULL
) WITHOUT ROWID;
"""
# Traces dropped by retention are remembered (id and when) so a reader is told "aged out"
# rather than "unknown"; the newest this many.
MAX_TOMBSTONES = 100_000
PRUNE_BATCH = 200

_COLUMNS = (
    "trace_id, span_id, parent_id, service, name, kind, start_ns, end_ns, status,"
    " status_message, attributes, events, resource"
)


class SpanStore:
    def __init__(self, path: Path | str) -> None:
        self.db = open_database(path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def add(self, records: list[SpanRecord]) -> None:
        if not records:
            return
        rows = [
            (
                r.trace_id,
                r.span_id,
                r.parent_id,
                r.service,
                r.name,
                r.kind,
                r.start_ns,
                r.end_ns,
                r.status,
                r.status_message,
                json.dumps(r.attributes),
                json.dumps(r.events),
                json.dumps(r.resource),
            )
            for r in records
        ]
        with Transaction(self.db):
            # Spans re-sent by a retrying exporter replace themselves and are counted once.
            fresh = [
                row
                for row in rows
                if self.db.execute(
                    "SELECT 1 FROM spans WHERE trace_id=? AND span_id=?", (row[0], row[1])
                ).fetchone()
                is None
            ]
            self.db.executemany(
                f"INSERT OR REPLACE INTO spans ({_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self.db.executemany(
                "INSERT INTO traces VALUES (?, ?, ?, 1, ?) ON CONFLICT (trace_id) DO UPDATE SET"
                " start_ns = min(start_ns, excluded.start_ns),"
                " end_ns = max(end_ns, excluded.end_ns),"
                " span_count = span_count + 1, error_count = error_count + excluded.error_count",
                [(row[0], row[6], row[7], int(row[8] == "ERROR")) for row in fresh],
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO trace_services VALUES (?, ?)",
                {(row[3], row[0]) for row in rows},
            )

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

    def _drop(self, trace_ids: list[str], now_ns: int) -> int:
        if not trace_ids:
            return 0
        rows = [(t,) for t in trace_ids]
        with Transaction(self.db):
            for table in ("spans", "traces", "trace_services"):
                self.db.executemany(f"DELETE FROM {table} WHERE trace_id = ?", rows)
            self.db.executemany("INSERT OR REPLACE INTO aged_out VALUES (?, ?)",
                                [(t, now_ns) for t in trace_ids])  # fmt: skip
            self.db.execute(
                "DELETE FROM aged_out WHERE trace_id NOT IN"
                " (SELECT trace_id FROM aged_out ORDER BY at_ns DESC LIMIT ?)",
                (MAX_TOMBSTONES,),
            )
        return len(trace_ids)

    def aged_out(self, trace_id: str) -> int | None:
        """When retention dropped this trace (ns since the epoch), if it did."""
        row = self.db.execute("SELECT at_ns FROM aged_out WHERE trace_id = ?", (trace_id,))
        found = row.fetchone()
        return found[0] if found else None

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        cursor = self.db.execute(
            f"SELECT {_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_ns, end_ns DESC",
            (trace_id,),
        )
        return [_span_dict(row) for row in cursor]

    def traces(
        self,
        *,
        service: str | None = None,
        attribute: tuple[str, str] | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        where, args = [], []
        if service:
            where.append("t.trace_id IN (SELECT trace_id FROM trace_services WHERE service = ?)")
            args.append(service)
        if attribute:
            # A linear scan; fine for a lab-sized store, and only when asked for.
            where.append(
                "t.trace_id IN (SELECT s.trace_id FROM spans s, json_each(s.attributes) a"
                " WHERE a.key = ? AND CAST(a.value AS TEXT) = ?)"
            )
            args.extend(attribute)
        sql = "SELECT trace_id, start_ns, end_ns, span_count, error_count FROM traces t"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ns DESC LIMIT ?"
        summaries = []
        for trace_id, start, end, count, errors in self.db.execute(sql, (*args, limit)):
            root = self.db.execute(
                "SELECT service, name FROM spans WHERE trace_id = ? AND (parent_id = '' OR"
                " parent_id NOT IN (SELECT span_id FROM spans WHERE trace_id = ?))"
                " ORDER BY start_ns LIMIT 1",
                (trace_id, trace_id),
            ).fetchone()
            services = [
                s
                for (s,) in self.db.execute(
                    "SELECT DISTINCT service FROM spans WHERE trace_id = ? ORDER BY start_ns",
                    (trace_id,),
                )
            ]
            summaries.append(
                {
                    "trace_id": trace_id,
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


def _span_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    (
        trace_id,
        span_id,
        parent_id,
        service,
        name,
        kind,
        start,
        end,
        status,
        message,
        attrs,
        events,
        resource,
    ) = row
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_id or None,
        "service": service,
        "name": name,
        "kind": kind,
        "start_ns": start,
        "end_ns": end,
        "duration_ns": end - start,
        "status": {"code": status, "message": message},
        "attributes": json.loads(attrs),
        "events": json.loads(events),
        "resource": json.loads(resource),
    }
