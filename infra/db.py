"""Databases for services: SQLite by default, PostgreSQL when ``DATABASE_URL`` says so.

One connection is owned by one worker thread per store. The event loop never waits on the
disk: coroutines hand a function to the store's thread (``await db.run(Store.method,
args...)``) and the thread runs them one at a time, which is also SQLite's own rule for
writers.

SQLite is in WAL mode; ``synchronous=NORMAL`` keeps a committed transaction through a
``kill -9`` of the process (the WAL is in the OS page cache), which is the durability this
lab promises. PostgreSQL is the option a deployment would take: each store gets its own
schema (it owns its tables), and a transaction takes a per-store advisory lock first, so
writers are serialised exactly as SQLite's ``BEGIN IMMEDIATE`` serialises them and the
stores' read-then-write steps need no second version.

Stores write SQL once, in the dialect both accept, with ``?`` placeholders. Schemas may
use ``{serial_pk}`` (an auto-numbered primary key) and ``{without_rowid}``.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Params = Sequence[Any]


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Any: ...


class Database:
    """The small part of DB-API that stores use, the same for both engines."""

    dialect = ""

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        raise NotImplementedError

    def executescript(self, script: str) -> None:
        raise NotImplementedError

    def begin(self) -> None:
        raise NotImplementedError

    def end(self, commit: bool) -> None:
        self.execute("COMMIT" if commit else "ROLLBACK")

    def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    dialect = "sqlite"
    SCHEMA_WORDS: Mapping[str, str] = {
        "serial_pk": "INTEGER PRIMARY KEY",
        "without_rowid": "WITHOUT ROWID",
    }

    def __init__(self, path: Path | str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # Several processes may share one file (the order store): wait for the lock.
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.execute("PRAGMA foreign_keys=ON")
        # Bound methods: the stores call these on every statement.
        self.execute = self.conn.execute  # type: ignore[method-assign]
        self.executemany = self.conn.executemany  # type: ignore[method-assign]

    def executescript(self, script: str) -> None:
        self.conn.executescript(script.format_map(self.SCHEMA_WORDS))

    def begin(self) -> None:
        # IMMEDIATE takes the write lock up front, so a read-then-write cannot be overtaken.
        self.conn.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        self.conn.close()


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (no store writes a literal ``?`` or ``%``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase(Database):
    dialect = "postgresql"
    SCHEMA_WORDS: Mapping[str, str] = {
        "serial_pk": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "without_rowid": "",
    }

    def __init__(self, url: str, schema: str) -> None:
        import psycopg  # only deployments that ask for PostgreSQL pay for the import

        if not schema.isidentifier():
            raise ValueError(f"bad schema name {schema!r}")
        self.conn = psycopg.connect(url, autocommit=True, application_name=f"d11-{schema}")
        self.lock_key = zlib.crc32(schema.encode())
        # IF NOT EXISTS is not safe against a concurrent creator (the three order services
        # start together): creation happens under the store's lock, as every write does.
        with Transaction(self):
            self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        self.conn.execute(f"SET search_path TO {schema}")

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        return self.conn.execute(_pg_sql(sql), params)  # type: ignore[return-value]

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), rows)

    def executescript(self, script: str) -> None:
        # Without parameters psycopg sends the script as one simple query.
        with Transaction(self):
            self.conn.execute(script.format_map(self.SCHEMA_WORDS).encode())

    def begin(self) -> None:
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))

    def close(self) -> None:
        self.conn.close()


def database_url(env: Mapping[str, str]) -> str | None:
    """``D11_DATABASE_URL``, else the conventional ``DATABASE_URL``; None means SQLite."""
    return env.get("D11_DATABASE_URL") or env.get("DATABASE_URL") or None


def store_location(env: Mapping[str, str], sqlite_path: Path) -> str:
    """Where a service keeps its store: the PostgreSQL URL if one is set, else its file."""
    return database_url(env) or str(sqlite_path)


def open_database(target: Path | str, schema: str = "d11") -> Database:
    """A ``postgresql://`` URL opens PostgreSQL (tables in ``schema``); anything else is a
    SQLite file path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(text, schema)
    return SqliteDatabase(text)


class Transaction:
    """``with Transaction(db):`` runs BEGIN ... COMMIT (ROLLBACK on error), with the
    store's writers serialised from the first statement (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __enter__(self) -> Database:
        self.db.begin()
        return self.db

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.db.end(kind is None)


class ThreadOwned(Generic[T]):
    """A store object created, used and closed on one dedicated thread (a component)."""

    def __init__(self, factory: Callable[[], T], name: str) -> None:
        self.factory = factory
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._store: T | None = None

    async def run(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        store = self._store
        if store is None:
            raise RuntimeError("store not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(store, *args, **kwargs))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self.pool, self.factory)

    async def stop(self, grace: float) -> None:
        store, self._store = self._store, None
        close = getattr(store, "close", None)
        if close is not None:
            await asyncio.get_running_loop().run_in_executor(self.pool, close)
        self.pool.shutdown(wait=True)
