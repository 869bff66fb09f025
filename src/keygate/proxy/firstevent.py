"""A stream that answers 200 and then opens with an error event (`data: {"error": ...}`, or
Anthropic's `event: error`) is a failed try, not a success: some providers report quota and
overload that way. The first event is read before anything goes to the client, so such a try
can still be retried or fall back; a normal first event is relayed as it came, at no extra
cost beyond looking at its first bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from keygate.proxy.forward import UpstreamTimeout, UpstreamUnreachable
from keygate.proxy.watchdog import Watchdog, absorb_cancel

FIRST_EVENT_LIMIT = 64 * 1024  # an opening event longer than this is relayed unjudged
_ERROR_STARTS = (b'data: {"error"', b'data:{"error"', b"event: error", b"event:error")


def opens_with_error(head: bytes) -> bool:
    """Whether the stream's first event is an error (leading blank lines and comments aside)."""
    head = head.lstrip(b"\r\n")
    while head.startswith(b":"):  # SSE comments (keep-alives) before the first event
        head = head.partition(b"\n")[2].lstrip(b"\r\n")
    return head.startswith(_ERROR_STARTS)


def _complete(head: bytes) -> bool:
    """Enough has arrived to judge: a whole first event, or a first line that is not a
    comment (which already tells an error from a normal event)."""
    stripped = head.lstrip(b"\r\n")
    if not stripped:
        return False
    if stripped.startswith(b":"):
        return b"\n\n" in stripped or b"\r\n\r\n" in stripped
    return len(stripped) >= 16 or b"\n" in stripped


async def read_first(resp: aiohttp.ClientResponse, dog: Watchdog, first_byte_s: float) -> bytes:
    """The stream's first bytes, up to its first judgeable line (usually one chunk); b"" when
    the upstream ended at once. Silence and breaks are the try's failures, as before headers."""
    content = resp.content
    head = b""
    try:
        while len(head) < FIRST_EVENT_LIMIT:
            chunk = await content.readany()
            if not chunk:
                break
            head += chunk
            if _complete(head) or content.at_eof():
                break
    except asyncio.CancelledError:
        if not absorb_cancel(dog.fired):
            raise
        raise UpstreamTimeout(f"no first event within {first_byte_s:g}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnreachable(
            f"stream broke before its first event: {type(exc).__name__}"
        ) from None
    return head


async def hold_first(resp: aiohttp.ClientResponse, dog: Watchdog, first_byte_s: float) -> bytes:
    """For an event stream, its first bytes (see `read_first`); b"" for anything else. The
    response is closed when reading them fails."""
    if resp.content_type != "text/event-stream":
        return b""
    try:
        return await read_first(resp, dog, first_byte_s)
    except BaseException:
        dog.stop()  # the try is over: its first-byte watch must not fire later
        resp.close()
        raise


# an error's own type or code (OpenAI's, Anthropic's, Google's) → the status it stands for
_ERROR_KINDS = (
    (("overloaded",), 529),
    (("rate_limit", "quota", "resource_exhausted", "too_many"), 429),
    (("authentication", "unauthenticated", "invalid_api_key"), 401),
    (("permission",), 403),
    (("not_found",), 404),
    (("invalid_request", "invalid_argument", "bad_request"), 400),
    (("unavailable",), 503),
    (("server_error", "internal", "api_error", "timeout"), 500),
)


def error_status(event: bytes) -> int:
    """The status an error event stands for, so `classify` judges it as it would the same
    error sent as a status: the error's own numeric code, else its type or code name, and
    only failing both the words of its message (a server error that mentions a quota
    service is a server error)."""
    error = _error_of(event)
    if error is not None:
        for field in ("code", "status"):
            value = error.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
                return value
        names = " ".join(str(error.get(field, "")).lower() for field in ("type", "code", "status"))
        for words, status in _ERROR_KINDS:
            if any(word in names for word in words):
                return status
    low = event[:4096].lower()
    if b"overloaded" in low or b"529" in low:
        return 529
    if b"rate_limit" in low or b"rate limit" in low or b"quota" in low or b"429" in low:
        return 429
    return 500


def _error_of(event: bytes) -> dict[str, Any] | None:
    """The `error` object of the first event's data, when it parses."""
    for line in event[:FIRST_EVENT_LIMIT].splitlines():
        if line.startswith(b"data:"):
            try:
                doc = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
            error = doc.get("error") if isinstance(doc, dict) else None
            return error if isinstance(error, dict) else None
    return None
