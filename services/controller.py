"""The REST controller (role ``controller``): the shop's JSON API in front of the order
service, inventory and coupons. ``python -m services.controller``; ``/openapi.json``
describes every resource.

- catalogue reads carry live stock, signed CDN image URLs and ETags (304 on a match);
- ``POST /api/orders`` needs an ``Idempotency-Key``; the order service is chosen per request
  with ``X-Order-Protocol`` (default ``D11_ORDER_PROTOCOL``);
- errors are RFC 9457 problems; admin endpoints need ``X-Admin-Token``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from cdn.signing import sign_secure_link
from infra.config import ConfigError, Settings
from infra.http import HttpServer, make_app
from infra.service import Component, Context, run
from rpc.client import GrpcClient
from rpc.discovery import Discovery
from rpc.errors import Code, DomainError
from rpc.problems import problem, problem_middleware
from rpc.proto import coupon_pb2, coupon_pb2_grpc, inventory_pb2, inventory_pb2_grpc
from services import catalog
from services.openapi import document
from services.order_api import Line, Order, OrderApi, PlaceOrder
from services.wires import WIRES

MAX_BODY = 64 * 1024
MAX_ID = 2**31 - 1


def order_json(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "user_id": order.user_id,
        "lines": [
            {
                "item_id": ln.item_id,
                "quantity": ln.quantity,
                "unit_price_cents": ln.unit_price_cents,
            }
            for ln in order.lines
        ],
        "coupon_code": order.coupon_code or None,
        "status": order.status,
        "total_cents": order.total_cents,
        "discount_cents": order.discount_cents,
        "payable_cents": order.payable_cents,
        "created_at_ms": order.created_at_ms,
        "updated_at_ms": order.updated_at_ms,
        "reason": order.reason or None,
        "history": [{"status": h.status, "at_ms": h.at_ms, "note": h.note} for h in order.history],
    }


def _int_field(value: Any, name: str, low: int, high: int) -> int:
    # JSON Schema counts 2.0 as an integer; JSON true is not one (bool is an int in Python).
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise DomainError(Code.INVALID_ARGUMENT, f"{name} must be an integer in {low}..{high}")
    return value


ORDER_FIELDS = frozenset({"user_id", "lines", "coupon_code"})
LINE_FIELDS = frozenset({"item_id", "quantity"})


def _known_fields(obj: dict, known: frozenset[str], what: str) -> None:
    """A misspelt field is an error, not something to ignore: ``"coupon"`` for
    ``"coupon_code"`` would otherwise order without the coupon."""
    unknown = sorted(set(obj) - known)
    if unknown:
        raise DomainError(
            Code.INVALID_ARGUMENT,
            f"unknown field(s) in {what}: {', '.join(unknown)[:200]}"
            f" (known: {', '.join(sorted(known))})",
        )


def parse_place_order(body: Any, key: str) -> PlaceOrder:
    """Check the JSON shape (types, required fields); the domain checks the values."""
    if not isinstance(body, dict):
        raise DomainError(Code.INVALID_ARGUMENT, "the body must be a JSON object")
    _known_fields(body, ORDER_FIELDS, "the order")
    user, lines, coupon = body.get("user_id"), body.get("lines"), body.get("coupon_code")
    if not isinstance(user, str):
        raise DomainError(Code.INVALID_ARGUMENT, "user_id must be a string")
    if not isinstance(lines, list) or not all(isinstance(ln, dict) for ln in lines):
        raise DomainError(Code.INVALID_ARGUMENT, "lines must be a list of objects")
    if coupon is not None and not isinstance(coupon, str):
        raise DomainError(Code.INVALID_ARGUMENT, "coupon_code must be a string")
    for ln in lines:
        _known_fields(ln, LINE_FIELDS, "an order line")
    parsed = tuple(
        Line(
            item_id=_int_field(ln.get("item_id"), "item_id", 1, MAX_ID),
            quantity=_int_field(ln.get("quantity"), "quantity", 1, MAX_ID),
        )
        for ln in lines
    )
    return PlaceOrder(idempotency_key=key, user_id=user, lines=parsed, coupon_code=coupon or "")


class ImageSigner:
    """Signed CDN URLs for item images (nginx secure_link). Expiry is rounded up to a
    10-minute step so the URLs, and with them the item ETags, stay stable for a while."""

    STEP = 600

    def __init__(self, base: str, secret: str, ttl: int) -> None:
        self.base, self.secret, self.ttl = base.rstrip("/"), secret, ttl

    def url(self, path: str, now: float) -> str:
        expires = (int(now) // self.STEP + 1) * self.STEP + self.ttl
        return f"{self.base}{path}?{sign_secure_link(path, expires, self.secret)}"


class Api:
    def __init__(self, settings: Settings) -> None:
        # On Double-11 a phone waits for its order: long enough to ride out the stampede.
        timeout = self.order_timeout = settings.get_float("ORDER_TIMEOUT", 10.0)
        in_flight = settings.get_int("ORDER_MAX_IN_FLIGHT", 64)
        registry = settings.get("REGISTRY", "")
        self.discoveries: list[Discovery] = []
        self.orders: dict[str, OrderApi] = {}
        for protocol, wire in WIRES.items():
            # Instances come from the registry; a fixed address (D11_ORDER_GRPC, ...) is for
            # running without one.
            target: str | Discovery
            if registry:
                target = Discovery(registry, wire.role)
                self.discoveries.append(target)
            elif address := settings.get(f"ORDER_{protocol.upper()}", ""):
                target = address
            else:
                continue  # this protocol is not served here
            self.orders[protocol] = wire.load().Client(target, timeout, max_in_flight=in_flight)
        if not self.orders:
            raise ConfigError("set D11_REGISTRY, or D11_ORDER_GRPC / _DUBBO / _SOAP")
        self.default_protocol = settings.get("ORDER_PROTOCOL", "grpc")
        if self.default_protocol not in self.orders:
            raise ConfigError(f"D11_ORDER_PROTOCOL={self.default_protocol!r} is not served")
        self.inventory = GrpcClient(
            settings.get("INVENTORY"), inventory_pb2_grpc.InventoryServiceStub, 1.0
        )
        self.coupons = GrpcClient(settings.get("COUPON"), coupon_pb2_grpc.CouponServiceStub, 1.0)
        self.signer = ImageSigner(
            settings.get("CDN_BASE", "http://img.shop.example"),
            settings.get("CDN_SECRET", "double-11-lab-secret"),
            settings.get_int("CDN_URL_TTL", 3600),
        )
        self.admin_token = settings.get("ADMIN_TOKEN", "")

    def components(self) -> list[Component]:
        clients: list[Any] = list(self.orders.values())  # every wire's client is a component
        return [*self.discoveries, *clients, self.inventory, self.coupons]

    # -- helpers ---------------------------------------------------------------------
    def order_client(self, request: web.Request) -> OrderApi:
        protocol = request.headers.get("X-Order-Protocol", self.default_protocol).lower()
        client = self.orders.get(protocol)
        if client is None:
            served = ", ".join(sorted(self.orders))
            raise DomainError(
                Code.INVALID_ARGUMENT, f"X-Order-Protocol {protocol!r} is not one of: {served}"
            )
        return client

    async def stock(self, item_ids: list[int]) -> dict[int, int]:
        """Available stock per item; empty when inventory cannot answer (reads degrade)."""
        try:
            reply = await self.inventory.call(
                "GetStock", inventory_pb2.GetStockRequest(item_ids=item_ids), retries=1
            )
        except DomainError:
            return {}
        return {level.item_id: level.available for level in reply.items}

    def item_json(self, item: catalog.Item, stock: dict[int, int], now: float) -> dict[str, Any]:
        return {
            "item_id": item.item_id,
            "name": item.name,
            "category": item.category,
            "price_cents": item.price_cents,
            "stock": stock.get(item.item_id),
            "images": [self.signer.url(key, now) for key in item.image_keys],
        }

    def check_admin(self, request: web.Request) -> None:
        given = request.headers.get("X-Admin-Token", "")
        if not self.admin_token or not hmac.compare_digest(given, self.admin_token):
            raise web.HTTPForbidden(reason="Admin token required")


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, UnicodeDecodeError):
        raise DomainError(Code.INVALID_ARGUMENT, "the body is not valid JSON") from None


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DomainError(Code.INVALID_ARGUMENT, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise DomainError(Code.INVALID_ARGUMENT, f"{name} must be in {low}..{high}")
    return value


def with_etag(request: web.Request, body: Any) -> web.Response:
    payload = json.dumps(body, separators=(",", ":")).encode()
    etag = '"' + hashlib.sha256(payload).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    match = request.headers.get("If-None-Match", "")
    if etag in [tag.strip().removeprefix("W/") for tag in match.split(",")] or match == "*":
        return web.Response(status=304, headers=headers)
    return web.Response(body=payload, content_type="application/json", headers=headers)


def routes(api: Api) -> web.RouteTableDef:
    r = web.RouteTableDef()

    @r.get("/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document())

    @r.get("/api/items")
    async def list_items(request: web.Request) -> web.Response:
        page = _query_int(request, "page", 1, 1, 10_000)
        per_page = _query_int(request, "per_page", 20, 1, 100)
        category = request.query.get("category")
        if category is not None and category not in catalog.CATEGORIES:
            raise DomainError(Code.INVALID_ARGUMENT, f"no category {category!r}")
        chosen = [i for i in catalog.items().values() if category in (None, i.category)]
        window = chosen[(page - 1) * per_page : page * per_page]
        stock = await api.stock([i.item_id for i in window]) if window else {}
        now = time.time()
        body = {
            "items": [api.item_json(i, stock, now) for i in window],
            "page": page,
            "per_page": per_page,
            "total": len(chosen),
        }
        return with_etag(request, body)

    @r.get(r"/api/items/{item_id:\d{1,10}}")
    async def get_item(request: web.Request) -> web.Response:
        item = catalog.get(int(request.match_info["item_id"]))
        if item is None:
            raise DomainError(Code.NOT_FOUND, f"no item {request.match_info['item_id']}")
        stock = await api.stock([item.item_id])
        return with_etag(request, api.item_json(item, stock, time.time()))

    @r.post("/api/orders")
    async def place_order(request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if not 1 <= len(key) <= 128:
            return problem(
                400, "missing-idempotency-key", "Idempotency-Key header required (1-128 chars)"
            )
        client = api.order_client(request)
        command = parse_place_order(await _json_body(request), key)
        order = await client.place(command, timeout=api.order_timeout)
        return web.json_response(
            order_json(order), status=201, headers={"Location": f"/api/orders/{order.order_id}"}
        )

    @r.get("/api/orders/{order_id}")
    async def get_order(request: web.Request) -> web.Response:
        order = await api.order_client(request).get(
            request.match_info["order_id"], timeout=api.order_timeout
        )
        return web.json_response(order_json(order))

    @r.post("/api/orders/{order_id}/cancel")
    async def cancel_order(request: web.Request) -> web.Response:
        reason = ""
        if request.can_read_body:
            body = await _json_body(request)
            reason = body.get("reason", "") if isinstance(body, dict) else None
            if not isinstance(reason, str) or len(reason) > 200:
                raise DomainError(Code.INVALID_ARGUMENT, 'the body is {"reason": string ≤ 200}')
        order = await api.order_client(request).cancel(
            request.match_info["order_id"], reason, timeout=api.order_timeout
        )
        return web.json_response(order_json(order))

    @r.get("/api/users/{user_id}/orders")
    async def user_orders(request: web.Request) -> web.Response:
        limit = _query_int(request, "limit", 20, 1, 100)
        if len(request.match_info["user_id"]) > 64:
            raise DomainError(Code.INVALID_ARGUMENT, "user_id is at most 64 characters")
        found = await api.order_client(request).list(
            request.match_info["user_id"], limit, timeout=api.order_timeout
        )
        return web.json_response({"orders": [order_json(o) for o in found]})

    @r.put(r"/api/admin/items/{item_id:\d{1,10}}/stock")
    async def set_stock(request: web.Request) -> web.Response:
        api.check_admin(request)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise DomainError(Code.INVALID_ARGUMENT, 'the body is {"available": integer}')
        available = _int_field(body.get("available"), "available", 0, 10**9)
        item_id = int(request.match_info["item_id"])
        if catalog.get(item_id) is None:
            raise DomainError(Code.NOT_FOUND, f"no item {item_id}")
        level = await api.inventory.call(
            "SetStock", inventory_pb2.SetStockRequest(item_id=item_id, available=available)
        )
        return web.json_response(
            {
                "item_id": level.item_id,
                "available": level.available,
                "reserved": level.reserved,
                "sold": level.sold,
            }
        )

    @r.get(r"/api/admin/items/{item_id:\d{1,10}}/stock")
    async def get_stock_level(request: web.Request) -> web.Response:
        """The whole stock level (available, reserved, sold), for an operator's audit."""
        api.check_admin(request)
        item_id = int(request.match_info["item_id"])
        if catalog.get(item_id) is None:
            raise DomainError(Code.NOT_FOUND, f"no item {item_id}")
        reply = await api.inventory.call(
            "GetStock", inventory_pb2.GetStockRequest(item_ids=[item_id]), retries=1
        )
        (level,) = reply.items
        return web.json_response(
            {
                "item_id": level.item_id,
                "available": level.available,
                "reserved": level.reserved,
                "sold": level.sold,
            }
        )

    @r.post("/api/admin/coupons")
    async def create_coupon(request: web.Request) -> web.Response:
        api.check_admin(request)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise DomainError(Code.INVALID_ARGUMENT, "the body must be a JSON object")
        code, kind = body.get("code"), body.get("kind")
        if not isinstance(code, str) or kind not in ("FIXED", "PERCENT"):
            raise DomainError(Code.INVALID_ARGUMENT, "code (string) and kind (FIXED|PERCENT)")
        now = int(time.time() * 1000)
        big = 2**62
        coupon = coupon_pb2.Coupon(
            code=code,
            kind=coupon_pb2.Kind.Value(kind),
            value=_int_field(body.get("value"), "value", 1, big),
            min_total_cents=_int_field(body.get("min_total_cents", 0), "min_total_cents", 0, big),
            per_user_limit=_int_field(body.get("per_user_limit", 1), "per_user_limit", 1, MAX_ID),
            total_limit=_int_field(body.get("total_limit", 0), "total_limit", 0, big),
            valid_from_ms=_int_field(body.get("valid_from_ms", now), "valid_from_ms", 0, big),
            valid_until_ms=_int_field(
                body.get("valid_until_ms", now + 7 * 86_400_000), "valid_until_ms", 0, big
            ),
        )
        created = await api.coupons.call("CreateCoupon", coupon)
        return web.json_response(coupon_json(created), status=201)

    return r


def coupon_json(c: coupon_pb2.Coupon) -> dict[str, Any]:
    return {
        "code": c.code,
        "kind": coupon_pb2.Kind.Name(c.kind),
        "value": c.value,
        "min_total_cents": c.min_total_cents,
        "per_user_limit": c.per_user_limit,
        "total_limit": c.total_limit,
        "valid_from_ms": c.valid_from_ms,
        "valid_until_ms": c.valid_until_ms,
        "redeemed": c.redeemed,
    }


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    api = Api(s)
    app = make_app(ctx, client_max_size=MAX_BODY)
    app.middlewares.append(problem_middleware)
    app.add_routes(routes(api))
    return [*api.components(), HttpServer(app, s.address, s.port)]


def main() -> None:
    run(build, name="controller", role="controller", port=8080)


if __name__ == "__main__":
    main()
