"""Every benchmark script runs to its end with its shortest settings and prints its
figures (the ratio against the real peer where there is one): benchmarks are scripts, not
timed tests, but a fresh machine must not break one unnoticed (a peer's temp paths, a
changed report). The figures themselves are not judged here."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from infra import ROOT
from services.wires import PROTOCOLS
from tests.conftest import Stack

RATIO = re.compile(r"ratio \(ours / [^)]+\): \d+\.\d\dx")


def bench(*argv: str, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"{argv}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ("bench.cdn", "--seconds", "1", "--connections", "8"),
        ("bench.gateway", "--seconds", "1", "--connections", "8"),
        ("bench.dns", "--seconds", "1", "--clients", "1"),
    ],
    ids=["cdn", "gateway", "dns"],
)
def test_side_by_side_benchmarks_print_their_ratio(argv):
    assert RATIO.search(bench(*argv)), argv


def test_rpc_shootout_prints_every_wire_against_grpc():
    out = bench("bench.rpc", "--calls", "40", "--max-seconds", "10")
    for wire in PROTOCOLS:
        assert re.search(rf"^{wire}\s.*\d+\.\d\dx$", out, re.M), out


def test_whole_chain_benchmarks_run_against_the_stack(stack: Stack):
    orders = bench("bench.orders", "--orders", "30", "--concurrency", "4", "--max-seconds", "30",
                   env={**stack.env, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert re.search(r"throughput \d+ orders/s", orders), orders
    chain = bench("bench.chain", "--scenario", "mixed", "--orders", "30", "--concurrency", "4",
                  "--stock", "1000", "--trace-ratio", "0.01",
                  env={**stack.env, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert "CPU per visit" in chain and "audit passed" in chain, chain
