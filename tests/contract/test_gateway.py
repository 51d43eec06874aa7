"""The gateway of the running stack, with the shipped gateway.conf: request ids, balancing
over both controllers, failover, TLS with the lab CA, its span, its access log."""

from __future__ import annotations

import secrets
import ssl
import subprocess
from collections import Counter

from tests.conftest import Stack, d11, one_host_env, set_stock, wait_for
from tests.e2e.test_skeleton import place_traced


def test_request_id_is_generated_or_kept_and_forwarded(stack: Stack, http):
    url = stack.url("gateway", "/api/orders/none")
    generated = http.get(url).headers["X-Request-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert http.get(url, headers={"X-Request-ID": "abc123"}).headers["X-Request-ID"] == "abc123"


def test_round_robin_spreads_over_both_controllers(stack: Stack, http):
    url = stack.url("gateway", "/api/orders/none")
    both = {stack.topology.host(h).endpoint for h in ("controller-1", "controller-2")}
    # The gateway's probes may have seen a controller still starting: wait for both.
    wait_for(lambda: {http.get(url).headers["X-Upstream-Addr"] for _ in range(4)} == both)
    seen = Counter(http.get(url).headers["X-Upstream-Addr"] for _ in range(10))
    assert set(seen) == {stack.topology.host(h).endpoint for h in ("controller-1", "controller-2")}
    assert seen.most_common(1)[0][1] == 5


def test_upstream_errors_pass_through_unchanged(stack: Stack, http):
    r = http.get(stack.url("gateway", "/api/orders/none"))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_unrouted_path_is_the_gateway_s_own_404(stack: Stack, http):
    r = http.get(stack.url("gateway", "/nothing-here"))
    assert r.status_code == 404 and "<h1>404 Not Found</h1>" in r.text
    assert "X-Upstream-Addr" not in r.headers  # nginx adds no header for an empty value


def test_failed_connect_moves_on_to_the_next_upstream_even_for_post(stack: Stack, http, tmp_path):
    # A second gateway, shipped config, whose first controller has nothing listening.
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
            "env": {"D11_UPSTREAM_CONTROLLERS": f"127.10.9.99:8080,{live}"},
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
            assert r.headers["X-Upstream-Addr"].split(", ")[-1] == live
    finally:
        d11("down", env=env)


def test_https_with_the_lab_ca(stack: Stack):
    ca = stack.run_dir / "pki" / "ca.crt"
    gateway = stack.topology.host("gateway").address
    url = "https://api.shop.example:8443/api/items/1"
    resolve = f"api.shop.example:8443:{gateway}"
    ok = subprocess.run(
        ["curl", "-sS", "--cacert", str(ca), "--resolve", resolve, "-o", "/dev/null",
         "-w", "%{http_code} %{ssl_verify_result}", url],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert ok.stdout == "200 0", ok.stderr
    # A client that does not trust the lab CA refuses the certificate (curl exit 60).
    untrusted = subprocess.run(
        ["curl", "-sS", "--cacert", "/etc/ssl/certs/ca-certificates.crt", "--resolve", resolve,
         url],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert untrusted.returncode == 60, untrusted.stderr
    # The certificate names the shop and is issued by the lab CA.
    import socket

    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((gateway, 8443), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="api.shop.example") as tls,
    ):
        cert = tls.getpeercert()
        assert ("DNS", "api.shop.example") in cert["subjectAltName"]
        assert dict(x[0] for x in cert["issuer"])["commonName"] == "Double-11 Lab CA"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_gateway_span_records_route_upstream_and_attempts(stack: Stack, http):
    spans = place_traced(stack, http, "grpc")["spans"]
    (server,) = [s for s in spans if s["service"] == "gateway" and s["kind"] == "SERVER"]
    attrs = server["attributes"]
    assert attrs["http.route"] == "= /api/orders"
    assert attrs["d11.upstream.attempts"] == 1
    assert attrs["d11.upstream.address"] in {
        stack.topology.host(h).endpoint for h in ("controller-1", "controller-2")
    }
    proxies = [s for s in spans if s["service"] == "gateway" and s["kind"] == "CLIENT"]
    assert proxies and proxies[0]["attributes"]["d11.upstream.name"] == "controllers"


def test_rate_limit_decision_is_on_the_span_and_over_limit_is_429(stack: Stack, http):
    user = f"rl-{secrets.token_hex(4)}"
    url = stack.url("gateway", "/api/orders")
    # burst=40 nodelay at 20 r/s: 41 quick requests fit; a stampede of 80 does not.
    import asyncio

    import aiohttp

    async def stampede() -> list[int]:
        async with aiohttp.ClientSession() as s:

            async def one() -> int:
                async with s.post(url, json={}, headers={"X-User-ID": user}) as r:
                    return r.status

            return await asyncio.gather(*(one() for _ in range(80)))

    statuses = Counter(asyncio.run(stampede()))
    assert statuses[429] >= 30 and statuses[400] >= 41, statuses  # 400: the empty body
    # The decision is on the gateway's span.
    trace_id = secrets.token_hex(16)
    http.post(
        url,
        json={},
        headers={"X-User-ID": user, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    )

    def gateway_span():
        r = http.get(stack.url("collector", f"/api/traces/{trace_id}"))
        spans = r.json()["spans"] if r.status_code == 200 else []
        return next((x for x in spans if x["service"] == "gateway" and x["kind"] == "SERVER"), None)

    attrs = wait_for(gateway_span, what="the gateway span")["attributes"]
    assert attrs["d11.limit_req.zone"] == "per_user"
    assert attrs["d11.limit_req.status"] in ("PASSED", "REJECTED")


def test_access_log_uses_the_configured_format(stack: Stack, http):
    rid = secrets.token_hex(16)
    http.get(stack.url("gateway", "/api/items/2"), headers={"X-Request-ID": rid})
    log = stack.run_dir / "logs" / "gateway-access.log"

    def line():
        text = log.read_text() if log.exists() else ""
        return next((x for x in text.splitlines() if f"rid={rid}" in x), None)

    found = wait_for(line, what="the access log line")
    assert '"GET /api/items/2 HTTP/1.1" 200' in found
    assert 'us="200"' in found and "rt=0." in found and "lr=-" in found
