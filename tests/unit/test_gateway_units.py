"""The gateway's pure parts, replayed with a clock passed in: nginx's smooth weighted round
robin, the consistent-hash ring, passive health (max_fails / fail_timeout), limit_req's
leaky bucket, and the config checks, each as a table."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from gateway.balancer import Balancer
from gateway.config import ConfigError, LimitReq, LimitZone, Upstream, UpstreamServer, load
from gateway.limit import Zone


def _upstream(*weights: int, method: str = "round_robin", **kw) -> Upstream:
    servers = [UpstreamServer(f"10.0.0.{i}:80", weight=w, **kw) for i, w in enumerate(weights, 1)]
    return Upstream("u", servers, method=method)


def _sequence(balancer: Balancer, n: int) -> str:
    out = []
    for _ in range(n):
        peer = balancer.get(set())
        assert peer is not None
        out.append("abcdefgh"[int(peer.address.split(".")[3].split(":")[0]) - 1])
        balancer.free(peer, failed=False)
    return "".join(out)


@pytest.mark.parametrize(
    ("weights", "sequence"),
    [
        ((5, 1, 1), "aabacaa"),  # nginx's own example (ngx_http_upstream_round_robin.c)
        ((1, 1, 1), "abc"),
        ((2, 1), "aba"),
        ((3, 2), "ababa"),
    ],
)
def test_smooth_weighted_round_robin_is_nginx_s(weights, sequence):
    assert _sequence(Balancer(_upstream(*weights), clock=lambda: 0), len(sequence)) == sequence


def test_a_failing_peer_is_left_out_for_fail_timeout_then_tried_again():
    now = [100.0]
    balancer = Balancer(_upstream(1, 1, max_fails=2, fail_timeout=10.0), clock=lambda: now[0])
    a = next(p for p in balancer.peers if p.address.startswith("10.0.0.1"))
    for _ in range(2):
        balancer.free(a, failed=True)
    assert set(_sequence(balancer, 6)) == {"b"}  # a is out for fail_timeout
    now[0] += 11
    assert "a" in _sequence(balancer, 4)


def test_consistent_hash_moves_few_keys_when_a_peer_goes():
    servers = [UpstreamServer(f"10.0.0.{i}:80") for i in range(1, 5)]
    upstream = Upstream("u", servers, method="hash", hash_key="$k", consistent=True)
    full = Balancer(upstream, clock=lambda: 0)
    keys = [f"user-{n}" for n in range(400)]
    before = {k: full.get(set(), k).address for k in keys}
    gone = next(p for p in full.peers if p.address == "10.0.0.4:80")
    after = {k: full.get({gone}, k).address for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "10.0.0.4:80" for k in moved)  # only the lost peer's keys move
    assert 0.1 < len(moved) / len(keys) < 0.45
    assert Counter(before.values()).most_common()[-1][1] > 40  # spread over all four


@pytest.mark.parametrize(
    ("rate", "burst", "delay", "gaps_ms", "statuses"),
    [
        # 1 r/s, no burst: the second request within a second is refused
        (1.0, 0, 0, [0, 100, 1000], ["PASSED", "REJECTED", "PASSED"]),
        # burst 2, nodelay: three at once pass, the fourth is refused
        (1.0, 2, math.inf, [0, 0, 0, 0], ["PASSED", "PASSED", "PASSED", "REJECTED"]),
        # burst 2 with delay: the excess waits instead
        (1.0, 2, 0, [0, 0, 0], ["PASSED", "DELAYED", "DELAYED"]),
        # 10 r/s: a request every 100 ms never queues
        (10.0, 0, 0, [0, 100, 100, 100], ["PASSED"] * 4),
    ],
)
def test_limit_req_leaky_bucket(rate, burst, delay, gaps_ms, statuses):
    zone = Zone(LimitZone("z", "$k", rate, 1 << 20))
    limit = LimitReq("z", burst, delay)
    now, got = 1_000_000, []
    for gap in gaps_ms:
        now += gap
        got.append(zone.check(b"phone-1", limit, now).status)
    assert got == statuses
    assert zone.check(b"phone-2", limit, now).status == "PASSED"  # keys are apart


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("events {}\nhttp { server { listen 80; proxy_pas x; } }", 'unknown directive "proxy_pas"'),
        ("events {}\nhttp { listen 80; }", '"listen" directive is not allowed here'),
        ("events {}\nhttp {\n upstream u { }\n}", 'no servers are inside upstream "u"'),
        ("events {}\nhttp { server { listen 80; location / { proxy_pass http://nowhere; } } }",
         'host not found in upstream "nowhere"'),
        ("events {}\nhttp { limit_req_zone $binary_remote_addr zone=z:10m rate=fast; }",
         "rate"),
        ("events {}\nhttp { limit_req_zone $k zone=z:10m rate=1r/s; }", 'unknown "k" variable'),
    ],
)  # fmt: skip
def test_config_checks_name_the_file_and_line(tmp_path, text, message):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(conf, {}, None)
    assert message in str(caught.value) and f"{conf}:" in str(caught.value), str(caught.value)
