"""``limit_req``: nginx's leaky bucket, with its integer arithmetic, in shared memory.

Per key the zone keeps ``excess`` (requests waiting in the bucket, in thousandths) and
``last`` (ms). A request drains the bucket by ``rate × elapsed`` and adds one request:

    excess = max(0, excess − rate·ms/1000 + 1000)
    excess > burst·1000            → rejected (state unchanged)
    excess ≤ delay·1000            → served now      (nodelay: delay = ∞)
    otherwise                      → served after (excess − delay·1000) / rate seconds

exactly as ``ngx_http_limit_req_lookup`` computes it, so the same sequence of requests
gets the same answers from both (a test compares them). Like nginx's zone, the table
lives in memory shared by every worker process (mapped before they are forked) behind
one lock held for a few microseconds; a full table evicts the entry idle longest.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import multiprocessing
import struct
import time
from dataclasses import dataclass

from gateway.config import LimitReq, LimitZone

_SLOT = struct.Struct("<Qqq")  # key hash (0 = free), excess (1/1000 requests), last (ms)
_PROBE = 8
BYTES_PER_STATE = 64  # nginx: about 16,000 $binary_remote_addr states per megabyte


@dataclass(frozen=True)
class Decision:
    allowed: bool
    delay: float  # seconds to hold the request before passing it on
    excess: int  # bucket level after this request, in thousandths
    status: str  # nginx's $limit_req_status: PASSED | DELAYED | REJECTED


class Zone:
    def __init__(self, zone: LimitZone) -> None:
        self.name, self.key = zone.name, zone.key
        self.rate = int(zone.rate * 1000)  # nginx keeps the rate in requests per 1000 s
        self.slots = max(64, zone.size // BYTES_PER_STATE)
        self.mem = mmap.mmap(-1, self.slots * _SLOT.size)  # anonymous: shared across fork
        self.lock = multiprocessing.Lock()
        self.size = zone.size

    def check(self, key: bytes, limit: LimitReq, now_ms: int | None = None) -> Decision:
        now = int(time.monotonic() * 1000) if now_ms is None else now_ms
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") or 1
        base = h % self.slots
        burst = limit.burst * 1000
        with self.lock:
            slot, oldest, oldest_last = -1, -1, None
            for i in range(_PROBE):
                index = (base + i) % self.slots
                kh, excess, last = _SLOT.unpack_from(self.mem, index * _SLOT.size)
                if kh == h:
                    slot = index
                    break
                if kh == 0:
                    slot, excess, last = index, 0, now
                    kh = -1  # a new entry
                    break
                if oldest_last is None or last < oldest_last:
                    oldest, oldest_last = index, last
            if slot < 0:  # every probed slot is taken: reuse the one idle longest
                slot, kh, excess, last = oldest, -1, 0, now
            if kh == -1:
                _SLOT.pack_into(self.mem, slot * _SLOT.size, h, 0, now)
                return _pass(0, limit, self.rate)
            ms = now - last
            if ms < -60000:
                ms = 1
            elif ms < 0:
                ms = 0
            excess = excess - self.rate * ms // 1000 + 1000
            excess = max(excess, 0)
            if excess > burst:
                return Decision(False, 0.0, excess, "REJECTED")
            _SLOT.pack_into(self.mem, slot * _SLOT.size, h, excess, now if ms else last)
        return _pass(excess, limit, self.rate)


def _pass(excess: int, limit: LimitReq, rate: int) -> Decision:
    delay = math.inf if limit.delay == math.inf else int(limit.delay) * 1000
    if excess <= delay:
        return Decision(True, 0.0, excess, "PASSED")
    return Decision(True, (excess - delay) / rate, excess, "DELAYED")
