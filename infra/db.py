"""SQLite for services: one connection owned by one worker thread per store.

The event loop never waits on the disk: coroutines hand a function to the store's thread
(``await db.run(Store.method, args...)``) and the thread runs them one at a time, which is
also SQLite's own rule for writers. Every database is in WAL mode; ``synchronous=NORMAL``
keeps a committed transaction through a ``kill -9`` of the process (the WAL is in the OS
page cache), which is the durability this lab promises.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection with the project's settings; transactions are explicit (``with db:``)."""
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # Several processes may share one file (the order store): wait for the lock, don't fail.
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("PRAGMA foreign_keys=ON")
    return db


class Transaction:
    """``with Transaction(db):`` runs BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error).
    IMMEDIATE takes the write lock up front, so a read-then-write cannot be overtaken."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


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
