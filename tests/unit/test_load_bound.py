"""./d11 load ends, whatever its phones do: a visit that never finishes is cut off after
--duration plus STRAGGLER_S and counted as failed, and the finished ones are kept."""

from __future__ import annotations

import asyncio
import time

import pytest

from infra import topology as topo
from services import load
from services.phone import Journey


class _Phone:
    """Stands for services.phone.Phone in the driver alone: a visit that finishes at once
    or, for the stuck phone, never."""

    def __init__(self, address: str, stuck: bool) -> None:
        self.address, self.isp, self.region, self.mode = address, "telecom", "east", "localdns"
        self.stuck = stuck

    async def purchase(self, journey: Journey, *, order: bool) -> Journey:
        if self.stuck:
            await asyncio.Event().wait()  # nothing ever answers
        journey.outcome = "ok"
        await asyncio.sleep(0.01)
        return journey


@pytest.mark.parametrize("rate", ["0", "50"])  # closed loop, open loop
def test_a_stuck_visit_is_cut_off_and_counted(monkeypatch: pytest.MonkeyPatch, rate: str) -> None:
    monkeypatch.setattr(load, "STRAGGLER_S", 0.5)
    args = load.parser().parse_args(
        ["--orders", "40", "--concurrency", "4", "--duration", "0.5", "--rate", rate]
    )
    run = load.Run(args, topo.load())
    phones = [_Phone(f"198.19.1.{i}", stuck=(i == 1)) for i in range(1, 5)]
    started = time.monotonic()
    # The guard only keeps a broken bound from hanging the test run: it fails it instead.
    asyncio.run(asyncio.wait_for(run.drive(phones), 5))  # type: ignore[arg-type]
    assert time.monotonic() - started < 3.0
    outcomes = [j.outcome for j in run.journeys]
    assert outcomes.count("unfinished") == 1, outcomes
    assert outcomes.count("ok") >= 3, outcomes
    assert run.in_flight == 0
    stuck = next(j for j in run.journeys if j.outcome == "unfinished")
    assert "after the run's --duration" in stuck.error and stuck.total >= 1.0


def test_a_stuck_run_gives_up_and_says_where_it_waits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past --duration + STRAGGLER_S + RUN_OVERHEAD_S the whole run (set-up and audit
    included) prints each task's stack and exits, rather than hanging its caller."""

    async def stuck_in_the_audit(args: object) -> dict:
        await asyncio.Event().wait()
        return {}

    monkeypatch.setattr(load, "execute", stuck_in_the_audit)
    monkeypatch.setattr(load, "STRAGGLER_S", 0.1)
    monkeypatch.setattr(load, "RUN_OVERHEAD_S", 0.3)
    args = load.parser().parse_args(["--duration", "0.1", "--json"])
    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(load.main_async(args), 5)) == 2
    assert time.monotonic() - started < 3.0
    err = capsys.readouterr().err
    assert "stuck_in_the_audit" in err and "gave up after 0 s" in err
