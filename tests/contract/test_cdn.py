"""The CDN over HTTP: the origin, cache nodes in three tiers, the anti-leech edge, and the
operations API. A private chain runs on 127.30.9.x:

    origin .1 → center .2 → region .3 → edge .4 (signed URLs, Referer allow-list)
                                      ↘ edge .6 (a second edge under the same region)
    bench/peers.py /respond .10 → node .5 (a centre whose origin says exactly what a test asks)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest

from bench.peers import our_service, upstreams, wait_port
from cdn.signing import sign_secure_link, sign_type_a

ORIGIN, CENTER, REGION, EDGE, FLEX, EDGE2 = (f"127.30.9.{n}:8000" for n in (1, 2, 3, 4, 5, 6))
# An edge and a region in front of the configurable origin too, beside FLEX (a centre): the
# RFC 9111 / 9213 cases hold on every tier. RAW_NODE's origin is a raw socket (1xx, chunked).
FLEX_REGION, FLEX_EDGE, RAW_NODE = (f"127.30.9.{n}:8000" for n in (7, 8, 9))
TIERS = {"edge": FLEX_EDGE, "region": FLEX_REGION, "center": FLEX}
PEER = "127.30.9.10:8000"
RAW_ORIGIN = ("127.30.9.11", 8000)
SECRET, TYPE_A_KEY = "cdn-test-secret", "cdn-test-type-a"
ADMIN = {"X-Admin-Token": "double-11-lab-admin"}
IMAGE = "/img/items/7/main.png"


def node(address: str, run_dir: Path, name: str, tier: str, parent: str, **env: str):
    host, port = address.split(":")
    return our_service(
        "cdn.cache", host, int(port), run_dir=run_dir, D11_SERVICE=name,
        D11_CDN_TIER=tier, D11_CDN_PARENT=parent, D11_CDN_READ_TIMEOUT="2", **env,
    )  # fmt: skip


EDGE_ENV = {
    "D11_CDN_SIGNING": "secure_link,type_a",
    "D11_CDN_SECRET": SECRET,
    "D11_CDN_TYPE_A_KEY": TYPE_A_KEY,
    "D11_CDN_REFERERS": "shop.example,*.shop.example",
    "D11_CDN_EMPTY_REFERER": "allow",
    "D11_CDN_METHODS": "GET,HEAD",  # a read-only public edge, as the shop's are
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    run = tmp_path_factory.mktemp("cdn")
    with (
        upstreams(PEER),
        our_service("cdn.origin", "127.30.9.1", 8000, run_dir=run, D11_SERVICE="origin"),
        node(CENTER, run, "center", "center", ORIGIN),
        node(REGION, run, "region", "region", CENTER),
        node(EDGE, run, "edge", "edge", REGION, **EDGE_ENV),
        node(EDGE2, run, "edge2", "edge", REGION),
        node(FLEX, run, "flex", "center", PEER),
        node(FLEX_REGION, run, "flex-region", "region", PEER),
        node(FLEX_EDGE, run, "flex-edge", "edge", PEER),
        raw_origin(),
        node(RAW_NODE, run, "raw", "center", f"{RAW_ORIGIN[0]}:{RAW_ORIGIN[1]}"),
    ):
        yield run


@contextlib.contextmanager
def raw_origin() -> Iterator[None]:
    """An origin on a bare socket, for what an aiohttp origin cannot send: an interim
    103 Early Hints before the answer, and a chunked body."""
    server = socket.create_server(RAW_ORIGIN)
    server.settimeout(0.2)
    done = threading.Event()
    reply = (b"HTTP/1.1 103 Early Hints\r\nLink: </img/x.png>; rel=preload\r\n\r\n"
             b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n"
             b"Content-Type: text/plain\r\n\r\n5\r\nhello\r\n0\r\n\r\n")  # fmt: skip

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if data:
                        conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(2)
        server.close()


@pytest.fixture
def http(chain) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def signed(path: str, ttl: int = 300, secret: str = SECRET) -> str:
    return f"http://{EDGE}{path}?{sign_secure_link(path, int(time.time()) + ttl, secret)}"


def respond(count: str, *headers: str, at: str = FLEX, **params: str) -> str:
    """A URL of the configurable origin behind FLEX (or another node in front of it)."""
    return f"http://{at}{respond_path(count, *headers, **params)}"


def respond_path(count: str, *headers: str, **params: str) -> str:
    query = urlencode([("count", count), *(("h", h) for h in headers), *params.items()])
    return f"/respond?{query}"


def origin_count(http: httpx.Client, count: str) -> int:
    return http.get(f"http://{PEER}/count", params={"count": count}).json()


def raw(address: str, data: bytes) -> bytes:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# -- origin ----------------------------------------------------------------------------------
def png_size(data: bytes) -> tuple[int, int]:
    """Width and height, after checking the signature, every chunk's CRC and that the
    image data inflates to exactly one filter byte plus RGB pixels per row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height


def test_origin_serves_real_deterministic_images(http):
    main = http.get(f"http://{ORIGIN}{IMAGE}")
    thumb = http.get(f"http://{ORIGIN}/img/items/7/thumb.png")
    assert main.status_code == thumb.status_code == 200
    assert main.headers["content-type"] == "image/png"
    assert png_size(main.content) == (256, 256) and png_size(thumb.content) == (64, 64)
    assert 3_000 < len(thumb.content) < 20_000 < 50_000 < len(main.content) < 400_000
    other = http.get(f"http://{ORIGIN}/img/items/8/main.png").content
    assert other != main.content
    assert http.get(f"http://{ORIGIN}{IMAGE}").content == main.content
    assert main.headers["etag"].startswith('"') and main.headers["last-modified"]
    assert "s-maxage" in main.headers["cache-control"]
    assert http.get(f"http://{ORIGIN}/img/items/99999/main.png").status_code == 404


def test_origin_conditional_and_range_requests(http):
    first = http.get(f"http://{ORIGIN}{IMAGE}")
    etag, modified, size = first.headers["etag"], first.headers["last-modified"], len(first.content)
    assert http.get(f"http://{ORIGIN}{IMAGE}", headers={"If-None-Match": etag}).status_code == 304
    assert (
        http.get(f"http://{ORIGIN}{IMAGE}", headers={"If-None-Match": '"other"'}).status_code == 200
    )
    assert (
        http.get(f"http://{ORIGIN}{IMAGE}", headers={"If-Modified-Since": modified}).status_code
        == 304
    )
    part = http.get(f"http://{ORIGIN}{IMAGE}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == first.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    tail = http.get(f"http://{ORIGIN}{IMAGE}", headers={"Range": "bytes=-10"})
    assert tail.content == first.content[-10:]
    bad = http.get(f"http://{ORIGIN}{IMAGE}", headers={"Range": f"bytes={size}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{size}"
    multi = http.get(f"http://{ORIGIN}{IMAGE}", headers={"Range": "bytes=0-1,10-11"})
    assert multi.status_code == 206
    assert multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert b"Content-Range: bytes 10-11/" in multi.content
    # If-Range with a different validator: the whole object, not a part.
    whole = http.get(f"http://{ORIGIN}{IMAGE}", headers={"Range": "bytes=0-1", "If-Range": '"x"'})
    assert whole.status_code == 200 and len(whole.content) == size


def test_origin_uploads(http):
    url = f"http://{ORIGIN}/img/banners/double-11.txt"
    assert http.put(url, content=b"x").status_code == 401
    upload = {**ADMIN, "Content-Type": "text/plain", "Cache-Control": "public, max-age=5"}
    put = http.put(url, content=b"sale!", headers=upload)
    assert put.status_code in (200, 201)
    got = http.get(url)
    assert got.content == b"sale!" and got.headers["cache-control"] == "public, max-age=5"
    assert got.headers["etag"] == put.headers["etag"]
    assert http.delete(url, headers=ADMIN).status_code == 204
    assert http.get(url).status_code == 404
    big = http.put(f"http://{ORIGIN}/big", content=b"0" * (9 * 1024 * 1024), headers=ADMIN)
    assert big.status_code == 413
    assert http.get(f"http://{ORIGIN}/big").status_code == 404
    # Generated images can be deleted too, and stay deleted.
    assert http.delete(f"http://{ORIGIN}/img/items/299/thumb.png", headers=ADMIN).status_code == 204
    assert http.get(f"http://{ORIGIN}/img/items/299/thumb.png").status_code == 404


@pytest.mark.parametrize("node_address", [ORIGIN, EDGE])
def test_path_traversal_refused(chain, node_address):
    for path in (b"/img/../../etc/passwd", b"/img/%2e%2e/%2e%2e/etc/passwd", b"/img/a%00b"):
        answer = raw(
            node_address, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.split(b"\r\n")[0].split(b" ")[1] == b"400", (path, answer[:200])


# -- tiers -----------------------------------------------------------------------------------
def test_tiers_miss_then_hit_with_growing_age(http):
    path = "/img/items/11/main.png"
    origin = http.get(f"http://{ORIGIN}{path}").content
    first = http.get(signed(path))
    assert first.status_code == 200 and first.content == origin
    assert first.headers["x-cache"] == "MISS"
    assert first.headers["x-cache-chain"] == "edge=MISS, region=MISS, center=MISS"
    assert first.headers["via"].endswith(
        "1.1 center (double-11), 1.1 region (double-11), 1.1 edge (double-11)"
    )
    time.sleep(1.1)
    second = http.get(signed(path))
    assert second.headers["x-cache"] == "HIT" and second.content == origin
    assert int(second.headers["age"]) >= 1
    # Another edge under the same region: its miss is the region's hit, and the Age it
    # reports is the region's (the object has been cached that long).
    other = http.get(f"http://{EDGE2}{path}")
    assert other.headers["x-cache-chain"] == "edge2=MISS, region=HIT"
    assert int(other.headers["age"]) >= 1 and other.content == origin


def test_range_and_conditional_from_the_cache(http):
    path = "/img/items/12/main.png"
    full = http.get(signed(path))
    part = http.get(signed(path), headers={"Range": "bytes=5-14"})
    assert part.status_code == 206 and part.content == full.content[5:15]
    assert part.headers["x-cache"] == "HIT"
    cond = http.get(signed(path), headers={"If-None-Match": full.headers["etag"]})
    assert cond.status_code == 304 and cond.headers["x-cache"] == "HIT"
    # A range on a miss: the node fetches the whole object and stores it.
    miss = http.get(signed("/img/items/13/main.png"), headers={"Range": "bytes=0-3"})
    assert miss.status_code == 206 and miss.content == b"\x89PNG"
    assert http.get(signed("/img/items/13/main.png")).headers["x-cache"] == "HIT"
    head = http.head(signed(path))
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(full.content)


# -- anti-leech ------------------------------------------------------------------------------
def test_signed_urls_checked_at_the_edge(http):
    path = "/img/items/14/main.png"
    assert http.get(f"http://{EDGE}{path}").status_code == 403
    assert http.get(signed(path, secret="wrong")).status_code == 403
    assert http.get(signed(path, ttl=-10)).status_code == 410
    assert http.get(signed(path).replace("md5=", "md5=x")).status_code == 403
    assert http.get(f"http://{EDGE}{path}?md5=%%%&expires=1").status_code == 403
    assert http.get(signed("/img/items/15/main.png").replace("/15/", "/14/")).status_code == 403
    now = int(time.time())
    good = sign_type_a(path, now, TYPE_A_KEY, rand="r4nd", uid="42")
    assert http.get(f"http://{EDGE}{path}?auth_key={good}").status_code == 200
    stale = sign_type_a(path, now - 3600, TYPE_A_KEY)
    assert http.get(f"http://{EDGE}{path}?auth_key={stale}").status_code == 410
    assert http.get(f"http://{EDGE}{path}?auth_key=1-2-3").status_code == 403
    # Every URL is signed differently, the object is one: the second signature is a HIT.
    assert http.get(signed(path, ttl=999)).headers["x-cache"] == "HIT"


def test_referer_allow_list(http):
    url = signed("/img/items/16/main.png")
    assert http.get(url, headers={"Referer": "https://www.shop.example/item/16"}).status_code == 200
    assert http.get(url, headers={"Referer": "https://shop.example/"}).status_code == 200
    assert http.get(url, headers={"Referer": "https://leech.example/"}).status_code == 403
    assert (
        http.get(url, headers={"Referer": "https://shop.example.leech.example/"}).status_code == 403
    )
    assert http.get(url).status_code == 200  # empty Referer allowed (D11_CDN_EMPTY_REFERER)


def test_nginx_secure_link_interop(http, tmp_path):
    """Real nginx with ngx_http_secure_link_module and the same secret: it accepts our
    signer's URL, and our edge accepts a URL signed with openssl as nginx's docs do."""
    from bench.peers import real_nginx

    conf = f"""
    worker_processes 1;
    events {{ worker_connections 64; }}
    http {{
        server {{
            listen 127.30.9.20:8000;
            location /img/ {{
                secure_link $arg_md5,$arg_expires;
                secure_link_md5 "$secure_link_expires$uri {SECRET}";
                if ($secure_link = "") {{ return 403; }}
                if ($secure_link = "0") {{ return 410; }}
                return 200 "ok";
            }}
        }}
    }}
    """
    path = "/img/items/17/main.png"
    with real_nginx(conf, "127.30.9.20:8000"):
        ours = sign_secure_link(path, int(time.time()) + 60, SECRET)
        assert http.get(f"http://127.30.9.20:8000{path}?{ours}").text == "ok"
        assert (
            http.get(f"http://127.30.9.20:8000{path}?md5=AAAA&expires=99999999999").status_code
            == 403
        )
        expired = sign_secure_link(path, int(time.time()) - 60, SECRET)
        assert http.get(f"http://127.30.9.20:8000{path}?{expired}").status_code == 410
    expires = int(time.time()) + 60
    digest = subprocess.run(
        f"echo -n '{expires}{path} {SECRET}' | openssl md5 -binary | openssl base64 "
        "| tr +/ -_ | tr -d =",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert http.get(f"http://{EDGE}{path}?md5={digest}&expires={expires}").status_code == 200
    assert (
        base64.urlsafe_b64decode(digest + "==")
        == hashlib.md5(f"{expires}{path} {SECRET}".encode()).digest()
    )


# -- RFC 9111 semantics against an origin that says exactly what a test asks -------------------
def test_s_maxage_wins_over_max_age(http):
    url = respond("smax", "Cache-Control: max-age=0, s-maxage=60")
    assert [http.get(url).headers["x-cache"] for _ in range(3)] == ["MISS", "HIT", "HIT"]
    assert origin_count(http, "smax") == 1


@pytest.mark.parametrize(
    "cc",
    ["no-store", "private, max-age=60", "max-age=60, no-store"],
    ids=["no-store", "private", "both"],
)
def test_never_stored(http, cc):
    count = f"never-{cc}"
    url = respond(count, f"Cache-Control: {cc}")
    assert [http.get(url).headers["x-cache"] for _ in range(3)] == ["MISS"] * 3
    assert origin_count(http, count) == 3


def test_authorization_is_not_shared(http):
    url = respond("auth", "Cache-Control: max-age=60")
    assert http.get(url, headers={"Authorization": "Bearer alice"}).headers["x-cache"] == "MISS"
    assert http.get(url, headers={"Authorization": "Bearer bob"}).headers["x-cache"] == "MISS"
    assert http.get(url).headers["x-cache"] == "MISS"  # nothing was stored for Alice or Bob
    pub = respond("auth-public", "Cache-Control: public, max-age=60")
    http.get(pub, headers={"Authorization": "Bearer alice"})
    assert http.get(pub).headers["x-cache"] == "HIT"


def test_expires_and_heuristic_freshness(http):
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 60))
    url = respond("expires", f"Expires: {later}", f"Date: {date}")
    assert [http.get(url).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    bad = respond("bad-expires", "Expires: 0")
    http.get(bad)
    assert http.get(bad).headers["x-cache"] != "HIT"  # an invalid Expires is already stale
    old = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now - 10 * 86400))
    heuristic = respond("heuristic", f"Last-Modified: {old}")
    assert [http.get(heuristic).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    no_validator = respond("no-freshness")
    assert [http.get(no_validator).headers["x-cache"] for _ in range(2)] == ["MISS", "MISS"]


def test_vary_is_a_secondary_key(http):
    url = respond("vary", "Cache-Control: max-age=60", "Vary: Accept-Language")
    zh = {"Accept-Language": "zh-CN"}
    en = {"Accept-Language": "en"}
    assert http.get(url, headers=zh).headers["x-cache"] == "MISS"
    assert http.get(url, headers=en).headers["x-cache"] == "MISS"
    assert http.get(url, headers=zh).headers["x-cache"] == "HIT"
    assert http.get(url, headers={"Accept-Language": "ZH-cn"}).headers["x-cache"] == "HIT"
    assert origin_count(http, "vary") == 2
    star = respond("vary-star", "Cache-Control: max-age=60", "Vary: *")
    assert [http.get(star).headers["x-cache"] for _ in range(2)] == ["MISS", "MISS"]


def test_revalidation_with_304_freshens(http):
    url = respond("reval", "Cache-Control: max-age=1", 'ETag: "v1"', "X-Version: 1")
    assert http.get(url).headers["x-cache"] == "MISS"
    time.sleep(1.3)
    again = http.get(url)
    assert again.headers["x-cache"] == "REVALIDATED" and again.headers["x-version"] == "1"
    assert int(again.headers["age"]) < 1
    assert http.get(url).headers["x-cache"] == "HIT"
    assert origin_count(http, "reval") == 2
    # no-cache: stored, but every use goes back to the origin.
    nc = respond("no-cache", "Cache-Control: no-cache", 'ETag: "n"')
    assert [http.get(nc).headers["x-cache"] for _ in range(2)] == ["MISS", "REVALIDATED"]


def test_expired_without_validator_fetches_anew(http):
    url = respond("expired", "Cache-Control: max-age=1")
    http.get(url)
    time.sleep(1.3)
    assert http.get(url).headers["x-cache"] == "EXPIRED"


def test_stale_while_revalidate(http):
    url = respond("swr", "Cache-Control: max-age=1, stale-while-revalidate=30", 'ETag: "s"')
    http.get(url)
    time.sleep(1.3)
    assert http.get(url).headers["x-cache"] == "STALE"
    deadline = time.monotonic() + 5
    while origin_count(http, "swr") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert origin_count(http, "swr") == 2  # refreshed in the background
    assert http.get(url).headers["x-cache"] == "HIT"


def test_stale_if_error_and_plain_errors(http):
    url = respond("sie", "Cache-Control: max-age=1, stale-if-error=60", fail_after="1")
    first = http.get(url)
    time.sleep(1.3)
    stale = http.get(url)
    assert stale.status_code == 200 and stale.headers["x-cache"] == "STALE"
    assert stale.content == first.content
    plain = respond("no-sie", "Cache-Control: max-age=1", fail_after="1")
    http.get(plain)
    time.sleep(1.3)
    assert http.get(plain).status_code == 500


# -- to the letter, on every tier: RFC 9111 §4.4, §5.1, §5.3, §4.1, §3.1, RFC 9213 ------------
tier = pytest.mark.parametrize("node_at", list(TIERS.values()), ids=list(TIERS))


def _count(node_at: str, name: str) -> str:
    return f"{name}@{node_at}"


@tier
def test_unsafe_methods_pass_through_and_invalidate_the_target(http, node_at):
    count = _count(node_at, "unsafe")
    url = respond(count, "Cache-Control: max-age=60", at=node_at)
    assert [http.get(url).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    posted = http.post(url, content=b"order=1")
    assert posted.status_code == 200 and posted.headers["x-cache"] == "PASS"
    assert http.get(url).headers["x-cache"] == "MISS"  # §4.4: invalidated by the POST
    assert origin_count(http, count) == 3
    for method in ("PUT", "DELETE", "PATCH", "M-SEARCH"):
        assert http.get(url).headers["x-cache"] == "HIT"
        r = http.request(method, url)
        assert r.status_code == 200 and r.headers["x-cache"] == "PASS", method
        assert http.get(url).headers["x-cache"] == "MISS", method  # invalidated again
    before = origin_count(http, count)
    for _ in range(2):  # an unsafe method's answer is never stored
        assert http.request("M-SEARCH", url).headers["x-cache"] == "PASS"
    assert origin_count(http, count) == before + 2


@tier
def test_location_and_content_location_on_the_same_host_are_invalidated(http, node_at):
    stored = [respond(_count(node_at, f"loc-{n}"), "Cache-Control: max-age=60", at=node_at)
              for n in range(4)]  # fmt: skip
    for url in stored:
        http.get(url)
        assert http.get(url).headers["x-cache"] == "HIT"
    paths = [url.split(node_at, 1)[1] for url in stored]
    action = respond(
        _count(node_at, "loc-post"), f"Location: {paths[0]}",
        f"Content-Location: http://{node_at}{paths[1]}",
        at=node_at, status="201",
    )  # fmt: skip
    assert http.post(action).status_code == 201
    assert http.get(stored[0]).headers["x-cache"] == "MISS"
    assert http.get(stored[1]).headers["x-cache"] == "MISS"
    # Another host's URI is not this site's to evict, and an error answer evicts nothing.
    elsewhere = respond(_count(node_at, "loc-other"), f"Location: http://elsewhere.example{paths[2]}",
                        at=node_at, status="201")  # fmt: skip
    http.post(elsewhere)
    assert http.get(stored[2]).headers["x-cache"] == "HIT"
    failed = respond(_count(node_at, "loc-fail"), f"Location: {paths[3]}", at=node_at,
                     status="500")  # fmt: skip
    assert http.post(failed).status_code == 500
    assert http.get(stored[3]).headers["x-cache"] == "HIT"


INVALID_EXPIRES = {
    "utc": "{day}, {d} {mon} {y} 02:01:18 UTC",
    "two-digit-year": "{day}, {d} {mon} 50 02:01:18 GMT",
    "no-comma": "{day} {d} {mon} {y} 02:01:18 GMT",
    "extra-spaces": "{day}, {d}  {mon}  {y} 02:01:18 GMT",
    "dashes": "{day}, {d}-{mon}-{y} 02:01:18 GMT",
    "periods": "{day}, {d} {mon} {y} 02.01.18 GMT",
    "one-digit-hour": "{day}, {d} {mon} {y} 2:01:18 GMT",
}


@tier
@pytest.mark.parametrize("form", [*INVALID_EXPIRES, "two-lines"])
def test_an_invalid_expires_is_stale(http, node_at, form):
    future = time.gmtime(time.time() + 30 * 86400)
    fields = {"day": time.strftime("%a", future), "d": time.strftime("%d", future),
              "mon": time.strftime("%b", future), "y": time.strftime("%Y", future)}  # fmt: skip
    if form == "two-lines":
        good = time.strftime("%a, %d %b %Y %H:%M:%S GMT", future)
        headers = [f"Expires: {good}", f"Expires: {good}"]
    else:
        headers = [f"Expires: {INVALID_EXPIRES[form].format(**fields)}"]
    url = respond(_count(node_at, f"expires-{form}"), *headers, at=node_at)
    assert [http.get(url).headers["x-cache"] for _ in range(2)] == ["MISS", "MISS"]


@tier
@pytest.mark.parametrize("age", ["old, 0", "7200, 0", "abc"])
def test_an_age_that_is_not_one_number_is_stale(http, node_at, age):
    url = respond(_count(node_at, f"age-{age}"), "Cache-Control: max-age=3600", f"Age: {age}",
                  at=node_at)  # fmt: skip
    assert http.get(url).headers["x-cache"] == "MISS"
    assert http.get(url).headers["x-cache"] != "HIT"


@tier
@pytest.mark.parametrize("directive", ["must-revalidate", "immutable"])
def test_once_stale_it_is_revalidated_never_served_stale(http, node_at, directive):
    # Two seconds: Date has a one-second grain, so a one-second life may be over at once.
    cc = f"Cache-Control: max-age=2, {directive}, stale-while-revalidate=30, stale-if-error=60"
    fine = respond(_count(node_at, f"mr-{directive}"), cc, 'ETag: "m"', at=node_at)
    assert http.get(fine).headers["x-cache"] == "MISS"
    assert http.get(fine).headers["x-cache"] == "HIT"  # fresh: reused as it is
    failing = respond(_count(node_at, f"mr-fail-{directive}"), cc, 'ETag: "m"', at=node_at,
                      fail_after="1")  # fmt: skip
    assert http.get(failing).status_code == 200
    time.sleep(2.3)
    assert http.get(fine).headers["x-cache"] == "REVALIDATED"  # not STALE, whatever swr says
    broken = http.get(failing)  # the origin fails now: an error, not the stale copy
    assert broken.status_code == 500 and broken.headers.get("x-cache") != "STALE"


@tier
@pytest.mark.parametrize(
    "vary",
    [["*, *"], [", *"], ["*, Foo"], ["Foo, *"], ["Foo", "*"]],
    ids=["star-star", "comma-star", "star-foo", "foo-star", "two-lines"],
)
def test_vary_star_in_any_form_is_never_reused(http, node_at, vary):
    url = respond(_count(node_at, f"vary-{vary}"), "Cache-Control: max-age=60",
                  *(f"Vary: {v}" for v in vary), at=node_at)  # fmt: skip
    assert [http.get(url).headers["x-cache"] for _ in range(2)] == ["MISS", "MISS"]


@tier
def test_headers_listed_in_connection_are_not_stored(http, node_at):
    url = respond(_count(node_at, "conn"), "Cache-Control: max-age=60", "Connection: X-Secret",
                  "X-Secret: per-connection", "X-Kept: yes", at=node_at)  # fmt: skip
    first, second = http.get(url), http.get(url)
    assert second.headers["x-cache"] == "HIT"
    for r in (first, second):
        assert "x-secret" not in r.headers and r.headers["x-kept"] == "yes"


@tier
def test_cdn_cache_control_is_obeyed_over_cache_control(http, node_at):
    short = respond(_count(node_at, "cdncc-short"), "Cache-Control: max-age=3600",
                    "CDN-Cache-Control: max-age=1", at=node_at)  # fmt: skip
    assert [http.get(short).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    time.sleep(1.3)
    assert http.get(short).headers["x-cache"] != "HIT"  # the CDN's one second, not an hour
    stored = respond(_count(node_at, "cdncc-nostore"), "Cache-Control: no-store",
                     "CDN-Cache-Control: max-age=60", at=node_at)  # fmt: skip
    assert [http.get(stored).headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    for value in ("private", "no-store"):
        kept_out = respond(_count(node_at, f"cdncc-{value}"), "Cache-Control: max-age=60",
                           f"CDN-Cache-Control: {value}", at=node_at)  # fmt: skip
        assert [http.get(kept_out).headers["x-cache"] for _ in range(2)] == ["MISS", "MISS"]
    no_cache = respond(_count(node_at, "cdncc-nocache"), "Cache-Control: max-age=60",
                       "CDN-Cache-Control: no-cache", 'ETag: "c"', at=node_at)  # fmt: skip
    assert [http.get(no_cache).headers["x-cache"] for _ in range(2)] == ["MISS", "REVALIDATED"]


def test_interim_responses_and_chunked_framing_are_not_stored(chain):
    request = b"GET /early HTTP/1.1\r\nHost: img.shop.example\r\nConnection: close\r\n\r\n"
    first, second = raw(RAW_NODE, request), raw(RAW_NODE, request)
    for answer in (first, second):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head  # never the 103
        assert b"transfer-encoding" not in head.lower() and body == b"hello"
    assert b"X-Cache: MISS" in first and b"X-Cache: HIT" in second


def test_a_read_only_edge_refuses_other_methods(http):
    r = http.post(signed("/img/items/1/thumb.png"), content=b"x")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_origin_gives_the_cdn_a_day_and_browsers_five_minutes(http):
    r = http.get(f"http://{ORIGIN}/img/items/9/thumb.png")
    assert "max-age=86400" in r.headers["cdn-cache-control"]
    assert "max-age=300" in r.headers["cache-control"]
    through = http.get(
        signed("/img/items/9/thumb.png"), headers={"Referer": "https://shop.example/"}
    )
    assert through.status_code == 200 and "max-age=300" in through.headers["cache-control"]


def test_request_collapsing(http, chain):
    url = respond("collapse", "Cache-Control: max-age=60", delay="400")

    async def stampede() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as session:

            async def one():
                async with session.get(url) as r:
                    await r.read()
                    return r.status, r.headers["X-Cache"]

            return await asyncio.gather(*(one() for _ in range(50)))

    results = asyncio.run(stampede())
    assert all(status == 200 for status, _ in results)
    assert origin_count(http, "collapse") == 1
    assert [c for _, c in results].count("MISS") == 1


def test_parent_down_is_bounded(chain):
    run = chain
    silent = socket.socket()
    silent.bind(("127.30.9.30", 8000))
    silent.listen(16)  # accepts connections, never answers
    try:
        with (
            node("127.30.9.31:8000", run, "to-dead", "center", "127.30.9.99:8000"),
            node("127.30.9.32:8000", run, "to-silent", "center", "127.30.9.30:8000"),
            httpx.Client(timeout=10) as http,
        ):
            started = time.monotonic()
            assert http.get("http://127.30.9.31:8000/x").status_code == 502
            assert time.monotonic() - started < 3
            started = time.monotonic()
            assert http.get("http://127.30.9.32:8000/x").status_code == 504
            assert time.monotonic() - started < 4
    finally:
        silent.close()


# -- operations ------------------------------------------------------------------------------
def test_purge_prefetch_stats(http):
    path = "/img/items/21/main.png"
    http.get(signed(path))
    assert http.get(signed(path)).headers["x-cache"] == "HIT"
    assert http.post(f"http://{EDGE}/_cdn/purge", json={"urls": [path]}).status_code == 401
    purged = http.post(f"http://{EDGE}/_cdn/purge", json={"urls": [path]}, headers=ADMIN).json()
    assert purged["purged"] == 1 and purged["parent"]["purged"] == 1
    assert purged["parent"]["parent"]["purged"] == 1  # cascaded up to the centre
    assert http.get(signed(path)).headers["x-cache-chain"] == "edge=MISS, region=MISS, center=MISS"
    # Prefix purge, here on the edge alone.
    http.get(signed("/img/items/22/main.png"))
    http.get(signed("/img/items/22/thumb.png"))
    by_prefix = http.post(f"http://{EDGE}/_cdn/purge", headers=ADMIN,
                          json={"prefix": "/img/items/22/", "cascade": False}).json()  # fmt: skip
    assert by_prefix["purged"] == 2 and "parent" not in by_prefix
    assert (
        http.get(signed("/img/items/22/main.png")).headers["x-cache-chain"]
        == "edge=MISS, region=HIT"
    )
    # Prefetch before 00:00: the first phone's request is a hit.
    hot = ["/img/items/1/main.png", "/img/items/1/thumb.png"]
    warm = http.post(f"http://{EDGE}/_cdn/prefetch", json={"urls": hot}, headers=ADMIN).json()
    assert set(warm["prefetched"].values()) <= {"MISS", "HIT"}
    assert all(http.get(signed(p)).headers["x-cache"] == "HIT" for p in hot)
    stats = http.get(f"http://{EDGE}/_cdn/stats").json()
    assert stats["tier"] == "edge" and stats["hit"] >= 3 and stats["miss"] >= 3
    assert 0 < stats["hit_ratio"] < 1 and stats["bytes_served"] > 100_000
    assert stats["refused"] >= 1 and stats["objects"] >= 3
    load = http.get(f"http://{EDGE}/_cdn/load").json()
    assert load["healthy"] is True and load["requests_per_s"] >= 0 and 0 <= load["load"] <= 1


def test_operations_bad_input(http):
    assert http.post(f"http://{EDGE}/_cdn/purge", content=b"{", headers=ADMIN).status_code == 400
    assert (
        http.post(f"http://{EDGE}/_cdn/purge", json={"urls": "x"}, headers=ADMIN).status_code == 400
    )
    assert (
        http.post(f"http://{EDGE}/_cdn/purge", json={"prefix": "x"}, headers=ADMIN).status_code
        == 400
    )
    assert http.post(f"http://{EDGE}/_cdn/purge", json=[], headers=ADMIN).status_code == 400
    assert http.get(f"http://{EDGE}/_cdn/nothing").status_code == 404
    assert http.get(f"http://{EDGE}/_cdn/purge").status_code == 405


def test_bad_requests(chain):
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert raw(EDGE, huge).split(b" ")[1] in (b"400", b"431")
    assert raw(EDGE, b"BREW /pot HTTP/1.1\r\n\r\n").split(b" ")[1] in (b"400", b"405")
    assert raw(EDGE, b"\x16\x03\x01\x00garbage\r\n\r\n").split(b" ")[1] == b"400"
    post = raw(EDGE, b"POST /img/items/1/main.png HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert post.split(b" ")[1] == b"405" and b"Allow: GET, HEAD" in post
    # Still serving after all that.
    with httpx.Client() as http:
        assert http.get(signed("/img/items/1/thumb.png")).status_code == 200


def test_memory_spills_to_disk_and_disk_survives_restart(chain, http):
    run = chain
    address = "127.30.9.40:8000"
    small = {"D11_CDN_MEMORY_MB": "1", "D11_CDN_DISK_MB": "2"}
    paths = [f"/img/items/{n}/main.png" for n in range(100, 140)]  # ~4 MB
    truth = {p: http.get(f"http://{ORIGIN}{p}").content for p in paths}
    with node(address, run, "tiny", "center", ORIGIN, **small):
        for p in paths:
            assert http.get(f"http://{address}{p}").headers["x-cache"] == "MISS"
        stats = http.get(f"http://{address}/_cdn/stats").json()
        assert stats["memory_bytes"] <= 1024 * 1024 and stats["disk_bytes"] <= 2 * 1024 * 1024
        assert stats["evictions"] > 0 and stats["disk_bytes"] > 0
        # The most recent ones are in memory, some older ones on disk, the oldest gone.
        outcomes = {}
        for p in reversed(paths):
            r = http.get(f"http://{address}{p}")
            assert r.content == truth[p]
            outcomes[p] = r.headers["x-cache"]
        assert outcomes[paths[-1]] == "HIT"
        assert outcomes[paths[0]] == "MISS"
        time.sleep(0.5)  # let the spills reach the disk
        before = http.get(f"http://{address}/_cdn/stats").json()["disk_bytes"]
    assert before > 0
    with node(address, run, "tiny", "center", ORIGIN, **small):
        stats = http.get(f"http://{address}/_cdn/stats").json()
        assert stats["disk_bytes"] == before
        hits = [p for p in paths if http.get(f"http://{address}{p}").headers["x-cache"] == "HIT"]
        assert hits, "nothing on disk survived the restart"
        assert all(http.get(f"http://{address}{p}").content == truth[p] for p in hits)


def test_fuzzed_requests_do_not_crash(chain):
    import random

    rng = random.Random(11)
    for _ in range(300):
        blob = rng.randbytes(rng.randint(1, 300))
        if rng.random() < 0.5:
            blob = b"GET /img/" + blob + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        with contextlib.suppress(OSError):
            raw(EDGE, blob + b"\r\n\r\n")
    wait_port(EDGE)
    with httpx.Client() as http:
        assert http.get(signed("/img/items/2/thumb.png")).status_code == 200


# -- the stack's CDN -------------------------------------------------------------------------
def test_controller_signed_urls_load_from_both_edges(stack):
    """The controller hands out image URLs signed for the edges; each edge serves them
    through its region and the centre from the origin, byte for byte."""
    with httpx.Client(timeout=10) as client:
        item = client.get(stack.url("controller-1", "/api/items/5")).json()
        url = httpx.URL(item["images"][0])
        assert url.host == "img.shop.example" and "md5=" in str(url)
        origin = client.get(stack.url("cdn-origin", url.path)).content
        for edge, region in (
            ("cdn-edge-east", "cdn-region-east"),
            ("cdn-edge-north", "cdn-region-north"),
        ):
            at_edge = url.copy_with(host=stack.topology.host(edge).address)
            first = client.get(at_edge, headers={"Host": "img.shop.example"})
            assert first.status_code == 200 and first.content == origin
            assert first.headers["x-cache-chain"].startswith(f"{edge}=MISS, {region}=MISS")
            again = client.get(at_edge, headers={"Host": "img.shop.example"})
            assert again.headers["x-cache"] == "HIT"
        unsigned = url.copy_with(host=stack.topology.host("cdn-edge-east").address, query=None)
        assert client.get(unsigned).status_code == 403
        stats = client.get(stack.url("cdn-center", "/_cdn/stats")).json()
        assert stats["tier"] == "center" and stats["requests"] >= 2


def test_a_miss_is_traced_tier_by_tier(stack):
    """A traced request for a purged object: the edge's span continues the caller's trace,
    and each tier's span is the child of the fetch the tier below made."""
    from tests.conftest import wait_for

    with httpx.Client(timeout=10) as client:
        item = client.get(stack.url("controller-1", "/api/items/250")).json()
        url = httpx.URL(item["images"][1])
        edge = stack.topology.host("cdn-edge-east").address
        purge = client.post(f"http://{edge}/_cdn/purge", json={"urls": [url.path]},
                            headers={"X-Admin-Token": "double-11-lab-admin"})  # fmt: skip
        assert purge.status_code == 200
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        traceparent = f"00-{trace_id}-{parent}-01"
        r = client.get(
            url.copy_with(host=edge),
            headers={"Host": "img.shop.example", "traceparent": traceparent},
        )
        assert r.status_code == 200 and r.headers["x-cache"] == "MISS"

        def spans():
            got = client.get(stack.url("collector", f"/api/traces/{trace_id}"))
            found = got.json()["spans"] if got.status_code == 200 else []
            # Every tier's spans: each node exports on its own schedule.
            tiers = {"cdn-edge-east", "cdn-region-east", "cdn-center", "cdn-origin"}
            return found if {s["service"] for s in found} >= tiers else None

        found = wait_for(spans, timeout=10, what="the CDN trace")
    by_id = {s["span_id"]: s for s in found}
    server = {s["service"]: s for s in found if s["kind"] == "SERVER"}
    assert server["cdn-edge-east"]["parent_span_id"] == parent
    for tier, below in (("cdn-region-east", "cdn-edge-east"), ("cdn-center", "cdn-region-east"),
                        ("cdn-origin", "cdn-center")):  # fmt: skip
        fetch = by_id[server[tier]["parent_span_id"]]
        assert fetch["service"] == below and fetch["kind"] == "CLIENT", (tier, fetch)
