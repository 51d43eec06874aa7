"""The service registry over plain HTTP, and discovery as the controller sees it."""

from __future__ import annotations

import secrets
import time

import pytest

from tests.conftest import Stack, wait_for


@pytest.fixture(scope="module")
def base(stack: Stack) -> str:
    return stack.url("registry")


def test_order_service_registered_itself(base, http, stack: Stack):
    instances = http.get(f"{base}/v1/services/order-grpc").json()["instances"]
    expected = {h.endpoint for h in stack.topology.by_role("order-grpc")}
    assert len(expected) >= 2, "every order wire runs two instances or more"
    assert {i["endpoint"] for i in instances} == expected
    assert {i["metadata"]["role"] for i in instances} == {"order-grpc"}


def test_register_lookup_304_deregister(base, http):
    service = f"svc-{secrets.token_hex(3)}"
    url = f"{base}/v1/services/{service}/instances/a1"
    r = http.put(url, json={"address": "127.10.9.1", "port": 9000, "metadata": {"v": "1"}})
    assert r.status_code == 200 and r.json()["lease_seconds"] > 0
    listed = http.get(f"{base}/v1/services/{service}")
    assert [i["endpoint"] for i in listed.json()["instances"]] == ["127.10.9.1:9000"]
    etag = listed.headers["ETag"]
    assert (
        http.get(f"{base}/v1/services/{service}", headers={"If-None-Match": etag}).status_code
        == 304
    )
    assert http.put(url + "/heartbeat").status_code == 200
    assert http.delete(url).status_code == 204
    assert http.get(f"{base}/v1/services/{service}").json()["instances"] == []
    assert http.put(url + "/heartbeat").status_code == 404  # tells the instance to re-register


def test_an_instance_without_heartbeats_is_evicted(base, http):
    service = f"svc-{secrets.token_hex(3)}"
    http.put(
        f"{base}/v1/services/{service}/instances/gone", json={"address": "127.1.1.1", "port": 1}
    )
    started = time.monotonic()
    wait_for(
        lambda: not http.get(f"{base}/v1/services/{service}").json()["instances"],
        timeout=10,
        what="the lease to run out",
    )
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/services/Bad Name/instances/x", {"address": "a", "port": 1}),
        ("/v1/services/s/instances/x", {"address": "a", "port": 70000}),
        ("/v1/services/s/instances/x", {"address": "a", "port": True}),
        ("/v1/services/s/instances/x", {"address": 5, "port": 1}),
        ("/v1/services/s/instances/x", {"port": 1}),
        ("/v1/services/s/instances/x", {"address": "a", "port": 1, "metadata": {"k": 1}}),
    ],
)
def test_malformed_registrations_are_400(base, http, path, body):
    assert http.put(f"{base}{path}", json=body).status_code in (400, 404)
    assert http.put(f"{base}/v1/services/s/instances/x", content=b"{nope").status_code == 400
