"""The admin API's request and response: the parsed request with its body on demand, the
reply, and the error shape of docs/admin-api.md. Raw ASGI like the rest of keygate; the route
table (admin/table.py) and the route modules (keys, providers, stats, session) build on this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from keygate.admin.auth import SCOPE_COOKIE, session_cookie
from keygate.http.asgi import BadContentLength, BodyTooLarge, ClientGone, read_body, send_whole
from keygate.http.errors import GatewayError, retry_after_headers

BODY_LIMIT = 1 << 20  # ordinary requests: a key, a few settings
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
}
JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


class ApiError(GatewayError):
    """An answer other than success; `param` names the offending field for the page's forms."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(status, message, code, headers)
        self.param = param


def bad(field: str, problem: str) -> ApiError:
    """A 400 whose message starts with the field, as the contract asks."""
    return ApiError(400, f"{field}: {problem}", "invalid_value", param=field)


def not_found(what: str) -> ApiError:
    return ApiError(404, what, "not_found")


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        "unauthorized",
        headers=[(b"www-authenticate", b'Bearer realm="keygate admin"')],
    )


def refused(wait: float, message: str) -> ApiError:
    """A wrong admin password: 401, or 429 once the failed-attempt throttle says so."""
    if wait > 0:
        return ApiError(
            429,
            f"too many wrong admin passwords; retry in {math.ceil(wait)}s",
            "too_many_attempts",
            headers=retry_after_headers(wait),
        )
    return unauthorized(message)


@dataclass(slots=True)
class Reply:
    status: int
    doc: Any  # JSON-able, or bytes sent as they are with `content_type`
    headers: list[tuple[bytes, bytes]] | None = None
    content_type: bytes | None = None


def ok(doc: Any, status: int = 200) -> Reply:
    return Reply(status, doc)


def error_reply(err: ApiError) -> Reply:
    body = {
        "error": {
            "message": err.message,
            "type": ERROR_TYPES.get(err.status, "api_error"),
            "code": err.code,
            "param": err.param,
        }
    }
    return Reply(err.status, body, err.headers)


async def send_reply(send: Any, scope: dict[str, Any], reply: Reply) -> None:
    """The one way an admin answer goes out (a slid session cookie rides along)."""
    if reply.content_type is not None:
        body = reply.doc
        headers = [(b"content-type", reply.content_type), (b"cache-control", b"no-store")]
    else:
        body = orjson.dumps(reply.doc)
        headers = list(JSON_HEADERS)
    if SCOPE_COOKIE in scope:  # the session cookie slid forward (admin/auth.py)
        headers.append((b"set-cookie", session_cookie(*scope[SCOPE_COOKIE], is_https(scope))))
    await send_whole(send, reply.status, headers + (reply.headers or []), body)


def is_https(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") == "https":
        return True
    return any(
        name == b"x-forwarded-proto" and value.strip().lower() == b"https"
        for name, value in scope["headers"]
    )


@dataclass(slots=True)
class Request:
    """What a handler needs: the scope, the parsed query, and the body on demand."""

    scope: dict[str, Any]
    receive: Any
    limit: int
    query: dict[str, str]

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    async def body(self) -> bytes:
        try:
            return await read_body(self.receive, self.scope["headers"], self.limit)
        except BadContentLength:
            raise ApiError(400, "invalid Content-Length header", "bad_request") from None
        except BodyTooLarge as exc:
            raise ApiError(
                413, f"body: larger than {exc.limit} bytes", "request_too_large", param="body"
            ) from None
        except ClientGone:
            raise ApiError(400, "client disconnected", "client_gone") from None

    async def json(self) -> dict[str, Any]:
        """The body as a JSON object; anything else is a 400, never a crash."""
        raw = await self.body()
        if not raw.strip():
            return {}
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "body: not valid JSON", "invalid_json", param="body") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "body: must be a JSON object", "invalid_json", param="body")
        return doc
