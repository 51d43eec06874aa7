"""Double-11 for people who prefer Locust: phones that browse, look at images on the CDN edge
and buy, through the gateway over HTTPS with the lab CA.

    ./d11 up --detach
    .venv/bin/locust -f locustfile.py --headless -u 50 -r 10 -t 60s     # or without --headless

``./d11 load`` does more (DNS by ISP and region, HTTPDNS, the GSLB's placement, the audit);
this is the same shop seen through Locust's own statistics and web UI. The stack's
addresses come from the topology, the lab CA from the run directory (``D11_RUN_DIR``).
"""

from __future__ import annotations

import random
import uuid

from locust import HttpUser, between, task

from infra import topology
from infra.launcher import run_dir
from services.wires import PROTOCOLS

TOPOLOGY = topology.load()
GATEWAY = TOPOLOGY.by_role("gateway")[0].address
EDGES = [h.address for h in TOPOLOGY.by_role("cdn-cache") if h.env.get("D11_CDN_TIER") == "edge"]
CA = str(run_dir() / "pki" / "ca.crt")
HOT_ITEM = 1


class Phone(HttpUser):
    host = f"https://{GATEWAY}:8443"
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.client.verify = CA
        self.user_id = f"locust-{uuid.uuid4().hex[:12]}"
        self.edge = random.choice(EDGES)

    @task(3)
    def browse(self) -> None:
        item = random.randint(2, 300)
        with self.client.get(
            f"/api/items/{item}", name="/api/items/[id]", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code} {r.error or ''}".strip())
                return
            images = r.json().get("images") or []
        if images:
            url = images[-1].replace("//img.shop.example", f"//{self.edge}", 1)
            self.client.get(url, name="CDN edge image", headers={"Host": "img.shop.example"})

    @task(1)
    def buy(self) -> None:
        item = HOT_ITEM if random.random() < 0.3 else random.randint(2, 300)
        body = {"user_id": self.user_id, "lines": [{"item_id": item, "quantity": 1}]}
        headers = {
            "Idempotency-Key": str(uuid.uuid4()),
            "X-Order-Protocol": random.choice(PROTOCOLS),
            "X-User-Id": self.user_id,
        }
        with self.client.post(
            "/api/orders", json=body, headers=headers, name="/api/orders", catch_response=True
        ) as r:
            if r.status_code == 409:
                r.success()  # sold out: the shop said no, correctly
                return
            if r.status_code != 201:
                r.failure(f"HTTP {r.status_code}")
                return
            order_id = r.json()["order_id"]
        self.client.get(f"/api/orders/{order_id}", name="/api/orders/[id]")
