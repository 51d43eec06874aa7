"""The controller's OpenAPI 3.1 document, served at ``/openapi.json`` and checked against
the running controller by schemathesis in the tests."""

from __future__ import annotations

from functools import cache
from typing import Any

from services import catalog
from services.wires import PROTOCOLS

MAX_ID = 2**31 - 1
BIG = 2**62


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed request",
        403: "Admin token missing or wrong",
        404: "Not found",
        409: "Sold out, or the idempotency key was used for another order",
        413: "Body too large",
        422: "Refused: unknown item, coupon not applicable",
        429: "Rate limited",
        503: "A service behind the controller is unavailable",
        504: "Deadline exceeded",
    }
    return {str(s): _problem(text[s]) for s in statuses}


_ORDER_ERRORS = (400, 404, 413, 503, 504)
_PROTOCOL = {
    "name": "X-Order-Protocol",
    "in": "header",
    "required": False,
    "description": "Which order-service protocol carries the call.",
    "schema": {"type": "string", "enum": list(PROTOCOLS)},
}
_ADMIN = {
    "name": "X-Admin-Token",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "maxLength": 200},
}
_ITEM_ID = {
    "name": "item_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 9_999_999_999},
}
_ORDER_ID = {
    "name": "order_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}


@cache
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
            },
        },
        "Item": {
            "type": "object",
            "required": ["item_id", "name", "category", "price_cents", "stock", "images"],
            "properties": {
                "item_id": {"type": "integer"},
                "name": {"type": "string"},
                "category": {"type": "string", "enum": sorted(catalog.CATEGORIES)},
                "price_cents": {"type": "integer"},
                "stock": {"type": ["integer", "null"], "description": "null: inventory down"},
                "images": {
                    "type": "array",
                    "items": {"type": "string", "description": "signed CDN URL"},
                },
            },
        },
        "ItemPage": {
            "type": "object",
            "required": ["items", "page", "per_page", "total"],
            "properties": {
                "items": {"type": "array", "items": _ref("Item")},
                "page": {"type": "integer"},
                "per_page": {"type": "integer"},
                "total": {"type": "integer"},
            },
        },
        "OrderLineIn": {
            "type": "object",
            "required": ["item_id", "quantity"],
            "properties": {
                "item_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
            "additionalProperties": False,
        },
        "PlaceOrder": {
            "type": "object",
            "required": ["user_id", "lines"],
            # A misspelt field ("coupon") must not silently order without it.
            "additionalProperties": False,
            "properties": {
                "user_id": {"type": "string", "minLength": 1, "maxLength": 64},
                "lines": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 50,
                    "items": _ref("OrderLineIn"),
                },
                "coupon_code": {"type": ["string", "null"], "maxLength": 64},
            },
        },
        "Order": {
            "type": "object",
            "required": ["order_id", "user_id", "lines", "status", "total_cents", "history"],
            "properties": {
                "order_id": {"type": "string"},
                "user_id": {"type": "string"},
                "lines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["item_id", "quantity", "unit_price_cents"],
                        "properties": {
                            "item_id": {"type": "integer"},
                            "quantity": {"type": "integer"},
                            "unit_price_cents": {"type": "integer"},
                        },
                    },
                },
                "coupon_code": {"type": ["string", "null"]},
                "status": {
                    "type": "string",
                    "enum": ["PENDING", "CONFIRMED", "CANCELLED", "REJECTED"],
                },
                "total_cents": {"type": "integer"},
                "discount_cents": {"type": "integer"},
                "payable_cents": {"type": "integer"},
                "created_at_ms": {"type": "integer"},
                "updated_at_ms": {"type": "integer"},
                "reason": {"type": ["string", "null"]},
                "history": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["status", "at_ms"],
                        "properties": {
                            "status": {"type": "string"},
                            "at_ms": {"type": "integer"},
                            "note": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Stock": {
            "type": "object",
            "required": ["item_id", "available", "reserved", "sold"],
            "properties": {
                k: {"type": "integer"} for k in ("item_id", "available", "reserved", "sold")
            },
        },
        "CouponIn": {
            "type": "object",
            "required": ["code", "kind", "value"],
            "properties": {
                "code": {"type": "string", "minLength": 1, "maxLength": 64},
                "kind": {"type": "string", "enum": ["FIXED", "PERCENT"]},
                "value": {"type": "integer", "minimum": 1, "maximum": BIG},
                "min_total_cents": {"type": "integer", "minimum": 0, "maximum": BIG},
                "per_user_limit": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                "total_limit": {"type": "integer", "minimum": 0, "maximum": BIG},
                "valid_from_ms": {"type": "integer", "minimum": 0, "maximum": BIG},
                "valid_until_ms": {"type": "integer", "minimum": 0, "maximum": BIG},
            },
        },
    }
    schemas["Coupon"] = {
        **schemas["CouponIn"],
        "properties": {**schemas["CouponIn"]["properties"], "redeemed": {"type": "integer"}},
    }
    etag = {"ETag": {"schema": {"type": "string"}}}
    paths = {
        "/api/items": {
            "get": {
                "summary": "List the catalogue, a page at a time",
                "operationId": "listItems",
                "parameters": [
                    {
                        "name": "page",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10_000},
                    },
                    {
                        "name": "per_page",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {
                        "name": "category",
                        "in": "query",
                        "schema": {"type": "string", "enum": sorted(catalog.CATEGORIES)},
                    },
                ],
                "responses": {
                    "200": {**_json(_ref("ItemPage"), "A page of items"), "headers": etag},
                    "304": {"description": "Unchanged since the ETag given in If-None-Match"},
                    **_errors(400),
                },
            }
        },
        "/api/items/{item_id}": {
            "get": {
                "summary": "One item with live stock and signed image URLs",
                "operationId": "getItem",
                "parameters": [_ITEM_ID],
                "responses": {
                    "200": {**_json(_ref("Item"), "The item"), "headers": etag},
                    "304": {"description": "Unchanged since the ETag given in If-None-Match"},
                    **_errors(404),
                },
            }
        },
        "/api/orders": {
            "post": {
                "summary": "Place an order (idempotent by Idempotency-Key)",
                "operationId": "placeOrder",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                    },
                    _PROTOCOL,
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PlaceOrder")}},
                },
                "responses": {
                    "201": {
                        **_json(_ref("Order"), "Confirmed (the same answer for a replayed key)"),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **_errors(*_ORDER_ERRORS, 409, 422),
                },
            }
        },
        "/api/orders/{order_id}": {
            "get": {
                "summary": "One order with its history",
                "operationId": "getOrder",
                "parameters": [_ORDER_ID, _PROTOCOL],
                "responses": {"200": _json(_ref("Order"), "The order"), **_errors(*_ORDER_ERRORS)},
            }
        },
        "/api/orders/{order_id}/cancel": {
            "post": {
                "summary": "Cancel a confirmed order (stock and coupon are given back)",
                "operationId": "cancelOrder",
                "parameters": [_ORDER_ID, _PROTOCOL],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"reason": {"type": "string", "maxLength": 200}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("Order"), "The cancelled order"),
                    **_errors(*_ORDER_ERRORS, 409),
                },
            }
        },
        "/api/users/{user_id}/orders": {
            "get": {
                "summary": "A user's orders, newest first",
                "operationId": "listUserOrders",
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    _PROTOCOL,
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["orders"],
                            "properties": {"orders": {"type": "array", "items": _ref("Order")}},
                        },
                        "The orders",
                    ),
                    **_errors(*_ORDER_ERRORS),
                },
            }
        },
        "/api/admin/items/{item_id}/stock": {
            "get": {
                "summary": "An item's stock levels: available, reserved, sold (admin)",
                "operationId": "getStockLevel",
                "parameters": [_ITEM_ID, _ADMIN],
                "responses": {
                    "200": _json(_ref("Stock"), "The stock levels"),
                    **_errors(400, 403, 404, 503, 504),
                },
            },
            "put": {
                "summary": "Set an item's available stock (admin)",
                "operationId": "setStock",
                "parameters": [_ITEM_ID, _ADMIN],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["available"],
                                "properties": {
                                    "available": {"type": "integer", "minimum": 0, "maximum": 10**9}
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("Stock"), "The new stock levels"),
                    **_errors(400, 403, 404, 413, 503, 504),
                },
            },
        },
        "/api/admin/coupons": {
            "post": {
                "summary": "Create a coupon (admin)",
                "operationId": "createCoupon",
                "parameters": [_ADMIN],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CouponIn")}},
                },
                "responses": {
                    "201": _json(_ref("Coupon"), "The coupon"),
                    **_errors(400, 403, 409, 413, 503, 504),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Double-11 shop API",
            "version": "1.0.0",
            "description": "The controller's REST resources. Errors are RFC 9457 problems.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
