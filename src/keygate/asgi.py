"""The ASGI plumbing every raw callable here needs: reading a request body under a size limit,
and sending a whole response. The callers turn the exceptions into answers in their own
client's shape."""

from __future__ import annotations

from typing import Any

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


async def send_whole(send: Any, status: int, headers: Headers, body: bytes) -> None:
    """One response in two messages, with its Content-Length."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
