"""The gateway, driven over plain HTTP: request ids, forwarding headers, round robin and
failover to the next upstream when a connect fails."""

from __future__ import annotations

import secrets
from collections import Counter

from tests.conftest import Stack, d11, one_host_env, set_stock


def test_request_id_is_generated_or_kept(stack: Stack, http):
    url = stack.url("gateway", "/api/orders/none")
    generated = http.get(url).headers["X-Request-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert http.get(url, headers={"X-Request-ID": "abc123"}).headers["X-Request-ID"] == "abc123"


def test_round_robin_spreads_over_both_controllers(stack: Stack, http):
    url = stack.url("gateway", "/api/orders/none")
    seen = Counter(http.get(url).headers["X-Upstream-Addr"] for _ in range(10))
    assert set(seen) == {stack.topology.host(h).endpoint for h in ("controller-1", "controller-2")}
    assert seen.most_common(1)[0][1] == 5


def test_upstream_errors_pass_through_unchanged(stack: Stack, http):
    r = http.get(stack.url("gateway", "/api/orders/none"))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_unrouted_path_is_404(stack: Stack, http):
    assert http.get(stack.url("gateway", "/nothing-here")).status_code == 404


def test_failed_connect_moves_on_to_the_next_upstream(stack: Stack, http, tmp_path):
    # A second gateway whose first upstream has nothing listening.
    live = stack.topology.host("controller-1").endpoint
    set_stock(stack, 8, 1000)
    env = one_host_env(
        tmp_path,
        {
            "name": "gateway-failover",
            "role": "gateway",
            "address": "127.10.9.10",
            "port": 8080,
            "protocol": "http",
            "module": "gateway",
            "env": {"D11_UPSTREAMS": f"127.10.9.99:8080,{live}"},
        },
    )
    d11("up", "--detach", env=env)
    try:
        for _ in range(4):
            r = http.post(
                "http://127.10.9.10:8080/api/orders",
                json={"user_id": "f", "lines": [{"item_id": 8, "quantity": 1}]},
                headers={"Idempotency-Key": secrets.token_hex(8)},
            )
            assert r.status_code == 201, r.text
            assert r.headers["X-Upstream-Addr"] == live
    finally:
        d11("down", env=env)
