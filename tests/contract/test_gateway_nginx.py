"""The gateway beside real nginx: the same config text, the same upstreams, the same
requests, and the answers compared. Upstreams are plain HTTP servers (bench/peers.py);
nginx is Debian's."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from bench.peers import nginx_binary, nginx_test, our_gateway, real_nginx, upstreams, wait_port
from infra import ROOT

OURS, NGINX = "127.10.8.1:8080", "127.10.8.2:8080"
U1, U2, U3, U4, U5 = (f"127.10.8.{n}:9000" for n in (11, 12, 13, 14, 15))
DEAD = "127.10.8.99:9000"  # nothing listens here

CONFIG = """
worker_processes 1;
events { worker_connections 1024; }
http {
    upstream wrr { server U1 weight=5; server U2; server U3; }
    upstream lc { least_conn; server U1; server U2; }
    upstream hashed { hash $arg_key consistent; server U1; server U2; server U3; }
    upstream withbackup { server DEAD max_fails=1 fail_timeout=30s; server U3 backup; }
    upstream flaky { server DEAD max_fails=1 fail_timeout=2s; server U2; }
    upstream retry { server U1 max_fails=0; server U2 max_fails=0; }
    limit_req_zone $http_x_key zone=z:1m rate=10r/s;
    client_max_body_size 1k;
    client_header_timeout 1s;
    add_header X-Upstream-Addr $upstream_addr always;
    add_header X-Upstream-Status $upstream_status always;
    server {
        listen LISTEN;
        location /wrr/ { proxy_pass http://wrr/; }
        location /lc/ { proxy_pass http://lc/; }
        location /hashed/ { proxy_pass http://hashed/; }
        location /backup/ { proxy_pass http://withbackup/; }
        location /flaky/ { proxy_pass http://flaky/; }
        location /retry/ {
            proxy_pass http://retry/;
            proxy_next_upstream error timeout http_503;
        }
        location /nodelay/ { limit_req zone=z burst=5 nodelay; proxy_pass http://U1/; }
        location /delayed/ { limit_req zone=z burst=5 delay=2; proxy_pass http://U1/; }
        location /status429/ {
            limit_req zone=z burst=1 nodelay;
            limit_req_status 429;
            proxy_pass http://U1/;
        }
        location /up/ { proxy_pass http://U1/; }
        location = /exact { return 200 "exact"; }
        location /exact { return 200 "prefix-exact"; }
        location ^~ /static/ { return 200 "static-prefix"; }
        location ~ \\.(png|jpg)$ { return 200 "regex-image"; }
        location ~* \\.PDF$ { return 200 "regex-pdf-ci"; }
        location /api/ { return 200 "api-prefix"; }
        location /api/v2/ { return 200 "api-v2-prefix"; }
        location ~ ^/api/v2/special { return 200 "api-v2-regex"; }
        location / { return 200 "root"; }
    }
}
"""


def render(listen: str, **extra: str) -> str:
    text = CONFIG
    for name, value in {
        "U1": U1,
        "U2": U2,
        "U3": U3,
        "DEAD": DEAD,
        "LISTEN": listen,
        **extra,
    }.items():
        text = text.replace(name, value)
    return text


@pytest.fixture(scope="module")
def peers() -> Iterator[None]:
    with upstreams(U1, U2, U3):
        yield


@pytest.fixture(scope="module")
def both(peers, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """Our gateway and nginx, each on the same config; yields their base URLs."""
    tmp = tmp_path_factory.mktemp("gw")
    conf = tmp / "gateway.conf"
    conf.write_text(render(OURS))
    host, port = OURS.split(":")
    with our_gateway(conf, host, int(port), run_dir=tmp / "run"), real_nginx(render(NGINX), NGINX):
        yield f"http://{OURS}", f"http://{NGINX}"


def client() -> httpx.Client:
    return httpx.Client(timeout=10, trust_env=False)


def addrs(r: httpx.Response) -> list[str]:
    return [a.strip() for a in r.headers.get("X-Upstream-Addr", "").split(",") if a.strip()]


# -- configuration ------------------------------------------------------------------------


def test_shipped_config_passes_real_nginx_and_ours(tmp_path):
    # nginx resolves relative paths against its prefix: give it the include and a
    # certificate where gateway.conf names them.
    for name in ("gateway.conf", "api-locations.conf"):
        (tmp_path / name).write_text((ROOT / "gateway" / name).read_text())
    from infra.pki import ensure_server_cert

    (tmp_path / "logs").mkdir()
    ensure_server_cert(tmp_path / "pki", "api.shop.example", ["api.shop.example"])
    result = nginx_test(tmp_path / "gateway.conf", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    ours = _gateway_t(ROOT / "gateway" / "gateway.conf")
    assert ours.returncode == 0 and "test is successful" in ours.stderr, ours.stderr


def test_the_documented_nginx_command_passes_on_a_running_stack(stack):
    """gateway.conf's header says how real nginx checks the running gateway's config: the
    gateway links it into the run directory, beside pki/. That very command must pass."""
    header = (ROOT / "gateway" / "gateway.conf").read_text().splitlines()
    line = next(x for x in header if x.lstrip("# ").startswith("nginx -t"))
    command = line.lstrip("# ").split("   ")[0].replace("$PWD/.run/", f"{stack.run_dir}/")
    import shlex
    import subprocess

    argv = shlex.split(command)
    argv[0] = nginx_binary()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=stack.run_dir)
    assert result.returncode == 0, (argv, result.stderr)
    assert "test is successful" in result.stderr


def test_a_missing_include_is_named_as_nginx_names_it(tmp_path):
    (tmp_path / "gateway.conf").write_text((ROOT / "gateway" / "gateway.conf").read_text())
    ours = _gateway_t(tmp_path / "gateway.conf")
    theirs = nginx_test(tmp_path / "gateway.conf", tmp_path)
    missing = f'open() "{tmp_path}/api-locations.conf" failed (2: No such file or directory)'
    for result in (ours, theirs):
        assert result.returncode == 1
        assert missing in result.stderr and "gateway.conf:" in result.stderr, result.stderr


def _gateway_t(conf: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "gateway", "-t", "-c", str(conf)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("proxy_pas http://x;", 'unknown directive "proxy_pas"'),
        ("gzip on;", 'unknown directive "gzip"'),  # real nginx, not supported here
        ("limit_req zone=nope;", 'zero size shared memory zone "nope"'),
        ("proxy_read_timeout soon;", 'invalid time "soon"'),
        ("proxy_set_header X $no_such_var;", 'unknown "no_such_var" variable'),
    ],
)
def test_bad_directives_are_refused_with_file_and_line(tmp_path, line, message):
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "events {}\nhttp {\n  server {\n    listen 127.0.0.1:1;\n"
        f"    location / {{\n      {line}\n      return 200;\n    }}\n  }}\n}}\n"
    )
    result = _gateway_t(conf)
    assert result.returncode == 1
    assert message in result.stderr
    if "zone" not in message:
        assert f"{conf}:6" in result.stderr, result.stderr
    assert "test failed" in result.stderr


# -- routing ------------------------------------------------------------------------------

PATHS = [
    "/exact", "/exact/x", "/exactly", "/static/a.png", "/img/a.png", "/img/a.PNG", "/doc/x.pdf",
    "/api/x", "/api/v2/x", "/api/v2/special", "/api/v2/special.png", "/", "/nothing",
]  # fmt: skip


def test_location_precedence_is_nginx_s(both):
    ours, nginx = both
    with client() as c:
        got = {p: c.get(ours + p).text for p in PATHS}
        want = {p: c.get(nginx + p).text for p in PATHS}
    assert got == want
    assert got["/static/a.png"] == "static-prefix" and got["/api/v2/special"] == "api-v2-regex"


# -- balancing ----------------------------------------------------------------------------


def test_smooth_weighted_round_robin_matches_nginx_sequence(both):
    ours, nginx = both
    with client() as c:
        got = [c.get(ours + "/wrr/who").text for _ in range(14)]
        want = [c.get(nginx + "/wrr/who").text for _ in range(14)]
    assert got == want
    # Weights 5:1:1 interleave (a a b a c a a), never five a's in a row.
    assert got[:7] == [U1, U1, U2, U1, U3, U1, U1]


def test_least_conn_avoids_the_busy_peer(both):
    ours, _ = both

    async def go():
        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> str:
                await asyncio.sleep(i * 0.03)
                # Only U1 is slow for this path, so U1 keeps its connections longer.
                async with s.get(f"{ours}/lc/slowon?addr={U1}") as r:
                    return r.headers["X-Upstream-Addr"]

            return await asyncio.gather(*(one(i) for i in range(20)))

    seen = Counter(asyncio.run(go()))
    assert seen[U2] >= 15, seen


def test_consistent_hash_keeps_keys_and_moves_few_when_a_peer_goes(both, tmp_path):
    ours, _ = both
    keys = [f"user-{n}" for n in range(120)]
    with client() as c:
        first = {k: c.get(f"{ours}/hashed/who", params={"key": k}).text for k in keys}
        again = {k: c.get(f"{ours}/hashed/who", params={"key": k}).text for k in keys}
    assert first == again
    assert set(first.values()) == {U1, U2, U3}
    # The same ring with U3 taken down: only U3's keys move.
    conf = tmp_path / "down.conf"
    ring = f"server {U2}; server {U3}; }}"
    conf.write_text(render("127.10.8.3:8080").replace(ring, ring.replace("; }", " down; }")))
    with our_gateway(conf, "127.10.8.3", 8080, run_dir=tmp_path / "run"), client() as c:
        after = {
            k: c.get("http://127.10.8.3:8080/hashed/who", params={"key": k}).text for k in keys
        }
    assert U3 not in after.values()
    stayed = [k for k in keys if first[k] != U3]
    assert all(after[k] == first[k] for k in stayed)


def test_backup_serves_when_the_primary_is_down_as_in_nginx(both):
    ours, nginx = both
    with client() as c:
        got = [addrs(c.get(ours + "/backup/who")) for _ in range(3)]
        want = [addrs(c.get(nginx + "/backup/who")) for _ in range(3)]
    assert got == want == [[DEAD, U3], [U3], [U3]]


def test_a_failed_peer_is_skipped_for_fail_timeout_then_tried_again(both):
    ours, nginx = both
    runs = {}
    for base in (nginx, ours):
        with client() as c:
            seq = [addrs(c.get(base + "/flaky/who")) for _ in range(3)]
            # nginx keeps time in whole seconds: past 2 s plus a second of rounding.
            time.sleep(3.1)
            seq += [addrs(c.get(base + "/flaky/who")) for _ in range(4)]
        runs[base] = seq
    assert runs[ours] == runs[nginx]
    seq = runs[ours]
    assert seq[:3] == [[DEAD, U2], [U2], [U2]]  # skipped while fail_timeout runs
    # Then tried again, once its weight (cut by the failure) has grown back.
    assert [DEAD, U2] in seq[3:]


def test_retry_rules_get_retries_post_does_not(both):
    ours, nginx = both
    for base in (ours, nginx):
        with client() as c:
            get = c.get(base + "/retry/status/503")
            post = c.post(base + "/retry/status/503", content=b"x")
        assert get.status_code == post.status_code == 503
        assert len(addrs(get)) == 2 and get.headers["X-Upstream-Status"] == "503, 503", base
        assert len(addrs(post)) == 1, base


def test_connect_failure_is_retried_even_for_post(both):
    ours, _ = both
    with client() as c:
        r = c.post(ours + "/flaky/echo", content=b"order")
    assert r.status_code == 200 and r.json()["body_length"] == 5


def test_failover_when_an_upstream_dies_mid_load(tmp_path):
    conf = tmp_path / "g.conf"
    conf.write_text(
        "worker_processes 1;\nevents {}\nhttp {\n"
        f"  upstream pair {{ server {U4} max_fails=1 fail_timeout=10s; server {U5};"
        " keepalive 16; }\n"
        "  add_header X-Upstream-Addr $upstream_addr always;\n"
        "  server { listen 127.10.8.4:8080; location / { proxy_pass http://pair; } }\n}\n"
    )

    async def load(n: int) -> list[int]:
        sem = asyncio.Semaphore(8)
        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> int:
                async with sem, s.get(f"http://127.10.8.4:8080/slow/{i % 5 * 4}") as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(n)))

    with upstreams(U5), our_gateway(conf, "127.10.8.4", 8080, run_dir=tmp_path / "run"):
        with upstreams(U4) as dying:

            async def run() -> list[int]:
                task = asyncio.create_task(load(600))
                await asyncio.sleep(0.4)
                dying.kill()
                return await task

            started = time.monotonic()
            statuses = asyncio.run(run())
        assert Counter(statuses) == {200: 600}
        # Requests caught on the dying peer fail over at once, not after a read timeout.
        assert time.monotonic() - started < 15


# -- limit_req ------------------------------------------------------------------------------


def _burst(base: str, path: str, key: str, n: int) -> list[int]:
    with client() as c:
        return [c.get(base + path, headers={"X-Key": key}).status_code for _ in range(n)]


def test_limit_req_nodelay_burst_arithmetic_matches_nginx(both):
    ours, nginx = both
    runs = {}
    for base in (ours, nginx):
        key = f"k-{base[-6:]}-{time.monotonic_ns()}"
        first = _burst(base, "/nodelay/who", key, 12)
        time.sleep(1.0)  # drains 10 requests at 10 r/s: the bucket is surely empty again
        second = _burst(base, "/nodelay/who", key, 8)
        runs[base] = (first, second)
    assert runs[ours] == runs[nginx]
    first, second = runs[ours]
    assert first == [200] * 6 + [503] * 6  # 1 + burst 5, the rest rejected
    assert second == [200] * 6 + [503] * 2


def test_limit_req_delay_holds_requests_beyond_the_delay_mark(both):
    ours, nginx = both

    async def concurrent(base: str, key: str) -> list[tuple[int, float]]:
        async with aiohttp.ClientSession() as s:

            async def one() -> tuple[int, float]:
                t = time.perf_counter()
                async with s.get(base + "/delayed/who", headers={"X-Key": key}) as r:
                    return r.status, time.perf_counter() - t

            return await asyncio.gather(*(one() for _ in range(8)))

    for base in (ours, nginx):
        results = asyncio.run(concurrent(base, f"d-{base[-6:]}-{time.monotonic_ns()}"))
        statuses = Counter(s for s, _ in results)
        assert statuses == {200: 6, 503: 2}, (base, statuses)
        waits = sorted(t for s, t in results if s == 200)
        # delay=2: three served at once, three held about 0.1, 0.2 and 0.3 s.
        assert all(t < 0.08 for t in waits[:3]) and waits[3] > 0.07 and waits[5] > 0.25, (
            base,
            waits,
        )


def test_limit_req_status_and_keys(both):
    ours, _ = both
    assert _burst(ours, "/status429/who", "a", 3) == [200, 200, 429]
    assert _burst(ours, "/status429/who", "b", 2) == [200, 200]  # another key, another bucket
    with client() as c:  # no key: not counted at all
        assert [c.get(ours + "/status429/who").status_code for _ in range(5)] == [200] * 5


# -- bad input ------------------------------------------------------------------------------


def _raw(address: str, data: bytes, wait: float = 5.0) -> bytes:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_bad_requests_get_nginx_s_errors_and_the_gateway_lives(both):
    ours, _ = both
    assert _raw(OURS, b"GARBAGE\r\n\r\n").split(b" ")[1] == b"400"
    big = b"GET /up/who HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert _raw(OURS, big).split(b" ")[1] in (b"400", b"431")
    with client() as c:
        assert c.post(ours + "/up/echo", content=b"x" * 2000).status_code == 413

        def chunks():
            for _ in range(4):
                yield b"y" * 600

        assert c.post(ours + "/up/echo", content=chunks()).status_code == 413
        assert c.post(ours + "/up/echo", content=b"x" * 1000).json()["body_length"] == 1000
        assert c.get(ours + "/up/who").text == U1


def test_slowloris_connections_are_closed_after_client_header_timeout(both):
    host, port = OURS.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /up/who HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        started = time.monotonic()
        assert s.recv(1024) == b""  # closed by the gateway
        assert 0.8 < time.monotonic() - started < 4
    with client() as c:
        assert c.get(f"http://{OURS}/up/who").status_code == 200


# -- processes ------------------------------------------------------------------------------


def test_workers_share_the_port_and_reload_drops_nothing(peers, tmp_path):
    conf = tmp_path / "g.conf"
    text = (
        "worker_processes 2;\nevents {}\nhttp {\n"
        f"  upstream up {{ server {U1}; server {U2}; keepalive 16; }}\n"
        "  add_header X-Worker $pid always;\n  add_header X-Gen GEN always;\n"
        "  server { listen 127.10.8.5:8080; location / { proxy_pass http://up; } }\n}\n"
    )
    conf.write_text(text.replace("GEN", "one"))

    async def load(n: int, seen: list) -> list[int]:
        sem = asyncio.Semaphore(16)
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time
        async with aiohttp.ClientSession(connector=connector) as s:

            async def one(i: int) -> int:
                async with sem, s.get(f"http://127.10.8.5:8080/slow/{i % 3 * 5}") as r:
                    await r.read()
                    seen.append((r.headers["X-Gen"], r.headers["X-Worker"]))
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(n)))

    with our_gateway(conf, "127.10.8.5", 8080, run_dir=tmp_path / "run") as master:
        seen: list[tuple[str, str]] = []
        assert Counter(asyncio.run(load(200, seen))) == {200: 200}
        assert len({w for _, w in seen}) == 2  # both workers accepted connections

        async def reload_during_load() -> list[int]:
            task = asyncio.create_task(load(1500, seen))
            await asyncio.sleep(0.5)
            conf.write_text(text.replace("GEN", "two"))
            os.kill(master.pid, signal.SIGHUP)
            return await task

        seen.clear()
        statuses = asyncio.run(reload_during_load())
        assert Counter(statuses) == {200: 1500}
        gens = Counter(g for g, _ in seen)
        assert gens["one"] > 0 and gens["two"] > 0, gens
        # A broken config is refused on reload; the running workers keep serving.
        conf.write_text("events {}\nhttp { server { listen 127.10.8.5:8080; bogus; } }\n")
        os.kill(master.pid, signal.SIGHUP)
        time.sleep(1)
        with client() as c:
            r = c.get("http://127.10.8.5:8080/who")
        assert r.status_code == 200 and r.headers["X-Gen"] == "two"
        assert master.poll() is None
        wait_port("127.10.8.5:8080")


def test_a_body_delimited_by_the_upstream_closing_is_passed_on(tmp_path):
    """HTTP/1.0-style answers (no Content-Length, not chunked) end when the upstream closes."""
    import threading

    server = socket.create_server(("127.10.8.16", 9000))

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    conf = tmp_path / "g.conf"
    conf.write_text(
        "events {}\nhttp {\n  proxy_read_timeout 5s;\n"
        "  server { listen 127.10.8.6:8080;\n"
        "    location / { proxy_pass http://127.10.8.16:9000; } }\n}\n"
    )
    with our_gateway(conf, "127.10.8.6", 8080, run_dir=tmp_path / "run"), client() as c:
        started = time.monotonic()
        for _ in range(2):
            r = c.get("http://127.10.8.6:8080/x")
            assert (r.status_code, r.text) == (200, "until the end")
        assert time.monotonic() - started < 3


def test_active_health_checks_take_a_sick_peer_out_and_bring_it_back(tmp_path):
    """extensions.conf's health_check: a peer whose /healthz fails stops getting traffic
    before any request has failed on it, and returns once it passes again."""
    u6, u7 = "127.10.8.17:9000", "127.10.8.18:9000"
    conf, ext = tmp_path / "g.conf", tmp_path / "ext.conf"
    conf.write_text(
        "events {}\nhttp {\n"
        f"  upstream pair {{ server {u6}; server {u7}; }}\n"
        "  add_header X-Upstream-Addr $upstream_addr always;\n"
        "  server { listen 127.10.8.7:8080; location / { proxy_pass http://pair; } }\n}\n"
    )
    ext.write_text("health_check pair interval=200ms uri=/healthz fails=1 passes=2 timeout=1s;\n")
    sick = tmp_path / "sick"
    sick.mkdir()
    url = "http://127.10.8.7:8080/who"
    with (
        upstreams(u6, u7, sick_dir=sick),
        our_gateway(conf, "127.10.8.7", 8080, run_dir=tmp_path / "run", extensions=ext),
        client() as c,
    ):
        assert {c.get(url).text for _ in range(6)} == {u6, u7}
        (sick / f"{u6.split(':')[0]}.sick").touch()
        time.sleep(0.8)
        assert {c.get(url).text for _ in range(8)} == {u7}
        (sick / f"{u6.split(':')[0]}.sick").unlink()
        time.sleep(0.9)
        assert {c.get(url).text for _ in range(6)} == {u6, u7}
