"""The admin page: static files shipped in the package, served as a raw ASGI callable.

Every file under `static/` is read once at start-up into an in-memory table keyed by its
relative path; a request is answered only when its path (below the admin path) is exactly one
of those keys, so nothing outside the folder can ever be reached (no path traversal, no symlink
surprises, no disk access per request). The page itself talks to the JSON API under `/api`.

Headers: a strict Content-Security-Policy (no inline script or style, same-origin only, no
framing), `nosniff`, `no-referrer`; `Cache-Control: no-cache` plus a strong ETag so a browser
revalidates (a cheap 304) and never runs a stale page after an upgrade. Text assets are also
kept gzip-compressed and sent that way to clients that accept it.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

from keygate.http.asgi import respond

STATIC_DIR = Path(__file__).with_name("static")

CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
_COMPRESSIBLE = (".html", ".js", ".mjs", ".css", ".json", ".svg", ".txt")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class Asset:
    __slots__ = ("body", "content_type", "etag", "gz")

    def __init__(self, body: bytes, content_type: str, compress: bool) -> None:
        self.body = body
        self.content_type = content_type.encode()
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
        gz = gzip.compress(body, 9, mtime=0) if compress and len(body) > 512 else b""
        self.gz = gz if gz and len(gz) < len(body) else b""


def load_assets(root: Path = STATIC_DIR) -> dict[str, Asset]:
    """Relative POSIX path → asset, for every regular file of a known type under `root`."""
    assets: dict[str, Asset] = {}
    if not root.is_dir():
        return assets
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.name.startswith("."):
            continue
        ctype = CONTENT_TYPES.get(path.suffix.lower())
        if ctype is None:
            continue
        rel = path.relative_to(root).as_posix()
        assets[rel] = Asset(path.read_bytes(), ctype, path.suffix.lower() in _COMPRESSIBLE)
    return assets


class AdminUI:
    """ASGI app for every path under `settings.admin_path` and the path without its slash."""

    def __init__(self, gateway: Any, static_dir: Path = STATIC_DIR) -> None:
        self.gateway = gateway
        self.admin_path: str = gateway.settings.admin_path  # normalised: "/x/"
        self.admin_root = self.admin_path.rstrip("/")
        self.assets = load_assets(static_dir)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if method not in ("GET", "HEAD"):
            await self._plain(
                send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")], method
            )
            return
        if path == self.admin_root:
            query: bytes = scope.get("query_string") or b""
            location = self.admin_path.encode() + (b"?" + query if query else b"")
            await self._plain(send, 308, b"", [(b"location", location)], method)
            return
        rel = path[len(self.admin_path) :] if path.startswith(self.admin_path) else None
        if rel == "":
            rel = "index.html"
        asset = self.assets.get(rel) if rel is not None else None
        if asset is None:
            await self._plain(send, 404, b"not found\n", [], method)
            return
        await self._asset(scope, send, asset, method)

    async def _asset(self, scope: dict[str, Any], send: Any, asset: Asset, method: str) -> None:
        inm = b""
        accept_gzip = False
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                inm = value
            elif name == b"accept-encoding":
                accept_gzip = b"gzip" in value.lower()
        headers = [
            (b"content-type", asset.content_type),
            (b"cache-control", b"no-cache"),
            (b"etag", asset.etag),
            *SECURITY_HEADERS,
        ]
        if asset.gz:
            headers.append((b"vary", b"Accept-Encoding"))
        if inm and asset.etag in [tag.strip().removeprefix(b"W/") for tag in inm.split(b",")]:
            await respond(send, 304, headers)
            return
        body = asset.body
        if asset.gz and accept_gzip:
            body = asset.gz
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(body)).encode()))
        await respond(send, 200, headers, b"" if method == "HEAD" else body)

    async def _plain(
        self,
        send: Any,
        status: int,
        body: bytes,
        extra: list[tuple[bytes, bytes]],
        method: str,
    ) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
            *extra,
        ]
        await respond(send, status, headers, b"" if method == "HEAD" else body)
