"""The admin page's ASGI app in process: assets, headers, redirects, 404s, no traversal.

No browser needed, so these run everywhere (the browser tests are in tests/ui/).
"""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

from keygate.admin.ui import CSP, AdminUI, load_assets


def call(
    app: AdminUI,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers or [],
    }
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def fake_gateway(admin_path: str = "/admin/") -> Any:
    return SimpleNamespace(settings=SimpleNamespace(admin_path=admin_path))


def test_assets_ship_with_the_package() -> None:
    assets = load_assets()
    for name in (
        "index.html",
        "app.css",
        "favicon.svg",
        "js/app.js",
        "js/api.js",
        "js/dom.js",
        "js/i18n.js",
        "js/chart.js",
    ):
        assert name in assets, name
    html = assets["index.html"].body.decode()
    # every script is an external file (the CSP forbids inline script); no inline styles either
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all("src=" in tag for tag in scripts)
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html)
    assert "style=" not in html and "<style" not in html
    for name, asset in assets.items():
        if name.endswith(".js"):
            text = asset.body.decode()
            html_sinks = (
                r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function"
            )
            assert not re.search(html_sinks, text), name


def test_headers_redirect_and_404() -> None:
    app = AdminUI(fake_gateway())
    status, headers, body = call(app, "GET", "/admin/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CSP
    assert "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "unsafe" not in CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-cache"
    assert b'<script type="module" src="js/app.js">' in body

    status, headers, _ = call(app, "GET", "/admin/js/app.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    status, headers, _ = call(app, "GET", "/admin/app.css")
    assert status == 200 and headers["content-type"] == "text/css; charset=utf-8"
    status, headers, _ = call(app, "GET", "/admin/favicon.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml"

    # revalidation and compression
    etag = headers["etag"]
    status, _, body = call(app, "GET", "/admin/favicon.svg", [(b"if-none-match", etag.encode())])
    assert status == 304 and body == b""
    status, headers, body = call(
        app, "GET", "/admin/js/i18n.js", [(b"accept-encoding", b"gzip, br")]
    )
    assert status == 200 and headers["content-encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    status, headers, body = call(app, "HEAD", "/admin/")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0

    # the path without its slash redirects, keeping the query
    status, headers, _ = call(app, "GET", "/admin", query=b"x=1")
    assert status == 308 and headers["location"] == "/admin/?x=1"

    status, headers, _ = call(app, "POST", "/admin/")
    assert status == 405 and headers["allow"] == "GET, HEAD"

    # unknown files and traversal attempts: 404, with the same security headers
    for path in (
        "/admin/nope.js",
        "/admin/js/",
        "/admin/../pyproject.toml",
        "/admin/../__init__.py",
        "/admin/js/../../__init__.py",
        "/admin/%2e%2e/__init__.py",
        "/admin//etc/passwd",
        "/admin/static/index.html",
        "/admin/..%2f__init__.py",
        "/admin/js\\..\\..\\__init__.py",
        "/admin/index.html\x00.js",
    ):
        status, headers, body = call(app, "GET", path)
        assert status == 404, path
        assert (
            headers["x-content-type-options"] == "nosniff" and "content-security-policy" in headers
        )
        assert b"import" not in body


def test_custom_admin_path() -> None:
    app = AdminUI(fake_gateway("/console/"))
    assert call(app, "GET", "/console/")[0] == 200
    status, headers, _ = call(app, "GET", "/console")
    assert status == 308 and headers["location"] == "/console/"
    assert call(app, "GET", "/admin/")[0] == 404
