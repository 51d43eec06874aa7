"""./d11 top's rates when several processes answer one address's /metrics in turn (the
gateway's workers, each counting its own requests), fed the exposition text that
prometheus_client itself writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from infra import topology as topo
from infra.top import Top


class Worker:
    def __init__(self, pid: int, already: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("d11_requests", "", ["protocol", "operation", "outcome"],
                                registry=self.registry)  # fmt: skip
        Gauge("d11_process_pid", "", registry=self.registry).set(pid)
        self.requests.labels("http", "GET /api/items", "200").inc(already)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_workers_answering_in_turn_add_up_and_a_restart_does_not() -> None:
    t = topo.load()
    top = Top(t, [])
    # Two workers, 50 requests/s each; one had served 5,000 more before we looked.
    a, b = Worker(101, 0), Worker(102, 5000)
    rows = []
    for second in range(1, 13):
        a.requests.labels("http", "GET /api/items", "200").inc(50)
        b.requests.labels("http", "GET /api/items", "200").inc(50)
        worker = a if second % 2 else b
        rows.append(top.observe("gateway", worker.text(), float(second)))
    rates = [r["rps"] for r in rows if r["rps"] is not None]
    # Never the jump between the two workers' counters (5,000 in a second) ...
    assert max(rates) <= 100.0, rates
    # ... and, once both answered in turn, the sum of the two (50 + 50).
    assert rates[-4:] == [100.0] * 4, rates
    # A single process restarting (a new pid, counters from zero) is not two workers.
    single = Top(t, [])
    old, new = Worker(201, 0), Worker(202, 0)
    for second in range(1, 4):
        old.requests.labels("http", "GET /api/items", "200").inc(30)
        single.observe("controller-1", old.text(), float(second))
    for second in range(4, 8):
        new.requests.labels("http", "GET /api/items", "200").inc(30)
        row = single.observe("controller-1", new.text(), float(second))
    assert row["rps"] == 30.0, row
