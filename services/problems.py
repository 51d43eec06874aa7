"""RFC 9457 problem details (``application/problem+json``) for the controller's errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from rpc.errors import HTTP_STATUS, OrderError

CONTENT_TYPE = "application/problem+json"


def problem(status: int, slug: str, title: str, detail: str = "", **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": f"/problems/{slug}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.Response(status=status, body=json.dumps(body), content_type=CONTENT_TYPE)


def from_order_error(error: OrderError) -> web.Response:
    title = error.code.value.replace("-", " ").capitalize()
    return problem(HTTP_STATUS[error.code], error.code.value, title, error.message, **error.detail)
