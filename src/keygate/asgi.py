"""Sending an answer over ASGI: the two messages every complete response is made of, written
once for the proxy, the app's own pages and the admin UI and API."""

from __future__ import annotations

from typing import Any

import orjson

Header = tuple[bytes, bytes]


async def start(send: Any, status: int, headers: list[Header]) -> None:
    """The response head; the body follows in `http.response.body` messages."""
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def respond(send: Any, status: int, headers: list[Header], body: bytes = b"") -> None:
    """A whole response: head and body (the caller sets Content-Length if it wants one)."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Any, status: int, doc: Any, extra: list[Header] | None = None) -> None:
    body = orjson.dumps(doc)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or ()),
    ]
    await respond(send, status, headers, body)
