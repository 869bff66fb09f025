"""Sending a whole answer over ASGI (head + body): keygate's own JSON and error answers, the
app's pages, the admin UI and API. The proxy's relay of upstream answers sends its messages
inline: it is the hot path, and a helper there costs a coroutine per request."""

from __future__ import annotations

from typing import Any

import orjson

Header = tuple[bytes, bytes]


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
