"""Our gateway against real nginx, as reverse proxies: the same config subset, the same
worker count, the same upstream (a third nginx answering ``200 ok``, so the upstream is
never the bottleneck), loaded by wrk with the same settings, one after the other in one
run. Prints req/s and latency percentiles of both, and the ratio.

    .venv/bin/python -m bench.gateway --workers 1 --seconds 10 --connections 64

Bounded by ``--seconds`` per proxy; traffic stays on loopback (127.10.8.0/24).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.peers import our_gateway, real_nginx, wait_port
from bench.wrk import measure, print_results

UPSTREAM = "127.10.8.30:9100"
OURS = ("127.10.8.31", 8080)
NGINX = ("127.10.8.32", 8080)

UPSTREAM_CONF = f"""
worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server {{ listen {UPSTREAM}; keepalive_requests 1000000; location / {{ return 200 "ok"; }} }}
}}
"""


def proxy_conf(listen: str, workers: int, access_log: bool) -> str:
    log = "access_log logs/access.log;" if access_log else "access_log off;"
    return f"""
worker_processes {workers};
events {{ worker_connections 4096; }}
http {{
    {log}
    upstream backend {{ server {UPSTREAM}; keepalive 64; }}
    server {{
        listen {listen};
        keepalive_timeout 75s;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--access-log", action="store_true", help="both proxies log each request")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk missing: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="d11-bench-gw-"))
    results = {}
    with real_nginx(UPSTREAM_CONF, UPSTREAM):
        wait_port(UPSTREAM)
        conf = tmp / "gateway.conf"
        conf.write_text(proxy_conf(f"{OURS[0]}:{OURS[1]}", args.workers, args.access_log))
        (tmp / "run" / "logs").mkdir(parents=True)
        with our_gateway(conf, OURS[0], OURS[1], run_dir=tmp / "run"):
            url = f"http://{OURS[0]}:{OURS[1]}/"
            results["double-11 gateway"] = measure(
                url, args.seconds, args.connections, args.threads
            )
        nginx_conf = proxy_conf(f"{NGINX[0]}:{NGINX[1]}", args.workers, args.access_log)
        with real_nginx(nginx_conf, f"{NGINX[0]}:{NGINX[1]}"):
            url = f"http://{NGINX[0]}:{NGINX[1]}/"
            results["nginx"] = measure(url, args.seconds, args.connections, args.threads)
    shutil.rmtree(tmp, ignore_errors=True)
    print_results(
        f"reverse proxy, {args.workers} worker(s), wrk -t{args.threads} -c{args.connections}"
        f" -d{args.seconds}s, upstream nginx 'return 200'",
        "proxy", results, "double-11 gateway", "nginx",
    )  # fmt: skip


if __name__ == "__main__":
    main()
