"""Our authoritative server against BIND 9 serving the same zone file: dnsperf sends the
same query mix to each, one after the other in one run, and the QPS of both and the ratio
are printed.

    .venv/bin/python -m bench.dns --seconds 10
    ./d11 up --detach && .venv/bin/python -m bench.dns --resolvers --seconds 10

With ``--resolvers``, recursive resolvers instead: ours (a fresh ``dns.resolver``) against
BIND 9 as a resolver, both with root hints pointing at the running stack's root, on names
they have cached after a warm-up.

The authoritative mix: answers, a CNAME chain, NXDOMAIN, NODATA and MX with additional
records, over UDP. Bounded by ``--seconds`` per server; traffic stays on loopback (127.20.9.0/24).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dns.zone import ZONES_DIR
from infra import ROOT

OURS = "127.20.9.2"
# named listens only on addresses an interface has; of loopback, that is 127.0.0.1.
BIND, BIND_PORT = "127.0.0.1", 53053
QUERIES = [
    "api.shop.example A", "www.shop.example A", "api.shop.example A", "shop.example MX",
    "nothing.shop.example A", "api.shop.example TXT", "img.shop.example A", "shop.example SOA",
]  # fmt: skip


def wait_udp(address: str, port: int = 53, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port),
                              f"@{address}", "shop.example", "SOA"],
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            return
        time.sleep(0.2)
    raise SystemExit(f"no DNS server answering on {address}")


def dnsperf(
    address: str, queries: Path, seconds: int, clients: int, port: int = 53
) -> dict[str, float]:
    out = subprocess.run(
        ["dnsperf", "-s", address, "-p", str(port), "-d", str(queries), "-l", str(seconds),
         "-c", str(clients), "-q", "500", "-t", "2"],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    latency = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    return {
        "qps": qps,
        "lost": float(lost.group(1)) if lost else 0.0,
        "avg_ms": float(latency.group(1)) * 1000 if latency else 0.0,
    }


def measure_ours(
    module: str, address: str, env_extra: dict[str, str], queries: Path, tmp: Path, args
) -> dict[str, float]:
    """Start ``python -m MODULE`` on ``address``:53, warm it up, then measure it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D11_", "OTEL_"))}
    env.update(D11_ADDRESS=address, D11_PORT="53", D11_RUN_DIR=str(tmp),
               OTEL_SDK_DISABLED="true", D11_LOG_LEVEL="WARNING", **env_extra)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env)
    try:
        wait_udp(address)
        dnsperf(address, queries, 2, args.clients)  # warm-up (fills a resolver's cache)
        return dnsperf(address, queries, args.seconds, args.clients)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def measure_bind(conf: Path, queries: Path, args) -> dict[str, float]:
    """Start named on ``conf`` (listening on BIND:BIND_PORT), warm it up, measure it."""
    log = open(conf.parent / "named.log", "w")  # noqa: SIM115 - closed with the process
    named = subprocess.Popen(["named", "-g", "-n", "1", "-c", str(conf)],
                             stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        try:
            wait_udp(BIND, BIND_PORT)
        except SystemExit:
            print((conf.parent / "named.log").read_text()[-2000:])
            raise
        dnsperf(BIND, queries, 2, args.clients, BIND_PORT)
        return dnsperf(BIND, queries, args.seconds, args.clients, BIND_PORT)
    finally:
        named.send_signal(signal.SIGTERM)
        named.wait(10)
        log.close()


RESOLVER_QUERIES = ["img.shop.example A", "www.shop.example A", "api.shop.example A",
                    "shop.example MX", "nothing.shop.example A"]  # fmt: skip
OUR_RESOLVER = "127.20.9.3"


def resolvers(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from infra.topology import load

    root = load().host("dns-root").address
    tmp = Path(tempfile.mkdtemp(prefix="d11-bench-res-"))
    tmp.chmod(0o777)
    queries = tmp / "queries.txt"
    queries.write_text("\n".join(RESOLVER_QUERIES) + "\n")
    (tmp / "root.hints").write_text(
        f".  3600000 IN NS a.root-servers.example.\na.root-servers.example. 3600000 IN A {root}\n"
    )
    (tmp / "named.conf").write_text(
        f'options {{ directory "{tmp}"; listen-on port {BIND_PORT} {{ {BIND}; }};'
        " listen-on-v6 { none; }; recursion yes; allow-recursion { 127.0.0.0/8; };"
        f' dnssec-validation no; pid-file "{tmp}/named.pid"; }};\n'
        f'zone "." {{ type hint; file "{tmp}/root.hints"; }};\n'
    )
    results = {
        "double-11 dns.resolver": measure_ours(
            "dns.resolver", OUR_RESOLVER, {"D11_ROOT_HINTS": root}, queries, tmp, args
        ),
        "BIND 9 (named -n 1)": measure_bind(tmp / "named.conf", queries, args),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--resolvers", action="store_true", help="compare recursive resolvers")
    args = parser.parse_args()
    for tool in ("named", "dnsperf"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} missing: apt-get install bind9 dnsperf")
    if args.resolvers:
        report(resolvers(args), "recursive, cached names", args, "double-11 dns.resolver")
        return
    tmp = Path(tempfile.mkdtemp(prefix="d11-bench-dns-"))
    tmp.chmod(0o777)
    zone = tmp / "shop.example.zone"
    zone.write_text((ZONES_DIR / "shop.example.zone").read_text())
    queries = tmp / "queries.txt"
    queries.write_text("\n".join(QUERIES) + "\n")
    (tmp / "named.conf").write_text(
        f'options {{ directory "{tmp}"; listen-on port {BIND_PORT} {{ {BIND}; }};'
        f" listen-on-v6 {{ none; }}; recursion no; dnssec-validation no;"
        f' pid-file "{tmp}/named.pid"; }};\n'
        f'zone "shop.example" {{ type primary; file "{zone}"; }};\n'
    )
    results = {
        "double-11 dns.auth": measure_ours(
            "dns.auth", OURS, {"D11_ZONES": str(zone)}, queries, tmp, args
        ),
        "BIND 9 (named -n 1)": measure_bind(tmp / "named.conf", queries, args),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    report(results, "authoritative", args, "double-11 dns.auth")


def report(results: dict, what: str, args: argparse.Namespace, ours: str) -> None:
    print(f"{what}, one process/one worker thread each, dnsperf -c {args.clients}"
          f" -l {args.seconds}, over UDP")  # fmt: skip
    print(f"{'server':24} {'QPS':>10} {'avg ms':>8} {'lost':>6}")
    for name, r in results.items():
        print(f"{name:24} {r['qps']:>10.0f} {r['avg_ms']:>8.3f} {r['lost']:>6.0f}")
    ratio = results[ours]["qps"] / results["BIND 9 (named -n 1)"]["qps"]
    print(f"ratio (ours / BIND): {ratio:.2f}x")


if __name__ == "__main__":
    main()
