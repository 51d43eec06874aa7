"""A cache node against nginx proxy_cache, serving a 10 KB cache HIT: both in front of the
same origin (ours, ``python -m cdn.origin``), warmed, then loaded by wrk with the same
settings one after the other in one run. Prints req/s, p50/p99 and the ratio.

    .venv/bin/python -m bench.cdn --seconds 10 --connections 64

Bounded by ``--seconds`` per cache; traffic stays on loopback (127.30.8.0/24).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import httpx

from bench.peers import our_service, real_nginx
from bench.wrk import measure, print_results
from infra.config import LAB_ADMIN_TOKEN

ORIGIN = ("127.30.8.1", 8000)
OURS = ("127.30.8.2", 8000)
NGINX = ("127.30.8.3", 8000)
OBJECT = "/bench/10k.bin"


def nginx_conf(cache_dir: Path) -> str:
    return f"""
worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    proxy_cache_path {cache_dir} levels=1:2 keys_zone=edge:10m max_size=256m;
    upstream origin {{ server {ORIGIN[0]}:{ORIGIN[1]}; keepalive 16; }}
    server {{
        listen {NGINX[0]}:{NGINX[1]};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache edge;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk missing: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="d11-bench-cdn-"))
    results = {}
    token = {"X-Admin-Token": LAB_ADMIN_TOKEN}
    with our_service("cdn.origin", *ORIGIN, run_dir=tmp / "run", D11_SERVICE="origin"):
        body = bytes(range(256)) * 40  # 10,240 bytes
        put = httpx.put(
            f"http://{ORIGIN[0]}:{ORIGIN[1]}{OBJECT}",
            content=body,
            headers={**token, "Cache-Control": "public, max-age=3600"},
        )
        put.raise_for_status()
        with our_service(
            "cdn.cache", *OURS, run_dir=tmp / "run", D11_SERVICE="edge",
            D11_CDN_TIER="center", D11_CDN_PARENT=f"{ORIGIN[0]}:{ORIGIN[1]}",
        ):  # fmt: skip
            url = f"http://{OURS[0]}:{OURS[1]}{OBJECT}"
            warm = httpx.get(url)
            assert warm.content == body, "the cache node served other bytes"
            assert httpx.get(url).headers["x-cache"] == "HIT"
            results["double-11 cache"] = measure(url, args.seconds, args.connections, args.threads)
        # nginx's workers drop root: its cache directory must be theirs to write.
        tmp.chmod(0o755)
        (tmp / "nginx-cache").mkdir(mode=0o777)
        with real_nginx(nginx_conf(tmp / "nginx-cache"), f"{NGINX[0]}:{NGINX[1]}"):
            url = f"http://{NGINX[0]}:{NGINX[1]}{OBJECT}"
            httpx.get(url)
            check = httpx.get(url)
            assert check.headers.get("x-cache") == "HIT", (check.status_code, check.headers)
            results["nginx proxy_cache"] = measure(
                url, args.seconds, args.connections, args.threads
            )
    shutil.rmtree(tmp, ignore_errors=True)
    print_results(
        f"10 KB cache HIT, 1 worker each, wrk -t{args.threads} -c{args.connections}"
        f" -d{args.seconds}s",
        "cache", results, "double-11 cache", "nginx proxy_cache",
    )  # fmt: skip


if __name__ == "__main__":
    main()
