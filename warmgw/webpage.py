"""The operator's status page: static files from the package's `web/` directory, served by
the admin listener. The files hold no data and need no token; the page's own calls to the
admin API carry the bearer token the operator types in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from aiohttp import web

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# Everything comes from this origin; nothing is inline, nothing from elsewhere.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


ASSETS = web.AppKey("warmgw_web_assets", dict[str, Asset])


def load_assets(root: Traversable | None = None) -> dict[str, Asset]:
    """Every servable file of the web directory, by name, read once."""
    root = root if root is not None else files("warmgw") / "web"
    assets: dict[str, Asset] = {}
    for item in root.iterdir():
        suffix = "." + item.name.rpartition(".")[2] if "." in item.name else ""
        if not item.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = item.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        assets[item.name] = Asset(body, CONTENT_TYPES[suffix], etag)
    if "index.html" not in assets:
        raise RuntimeError(f"the status page is missing: no index.html in {root}")
    return assets


def _serve(request: web.Request, name: str) -> web.Response:
    asset = request.app[ASSETS].get(name)
    if asset is None:
        raise web.HTTPNotFound(reason=f"no file {name!r}")
    headers = {**HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


async def index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def static(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["file"])


def add_routes(app: web.Application) -> None:
    """GET / (and /index.html) and /static/{file}: open, since they carry no data."""
    app[ASSETS] = load_assets()
    app.router.add_get("/", index)
    app.router.add_get("/index.html", index)
    app.router.add_get("/static/{file}", static)
