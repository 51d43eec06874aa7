"""Service registry (role ``registry``): Eureka-style registration with leases, over HTTP.

Instances register, renew their lease with heartbeats and deregister on a clean shutdown;
an instance whose lease runs out (it died, or its network did) is evicted, so callers stop
seeing it within ``D11_LEASE_SECONDS``. State is in memory on purpose: after a registry
restart, the next heartbeat of every instance gets 404 and re-registers it.

    PUT    /v1/services/{service}/instances/{id}            register (JSON body), or renew
    PUT    /v1/services/{service}/instances/{id}/heartbeat  renew; 404 = register again
    DELETE /v1/services/{service}/instances/{id}            deregister
    GET    /v1/services/{service}                           live instances (ETag, 304)
    GET    /v1/services                                     every service and instance

``python -m rpc.registry``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from infra.http import HttpServer, make_app
from infra.service import Component, Context, run

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_INSTANCES = 1000


@dataclass
class Instance:
    service: str
    instance_id: str
    address: str
    port: int
    metadata: dict[str, str] = field(default_factory=dict)
    registered_at: float = 0.0
    lease_until: float = 0.0

    def public(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("lease_until")
        body["endpoint"] = f"{self.address}:{self.port}"
        return body


class Registry:
    """The table of instances. ``clock`` is injectable so tests replay exact timings."""

    def __init__(self, lease_seconds: float, clock=time.monotonic) -> None:
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.services: dict[str, dict[str, Instance]] = {}

    def register(self, instance: Instance) -> Instance:
        table = self.services.setdefault(instance.service, {})
        if (
            instance.instance_id not in table
            and sum(map(len, self.services.values())) >= MAX_INSTANCES
        ):
            raise web.HTTPInsufficientStorage(reason="registry full")
        now = self.clock()
        previous = table.get(instance.instance_id)
        instance.registered_at = previous.registered_at if previous else time.time()
        instance.lease_until = now + self.lease_seconds
        table[instance.instance_id] = instance
        return instance

    def renew(self, service: str, instance_id: str) -> Instance | None:
        self.evict()
        instance = self.services.get(service, {}).get(instance_id)
        if instance is not None:
            instance.lease_until = self.clock() + self.lease_seconds
        return instance

    def remove(self, service: str, instance_id: str) -> bool:
        return self.services.get(service, {}).pop(instance_id, None) is not None

    def evict(self) -> None:
        now = self.clock()
        for table in self.services.values():
            for instance_id in [i for i, inst in table.items() if inst.lease_until < now]:
                del table[instance_id]

    def live(self, service: str) -> list[Instance]:
        self.evict()
        return sorted(self.services.get(service, {}).values(), key=lambda i: i.instance_id)


def _name(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    if not NAME.match(value):
        raise web.HTTPBadRequest(reason=f"bad {key}")
    return value


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def routes(registry: Registry) -> web.RouteTableDef:
    r = web.RouteTableDef()
    base = "/v1/services/{service}/instances/{instance_id}"

    @r.put(base)
    async def register(request: web.Request) -> web.Response:
        service, instance_id = _name(request, "service"), _name(request, "instance_id")
        try:
            body = json.loads(await request.read())
            address, port = body["address"], body["port"]
            metadata = body.get("metadata", {})
            if (
                not isinstance(address, str)
                or not 0 < len(address) <= 253
                or type(port) is not int
                or not 0 < port < 65536
                or not isinstance(metadata, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return _error(400, "body: {address: string, port: 1-65535, metadata?: {str: str}}")
        instance = registry.register(Instance(service, instance_id, address, port, metadata))
        return web.json_response({**instance.public(), "lease_seconds": registry.lease_seconds})

    @r.put(base + "/heartbeat")
    async def heartbeat(request: web.Request) -> web.Response:
        instance = registry.renew(_name(request, "service"), _name(request, "instance_id"))
        if instance is None:
            return _error(404, "unknown instance: register again")
        return web.json_response({"lease_seconds": registry.lease_seconds})

    @r.delete(base)
    async def deregister(request: web.Request) -> web.Response:
        if not registry.remove(_name(request, "service"), _name(request, "instance_id")):
            return _error(404, "unknown instance")
        return web.Response(status=204)

    @r.get("/v1/services/{service}")
    async def lookup(request: web.Request) -> web.Response:
        service = _name(request, "service")
        body = {"service": service, "instances": [i.public() for i in registry.live(service)]}
        # The ETag covers who is there, not lease times, so polling callers mostly get 304.
        digest = hashlib.sha256(
            json.dumps([(i["instance_id"], i["endpoint"]) for i in body["instances"]]).encode()
        ).hexdigest()[:24]
        etag = f'"{digest}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response(body, headers={"ETag": etag})

    @r.get("/v1/services")
    async def everything(request: web.Request) -> web.Response:
        registry.evict()
        return web.json_response(
            {s: [i.public() for i in registry.live(s)] for s in sorted(registry.services)}
        )

    return r


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    registry = Registry(lease_seconds=s.get_float("LEASE_SECONDS", 3.0))
    app = make_app(ctx, client_max_size=16 * 1024)
    app.add_routes(routes(registry))
    return [HttpServer(app, s.address, s.port)]


def main() -> None:
    run(build, name="registry", role="registry", port=8761)


if __name__ == "__main__":
    main()
