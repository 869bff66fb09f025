"""The ASGI plumbing every raw callable here needs: reading a request body under a size limit,
and sending a whole response (keygate's own answers: the proxy's errors, the app's pages, the
admin UI and API). The callers turn the exceptions into answers in their own client's shape.
The proxy's relay of upstream answers sends its messages inline: it is the hot path."""

from __future__ import annotations

from typing import Any

import orjson

Headers = list[tuple[bytes, bytes]]


class BadContentLength(Exception):
    """The Content-Length header is not a number."""


class BodyTooLarge(Exception):
    def __init__(self, limit: int, declared: int | None = None) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit
        self.declared = declared  # from Content-Length, when that is what said so


class ClientGone(Exception):
    """The client disconnected before the body was complete."""


async def read_body(receive: Any, headers: Headers, limit: int) -> bytes:
    """The whole body, refused as soon as it (or its Content-Length) passes `limit`."""
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise BadContentLength from None
            if declared > limit:
                raise BodyTooLarge(limit, declared)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # a chunked body may arrive whole in one message
            raise BodyTooLarge(limit)
        if not message.get("more_body"):
            return b"".join(parts) + chunk if parts else chunk
        parts.append(chunk)


async def respond(send: Any, status: int, headers: Headers, body: bytes = b"") -> None:
    """One response in two messages, the headers as given (a 204 or 304 has no length)."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_whole(send: Any, status: int, headers: Headers, body: bytes) -> None:
    """One response in two messages, with its Content-Length."""
    await respond(send, status, [*headers, (b"content-length", str(len(body)).encode())], body)


async def respond_json(send: Any, status: int, doc: Any, extra: Headers | None = None) -> None:
    body = orjson.dumps(doc)
    await send_whole(send, status, [(b"content-type", b"application/json"), *(extra or ())], body)


SESSION_COOKIE = "keygate_session"  # the admin page's session; /healthz looks for it too


def read_cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
