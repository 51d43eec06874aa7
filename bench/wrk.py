"""wrk as both benchmarks of HTTP proxies drive it: one run's figures, and the side-by-side
table with the ratio."""

from __future__ import annotations

import re
import subprocess


def wrk(url: str, seconds: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result = {"rps": rps, "non2xx": float(errors.group(1)) if errors else 0.0}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            result[f"p{pct}_ms"] = float(m.group(1)) * scale
    if socket_errors:
        print(f"  wrk socket errors: {socket_errors.group(1)}")
    return result


def measure(url: str, seconds: int, connections: int, threads: int) -> dict[str, float]:
    """Two seconds of warm-up (connections opened, caches filled), then the measured run."""
    wrk(url, 2, connections, threads)
    return wrk(url, seconds, connections, threads)


def print_results(
    title: str, kind: str, results: dict[str, dict[str, float]], ours: str, peer: str
):
    """The figures of every run, then ours / the peer's req/s."""
    print(title)
    print(f"{kind:20} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, r in results.items():
        print(
            f"{name:20} {r['rps']:>10.0f} {r.get('p50_ms', 0):>8.2f} {r.get('p99_ms', 0):>8.2f}"
            f" {r['non2xx']:>8.0f}"
        )
    print(f"ratio (ours / {peer}): {results[ours]['rps'] / results[peer]['rps']:.2f}x")
