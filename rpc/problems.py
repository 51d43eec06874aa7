"""RFC 9457 problem details (``application/problem+json``) for the controller's errors,
including the ones aiohttp raises itself (404 no route, 405, 413), so that every error a
client sees has one shape."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from rpc.errors import HTTP_STATUS, DomainError

CONTENT_TYPE = "application/problem+json"


def problem(status: int, slug: str, title: str, detail: str = "", **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": f"/problems/{slug}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.Response(status=status, body=json.dumps(body), content_type=CONTENT_TYPE)


def from_domain_error(error: DomainError) -> web.Response:
    title = error.code.value.replace("-", " ").capitalize()
    return problem(HTTP_STATUS[error.code], error.code.value, title, error.message, **error.detail)


_SLUGS = {404: "not-found", 405: "method-not-allowed", 413: "too-large", 400: "bad-request"}


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except DomainError as error:
        return from_domain_error(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(exc.status, _SLUGS.get(exc.status, "http-error"), exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
