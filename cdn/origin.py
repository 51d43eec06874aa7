"""The CDN origin (role ``cdn-origin``): the shop's object store for product images.
``python -m cdn.origin``.

* ``GET``/``HEAD`` any stored path, with ``ETag``, ``Last-Modified``, the
  ``Cache-Control`` the shop set for browsers and the ``CDN-Cache-Control`` (RFC 9213) for
  the CDN's tiers; conditional requests (304) and ranges (206, 416) as cdn.semantics
  answers them.
* ``PUT`` stores an object (its ``Content-Type``, ``Cache-Control`` and
  ``CDN-Cache-Control`` request headers become the object's, as object stores do),
  ``DELETE`` removes it; both need
  ``X-Admin-Token: $D11_ADMIN_TOKEN`` (as the controller's admin API).
* Every catalogue item has ``/img/items/{id}/main.png`` (256×256) and ``thumb.png``
  (64×64): real PNGs generated from the item id, the same bytes on every machine, made on
  first request and then kept like any uploaded object.

Objects live in ``<data dir>/objects`` (one body file and one JSON metadata file each).
Settings: ``D11_ORIGIN_CACHE_CONTROL`` and ``D11_ORIGIN_CDN_CACHE_CONTROL`` (the defaults
for objects uploaded without them; an empty CDN one sends none),
``D11_ORIGIN_MAX_OBJECT`` (bytes, 413 above it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from cdn import semantics
from cdn.semantics import bad_path
from infra.config import LAB_ADMIN_TOKEN
from infra.http import HttpServer, make_app
from infra.service import Component, Context, run
from rpc.problems import problem, problem_middleware

DEFAULT_CACHE_CONTROL = (
    "public, max-age=300, s-maxage=3600, stale-while-revalidate=60, stale-if-error=86400"
)
# What the CDN's tiers keep (RFC 9213: they obey it over Cache-Control): a day, while
# browsers keep five minutes. A purge is how the shop takes an image back sooner.
DEFAULT_CDN_CACHE_CONTROL = "max-age=86400, stale-while-revalidate=60, stale-if-error=86400"
# The shop's catalogue numbers its items 1..300 (D11_ORIGIN_ITEMS): the origin makes an
# image for each, as the shop's upload job would have.
CATALOGUE_ITEMS = 300
# The catalogue's images are dated to the catalogue's launch, so every machine agrees.
CATALOGUE_DATE = 1793491200.0  # 2026-11-01T00:00:00Z
IMAGE_PATH = re.compile(r"^/img/items/(\d+)/(main|thumb)\.png$")
IMAGE_SIZES = {"main": 256, "thumb": 64}


# -- deterministic product images -----------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def product_png(item_id: int, variant: str) -> bytes:
    """A real RGB PNG: colour bands keyed to the item over a photo-like noisy lower half
    (noise keeps it from compressing to nothing, so sizes look like product photos)."""
    size = IMAGE_SIZES[variant]
    rng = random.Random(f"{item_id}/{variant}")
    base = hashlib.sha256(str(item_id).encode()).digest()
    rows = []
    for y in range(size):
        if y < size // 2:
            shade = (y * 4) % 256
            pixel = bytes(((base[0] + shade) % 256, base[1], (base[2] + y) % 256))
            rows.append(b"\x00" + pixel * size)
        else:
            rows.append(b"\x00" + rng.randbytes(size * 3))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + _png_chunk(b"IEND", b"")
    )


# -- the store ---------------------------------------------------------------------------------
class ObjectStore:
    """Objects on disk, their metadata in memory; file I/O runs off the event loop."""

    def __init__(
        self,
        root: Path,
        default_cache_control: str,
        default_cdn_cache_control: str = "",
        items: int = CATALOGUE_ITEMS,
    ) -> None:
        self.root = root
        self.items = items  # the catalogue's item ids are 1..items
        self.root.mkdir(parents=True, exist_ok=True)
        self.default_cache_control = default_cache_control
        self.default_cdn_cache_control = default_cdn_cache_control
        self.meta: dict[str, dict] = {}
        self.deleted: set[str] = set()  # generated images the shop deleted
        for meta_file in self.root.glob("*.json"):
            meta = json.loads(meta_file.read_text())
            if meta.get("deleted"):
                self.deleted.add(meta["path"])
            else:
                self.meta[meta["path"]] = meta

    def _file(self, path: str) -> Path:
        return self.root / hashlib.sha256(path.encode()).hexdigest()

    async def get(self, path: str) -> tuple[dict, bytes] | None:
        meta = self.meta.get(path)
        if meta is None:
            m = IMAGE_PATH.match(path)
            if not m or path in self.deleted or not 1 <= int(m.group(1)) <= self.items:
                return None
            body = await asyncio.to_thread(product_png, int(m.group(1)), m.group(2))
            meta = await self.put(path, body, "image/png", None, None, CATALOGUE_DATE)
            return meta, body
        body = await asyncio.to_thread(self._file(path).with_suffix(".bin").read_bytes)
        return meta, body

    async def put(
        self,
        path: str,
        body: bytes,
        content_type: str,
        cache_control: str | None,
        cdn_cache_control: str | None = None,
        modified: float | None = None,
    ) -> dict:
        meta = {
            "path": path,
            "content_type": content_type,
            "cache_control": cache_control or self.default_cache_control,
            "cdn_cache_control": cdn_cache_control or self.default_cdn_cache_control,
            "etag": '"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            "last_modified": modified if modified is not None else time.time(),
            "size": len(body),
        }
        file = self._file(path)

        def write() -> None:
            # Body first, metadata last: a crash in between leaves no object, not a torn one.
            file.with_suffix(".bin").write_bytes(body)
            file.with_suffix(".json").write_text(json.dumps(meta))

        await asyncio.to_thread(write)
        self.meta[path] = meta
        self.deleted.discard(path)
        return meta

    async def delete(self, path: str) -> bool:
        existed = path in self.meta or (bool(IMAGE_PATH.match(path)) and path not in self.deleted)
        file = self._file(path)
        self.meta.pop(path, None)
        tombstone = {"path": path, "deleted": True}

        def write() -> None:
            file.with_suffix(".bin").unlink(missing_ok=True)
            file.with_suffix(".json").write_text(json.dumps(tombstone))

        await asyncio.to_thread(write)
        self.deleted.add(path)
        return existed


class Origin:
    def __init__(self, store: ObjectStore, token: str, max_object: int) -> None:
        self.store, self.token, self.max_object = store, token, max_object

    async def get(self, request: web.Request) -> web.Response:
        path = request.path
        if reason := bad_path(path):
            return problem(400, "bad-path", "Bad object path", reason)
        found = await self.store.get(path)
        if found is None:
            return problem(404, "not-found", "No such object", path)
        meta, body = found
        headers = [
            ("Content-Type", meta["content_type"]),
            ("ETag", meta["etag"]),
            ("Last-Modified", semantics.format_http_date(meta["last_modified"])),
            ("Cache-Control", meta["cache_control"]),
        ]
        if meta.get("cdn_cache_control"):
            headers.append(("CDN-Cache-Control", meta["cdn_cache_control"]))
        status, headers, body = semantics.answer(request.headers, 200, headers, body)
        response = web.Response(status=status, body=body if status != 304 else None)
        for name, value in headers:
            response.headers[name] = value
        return response

    def _authorised(self, request: web.Request) -> bool:
        return bool(self.token) and hmac.compare_digest(
            request.headers.get("X-Admin-Token", ""), self.token
        )

    async def put(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _unauthorised("uploads")
        path = request.path
        if reason := bad_path(path):
            return problem(400, "bad-path", "Bad object path", reason)
        if (request.content_length or 0) > self.max_object:
            return problem(413, "too-large", "Object too large", f"at most {self.max_object} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return problem(413, "too-large", "Object too large", f"at most {self.max_object} bytes")
        existed = path in self.store.meta
        meta = await self.store.put(
            path,
            body,
            request.headers.get("Content-Type", "application/octet-stream"),
            request.headers.get("Cache-Control"),
            request.headers.get("CDN-Cache-Control"),
        )
        return web.json_response(
            meta, status=200 if existed else 201, headers={"ETag": meta["etag"]}
        )

    async def delete(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _unauthorised("deletes")
        if reason := bad_path(request.path):
            return problem(400, "bad-path", "Bad object path", reason)
        if not await self.store.delete(request.path):
            return problem(404, "not-found", "No such object", request.path)
        return web.Response(status=204)


def _unauthorised(what: str) -> web.Response:
    return problem(401, "unauthorised", "Unauthorised", f"{what} need X-Admin-Token")


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    max_object = s.get_int("ORIGIN_MAX_OBJECT", 8 * 1024 * 1024)
    store = ObjectStore(
        s.data_dir / "objects",
        s.get("ORIGIN_CACHE_CONTROL", DEFAULT_CACHE_CONTROL),
        s.get("ORIGIN_CDN_CACHE_CONTROL", DEFAULT_CDN_CACHE_CONTROL),
        s.get_int("ORIGIN_ITEMS", CATALOGUE_ITEMS),
    )
    origin = Origin(store, s.get("ADMIN_TOKEN", LAB_ADMIN_TOKEN), max_object)
    app = make_app(ctx, client_max_size=max_object + 1)
    app.middlewares.append(problem_middleware)
    app.router.add_route("GET", "/{path:.*}", origin.get)
    app.router.add_route("PUT", "/{path:.*}", origin.put)
    app.router.add_route("DELETE", "/{path:.*}", origin.delete)
    return [HttpServer(app, s.address, s.port)]


def main() -> None:
    run(build, name="cdn-origin", role="cdn-origin", port=8090)


if __name__ == "__main__":
    main()
