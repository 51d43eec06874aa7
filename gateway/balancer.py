"""Upstream balancing as nginx does it: smooth weighted round robin, ``least_conn``,
``hash $key [consistent]``, ``backup`` servers, passive health (``max_fails`` within
``fail_timeout``) and, from extensions.conf, active probes.

A request asks for a peer with the set of peers it already tried (``proxy_next_upstream``
never sends a retry to the same server) and hands the peer back with the outcome.
"""

from __future__ import annotations

import bisect
import time
import zlib
from collections.abc import Callable

from gateway.config import Upstream, UpstreamServer


class Peer:
    __slots__ = (
        "accessed",
        "address",
        "backup",
        "checked",
        "conns",
        "current_weight",
        "down",
        "effective_weight",
        "fail_timeout",
        "fails",
        "healthy",
        "host",
        "max_fails",
        "port",
        "weight",
    )

    def __init__(self, s: UpstreamServer) -> None:
        self.address = s.address
        host, _, port = s.address.rpartition(":")
        self.host, self.port = host, int(port)
        self.weight = self.effective_weight = s.weight
        self.current_weight = 0
        # nginx keeps fail_timeout, and the times compared with it, in whole seconds.
        self.max_fails, self.fail_timeout = s.max_fails, int(s.fail_timeout)
        self.backup, self.down = s.backup, s.down
        self.fails = 0
        self.accessed = 0  # when the last failure happened
        self.checked = 0  # when the last failure, or the first pick after its timeout, was
        self.conns = 0
        self.healthy = True  # active probes' verdict

    def usable(self, now: float) -> bool:
        if self.down or not self.healthy:
            return False
        # Temporarily disabled after max_fails failures, until fail_timeout has passed.
        return not (
            self.max_fails
            and self.fails >= self.max_fails
            and now - self.checked <= self.fail_timeout
        )

    def __repr__(self) -> str:
        return f"Peer({self.address}, w={self.weight}, fails={self.fails}, conns={self.conns})"


class Balancer:
    def __init__(self, upstream: Upstream, clock: Callable[[], float] = lambda: int(time.time())):
        self.name = upstream.name
        self.method = upstream.method
        self.hash_key = upstream.hash_key
        self.clock = clock
        self.primary = [Peer(s) for s in upstream.servers if not s.backup]
        self.backup = [Peer(s) for s in upstream.servers if s.backup]
        self.peers = self.primary + self.backup
        self.tries = len(self.peers)
        self._ring: list[tuple[int, Peer]] = []
        if upstream.method == "hash" and upstream.consistent:
            self._build_ring()
        self._points = [p for p, _ in self._ring]

    # -- choosing ----------------------------------------------------------------------
    def get(self, tried: set[Peer], key: str = "") -> Peer | None:
        """The next peer for a request, or None when no live peer is left ("no live
        upstreams" in nginx's error log, a 502 for the client)."""
        now = self.clock()
        peer = None
        if self.method == "hash":
            peer = self._hash(tried, key, now)
        if peer is None:
            pick = self._least_conn if self.method == "least_conn" else self._smooth_wrr
            peer = pick(self.primary, tried, now)
            if peer is None and self.backup:
                peer = pick(self.backup, tried, now)
        if peer is None:
            if not any(p.usable(now) for p in self.peers):
                # nginx forgets failures when every peer is down, so the next request can
                # try again; probes that fail everywhere (all upstreams starting, or the
                # probe path broken) are ignored likewise rather than refuse everything.
                for p in self.peers:
                    p.fails = 0
                if any(not p.healthy for p in self.peers):
                    for p in self.peers:
                        p.healthy = True
                    return self.get(tried, key)
            return None
        if now - peer.checked > peer.fail_timeout:
            peer.checked = now
        peer.conns += 1
        return peer

    def _smooth_wrr(self, peers: list[Peer], tried: set[Peer], now: float) -> Peer | None:
        # nginx's smooth weighted round robin: every live peer gains its effective weight;
        # the richest is chosen and pays the total. Weights 5,1,1 give a b a c a a b ...
        # interleaved rather than five a's in a row.
        best, total = None, 0
        for peer in peers:
            if peer in tried or not peer.usable(now):
                continue
            peer.current_weight += peer.effective_weight
            total += peer.effective_weight
            if peer.effective_weight < peer.weight:
                peer.effective_weight += 1  # a recovered peer regains its weight gradually
            if best is None or peer.current_weight > best.current_weight:
                best = peer
        if best is not None:
            best.current_weight -= total
        return best

    def _least_conn(self, peers: list[Peer], tried: set[Peer], now: float) -> Peer | None:
        live = [p for p in peers if p not in tried and p.usable(now)]
        if not live:
            return None
        # Fewest connections per unit of weight; ties go to weighted round robin.
        best = min(live, key=lambda p: p.conns / p.weight)
        tied = [p for p in live if p.conns * best.weight == best.conns * p.weight]
        return tied[0] if len(tied) == 1 else self._smooth_wrr(tied, set(), now)

    def _build_ring(self) -> None:
        # Ketama-like: 160 points per unit of weight on a 32-bit ring.
        for peer in self.primary:
            for i in range(160 * peer.weight):
                self._ring.append((zlib.crc32(f"{peer.address}-{i}".encode()), peer))
        self._ring.sort(key=lambda item: item[0])

    def _hash(self, tried: set[Peer], key: str, now: float) -> Peer | None:
        h = zlib.crc32(key.encode())
        if self._ring:
            start = bisect.bisect_left(self._points, h)
            # Walk clockwise to the first live peer not yet tried (20 steps, as nginx).
            for step in range(min(20, len(self._ring))):
                peer = self._ring[(start + step) % len(self._ring)][1]
                if peer not in tried and peer.usable(now):
                    return peer
            return None
        total = sum(p.weight for p in self.primary)
        for attempt in range(20):
            point = (h if attempt == 0 else zlib.crc32(f"{attempt}{key}".encode())) % total
            for peer in self.primary:
                point -= peer.weight
                if point < 0:
                    break
            if peer not in tried and peer.usable(now):
                return peer
        return None  # after 20 misses nginx falls back to round robin; so does get()

    # -- outcomes ----------------------------------------------------------------------
    def free(self, peer: Peer, failed: bool) -> None:
        peer.conns -= 1
        if failed:
            now = self.clock()
            peer.fails += 1
            peer.accessed = peer.checked = now
            if peer.max_fails:
                peer.effective_weight = max(
                    0, peer.effective_weight - peer.weight // peer.max_fails
                )
        elif peer.accessed < peer.checked:
            # As nginx: a success only clears the failures once the peer has been picked
            # again after fail_timeout; within the window, failures keep counting.
            peer.fails = 0
