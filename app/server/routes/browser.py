"""What the relay serves to browsers: its JavaScript client and the live console.

``GET /client/relay.js`` (and its TypeScript declarations, ``/client/relay.d.ts``) is one ES
module, read from ``app/server/static`` as written, with no build step. A page on any origin may
import it (``Access-Control-Allow-Origin: *``: it is public code, and a module script from another
origin needs the header). Caching: the plain path revalidates (``ETag``, ``no-cache``: a deploy is
seen at once, a 304 costs a few bytes); ``/client/<version>/relay.js`` is cached for a day. ``GET /console`` is a static page using the client; it
has no powers beyond the token typed into it (docs/operating.md, "The browser client").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from app import __version__
from app.protocol.codes import ErrorCode
from app.server.routes.common import error_response

router = APIRouter()

_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".ts": "application/typescript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
CLIENT_FILES: Final = ("relay.js", "relay.d.ts")
CONSOLE_FILES: Final = ("console.js", "console.css")
_REVALIDATE: Final = "no-cache"
_A_DAY: Final = "public, max-age=86400"
# the console's page: its own scripts and the relay only, never inside another site's frame
_CONSOLE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def asset(name: str) -> Asset:
    """A file of ``app/server/static``, read once."""
    body = resources.files("app.server").joinpath("static", name).read_bytes()
    media_type = _TYPES[name[name.rindex(".") :]]
    return Asset(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')


def _serve(request: Request, name: str, cache_control: str, *, cors: bool) -> Response:
    found = asset(name)
    headers = {"ETag": found.etag, "Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"}
    if cors:
        headers["Access-Control-Allow-Origin"] = "*"
    else:
        headers.update(_CONSOLE_HEADERS)
    if found.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.api_route("/client/{name}", methods=["GET", "HEAD"])
async def client(request: Request, name: str) -> Response:
    """The browser client (``relay.js``) and its declarations (``relay.d.ts``)."""
    if name not in CLIENT_FILES:
        return _not_found(name)
    return _serve(request, name, _REVALIDATE, cors=True)


@router.api_route("/client/{version}/{name}", methods=["GET", "HEAD"])
async def versioned_client(request: Request, version: str, name: str) -> Response:
    """The same files under this relay's version: cached for a day without asking (the file may
    change within a version while it is being developed, so not ``immutable``)."""
    if name not in CLIENT_FILES or version != __version__:
        return _not_found(f"{version}/{name}")
    return _serve(request, name, _A_DAY, cors=True)


@router.get("/console")
async def console(request: Request) -> Response:
    """The live console: a static page; everything it does goes through ``relay.js``."""
    return _serve(request, "console.html", _REVALIDATE, cors=False)


@router.get("/console/")
async def console_slash() -> Response:
    return RedirectResponse("/console", status_code=308)  # the page's relative paths need /console


@router.get("/console/{name}")
async def console_asset(request: Request, name: str) -> Response:
    if name not in CONSOLE_FILES:
        return _not_found(name)
    return _serve(request, name, _REVALIDATE, cors=False)


def _not_found(name: str) -> Response:
    return error_response(404, ErrorCode.NOT_FOUND, f"no such file: {name[:100]!r}")
