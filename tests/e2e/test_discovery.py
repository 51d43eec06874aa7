"""Discovery end to end: a second order-grpc instance registers and takes traffic; once
it is killed it stops getting traffic within a few seconds."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time

from infra.procs import PidDir
from tests.conftest import Stack, d11, one_host_env, set_stock, wait_for


def test_a_new_instance_takes_traffic_and_a_dead_one_stops_getting_it(stack: Stack, http, tmp_path):
    set_stock(stack, 13, 100_000)
    main = stack.topology.host("order-grpc")
    env = one_host_env(
        tmp_path,
        {
            "name": "order-grpc-extra",
            "role": "order-grpc",
            "address": "127.10.9.33",
            "port": main.port,
            "metrics_port": main.metrics_port,
            "protocol": "grpc",
            "module": main.module,
            # Same store, same saga participants, same registry as the main stack.
            "env": {
                **stack.topology.environment(main),
                "D11_ORDER_DB": str(stack.run_dir / "data" / "orders" / "orders.sqlite3"),
            },
        },
    )
    d11("up", "--detach", env=env)
    registry = stack.url("registry", "/v1/services/order-grpc")
    base = len(stack.topology.by_role("order-grpc"))
    try:
        wait_for(lambda: len(http.get(registry).json()["instances"]) == base + 1,
                 what="registration")  # fmt: skip
        time.sleep(1.5)  # controllers poll the registry every second

        def place() -> int:
            r = http.post(
                stack.url("gateway", "/api/orders"),
                json={"user_id": "d", "lines": [{"item_id": 13, "quantity": 1}]},
                headers={"Idempotency-Key": secrets.token_hex(8)},
            )
            return r.status_code

        # The new instance served some of them: its own Prometheus counter says so.
        metrics = f"http://127.10.9.33:{main.metrics_port}/metrics"
        statuses = [place() for _ in range(20)]
        assert statuses == [201] * 20
        assert 'operation="PlaceOrder",outcome="OK"' in http.get(metrics).text

        # Its supervisor first, or it would bring the instance straight back.
        supervisor = json.loads((tmp_path / "run" / "supervisor" / "pid.json").read_text())
        os.kill(supervisor["pid"], signal.SIGKILL)
        record = PidDir(tmp_path / "run" / "pids").read_all()["order-grpc-extra"]
        os.killpg(record.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: len(http.get(registry).json()["instances"]) == base,
            timeout=10,
            what="eviction of the dead instance",
        )
        assert time.monotonic() - killed_at < 5
        time.sleep(1.5)
        # After eviction (and the controllers' next poll) every order succeeds again.
        assert [place() for _ in range(10)] == [201] * 10
    finally:
        d11("down", env=env, check=False)
