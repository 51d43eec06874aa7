"""A cache node's storage: stored responses in memory and on disk, each with a size limit and
least-recently-used eviction. Memory is the first level; what memory evicts spills to disk,
and a disk hit is promoted back. Disk I/O runs off the event loop.

Responses are stored per primary key (the URL without signing parameters) and, when the
response has ``Vary``, per secondary key (the request's values of the varied headers).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cdn import semantics
from cdn.semantics import AgeClock

log = logging.getLogger("d11.cdn.store")

Slot = tuple[str, tuple[str, ...]]  # (primary key, secondary key)


@dataclass
class Entry:
    """One stored response and what is needed to judge its freshness."""

    key: str
    vary: tuple[str, ...]
    vary_values: tuple[str, ...]
    status: int
    headers: list[tuple[str, str]]  # as received, hop-by-hop and Age removed
    body: bytes
    clock: AgeClock
    lifetime: float
    chain: str = ""  # what the tiers behind said when it was fetched (X-Cache-Chain)
    directives: dict[str, str | None] = field(default_factory=dict)
    served: list[tuple[str, str]] | None = field(default=None, repr=False)  # see CacheNode
    wire: tuple[int, bytes] | None = field(default=None, repr=False)  # (Age, encoded HIT)

    def __post_init__(self) -> None:
        # The CDN's own policy: CDN-Cache-Control over Cache-Control (RFC 9213).
        self.directives = semantics.cache_control(
            semantics.header_all(semantics.cdn_policy(self.headers), "Cache-Control")
        )

    @property
    def slot(self) -> Slot:
        return self.key, self.vary_values

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) + 4 for k, v in self.headers) + 256

    def age(self, now: float) -> float:
        return self.clock.current_age(now)

    def staleness(self, now: float) -> float:
        """Seconds past its freshness lifetime (negative while fresh)."""
        return self.clock.current_age(now) - self.lifetime

    def directive_seconds(self, name: str) -> int | None:
        return semantics.seconds(self.directives, name)

    @property
    def no_cache(self) -> bool:
        """Stored, but every use is revalidated, fresh or not (RFC 9111 §5.2.2.4)."""
        return "no-cache" in self.directives

    @property
    def no_stale(self) -> bool:
        """Once stale, never served without a successful revalidation, whatever
        stale-while-revalidate or stale-if-error allow: must-revalidate and
        proxy-revalidate (§5.2.2.2, §5.2.2.8), and immutable (RFC 8246: a promise about the
        fresh life only)."""
        d = self.directives
        return self.no_cache or "must-revalidate" in d or "proxy-revalidate" in d or (
            "immutable" in d
        )

    def to_bytes(self) -> bytes:
        meta = {
            "key": self.key,
            "vary": list(self.vary),
            "vary_values": list(self.vary_values),
            "status": self.status,
            "headers": self.headers,
            "clock": [
                self.clock.date,
                self.clock.age,
                self.clock.request_time,
                self.clock.response_time,
            ],
            "lifetime": self.lifetime,
            "chain": self.chain,
        }
        raw = json.dumps(meta).encode()
        return struct.pack(">I", len(raw)) + raw + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        (length,) = struct.unpack(">I", data[:4])
        meta = json.loads(data[4 : 4 + length])
        return cls(
            meta["key"],
            tuple(meta["vary"]),
            tuple(meta["vary_values"]),
            meta["status"],
            [tuple(h) for h in meta["headers"]],  # type: ignore[misc]
            data[4 + length :],
            AgeClock(*meta["clock"]),
            meta["lifetime"],
            meta["chain"],
        )


class Store:
    def __init__(self, memory_bytes: int, disk_dir: Path | None, disk_bytes: int) -> None:
        self.memory_limit, self.disk_limit = memory_bytes, disk_bytes
        self.memory: collections.OrderedDict[Slot, Entry] = collections.OrderedDict()
        self.memory_bytes = 0
        self.disk_dir = disk_dir
        self.disk: collections.OrderedDict[Slot, int] = collections.OrderedDict()
        self.disk_bytes = 0
        # The header names the latest stored response for a key varies on.
        self.vary: dict[str, tuple[str, ...]] = {}
        self.evictions = 0
        self._writes: set[asyncio.Task[None]] = set()
        if disk_dir is not None:
            disk_dir.mkdir(parents=True, exist_ok=True)

    # -- keys ---------------------------------------------------------------------------
    def slot_for(self, key: str, request_headers: Mapping[str, str]) -> Slot | None:
        names = self.vary.get(key)
        if names is None:
            return None
        return key, semantics.vary_key(names, request_headers)

    def _file(self, slot: Slot) -> Path:
        assert self.disk_dir is not None
        digest = hashlib.sha1(json.dumps(slot).encode()).hexdigest()
        return self.disk_dir / digest[:2] / digest

    # -- lookup ---------------------------------------------------------------------------
    def get_memory(self, slot: Slot) -> Entry | None:
        entry = self.memory.get(slot)
        if entry is not None:
            self.memory.move_to_end(slot)
        return entry

    def on_disk(self, slot: Slot) -> bool:
        return slot in self.disk

    async def get_disk(self, slot: Slot) -> Entry | None:
        if slot not in self.disk:
            return None
        file = self._file(slot)
        try:
            data = await asyncio.to_thread(file.read_bytes)
            entry = Entry.from_bytes(data)
        except (OSError, ValueError, KeyError, struct.error):
            self._forget_disk(slot)
            return None
        self._forget_disk(slot)  # promoted: memory holds it now, and spills it again later
        await asyncio.to_thread(file.unlink, True)
        self.put(entry)
        return entry

    # -- insertion and eviction -----------------------------------------------------------
    def put(self, entry: Entry) -> None:
        self.vary[entry.key] = entry.vary
        self.remove(entry.slot, keep_vary=True)
        if entry.size > self.memory_limit:
            self._spill(entry)  # too big for memory at all
            return
        self.memory[entry.slot] = entry
        self.memory_bytes += entry.size
        while self.memory_bytes > self.memory_limit and self.memory:
            _, victim = self.memory.popitem(last=False)
            self.memory_bytes -= victim.size
            self.evictions += 1
            self._spill(victim)

    def _spill(self, entry: Entry) -> None:
        if self.disk_dir is None or entry.size > self.disk_limit:
            return
        file, data = self._file(entry.slot), entry.to_bytes()
        self.disk[entry.slot] = len(data)
        self.disk_bytes += len(data)
        while self.disk_bytes > self.disk_limit and self.disk:
            old, _ = next(iter(self.disk.items()))
            self._forget_disk(old)
            self.evictions += 1
            self._background(asyncio.to_thread(self._file(old).unlink, True))

        def write() -> None:
            file.parent.mkdir(exist_ok=True)
            tmp = file.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(file)  # readers never see half a file

        self._background(asyncio.to_thread(write))

    def _background(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _forget_disk(self, slot: Slot) -> None:
        size = self.disk.pop(slot, None)
        if size is not None:
            self.disk_bytes -= size

    def remove(self, slot: Slot, keep_vary: bool = False) -> bool:
        found = False
        entry = self.memory.pop(slot, None)
        if entry is not None:
            self.memory_bytes -= entry.size
            found = True
        if slot in self.disk:
            self._forget_disk(slot)
            self._background(asyncio.to_thread(self._file(slot).unlink, True))
            found = True
        if not keep_vary and not any(s[0] == slot[0] for s in (*self.memory, *self.disk)):
            self.vary.pop(slot[0], None)
        return found

    def purge(self, keys: list[str], prefix: str | None = None) -> int:
        """Remove every variant of the given keys, or of every key starting with prefix."""
        wanted = set(keys)
        slots = [
            s
            for s in (*self.memory, *self.disk)
            if s[0] in wanted or (prefix is not None and s[0].startswith(prefix))
        ]
        count = 0
        for slot in set(slots):
            count += self.remove(slot)
        for key in [k for k in self.vary if k in wanted or (prefix and k.startswith(prefix))]:
            self.vary.pop(key, None)
        return count

    async def flush(self) -> None:
        """Wait for pending disk writes (used on shutdown and by tests)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def load_index(self) -> None:
        """Rebuild the disk index from the files a previous run left (oldest first), so a
        restarted node keeps its disk cache as nginx keeps proxy_cache_path."""
        if self.disk_dir is None:
            return
        found = []
        for file in self.disk_dir.glob("*/*"):
            if file.suffix == ".tmp":
                file.unlink(missing_ok=True)
                continue
            try:
                with file.open("rb") as fh:
                    (length,) = struct.unpack(">I", fh.read(4))
                    meta = json.loads(fh.read(length))
                size = file.stat().st_size
                found.append((file.stat().st_mtime, meta, size))
            except (OSError, ValueError, KeyError, struct.error):
                file.unlink(missing_ok=True)
        for _, meta, size in sorted(found, key=lambda f: f[0]):
            slot = (meta["key"], tuple(meta["vary_values"]))
            self.disk[slot] = size
            self.disk_bytes += size
            self.vary[meta["key"]] = tuple(meta["vary"])

    def objects(self) -> int:
        return len(self.memory) + len(self.disk)
