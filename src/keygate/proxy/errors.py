"""Errors keygate makes itself, in the caller's dialect (OpenAI's shape, Anthropic's on claude)."""

from __future__ import annotations

import orjson

# status → (openai type, anthropic type)
_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    403: ("permission_error", "permission_error"),
    404: ("not_found_error", "not_found_error"),
    405: ("invalid_request_error", "invalid_request_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    502: ("upstream_error", "api_error"),
    503: ("service_unavailable", "overloaded_error"),
    504: ("timeout_error", "timeout_error"),
}


# Statuses of keygate's own answers that a later try may not get again. keygate's 503s all say
# that no key can serve the provider, which no retry in the next seconds changes.
RETRY_MAY_HELP = frozenset({408, 409, 429, 500, 502, 504})


class GatewayError(Exception):
    """An answer keygate gives on its own behalf; raised anywhere on the request path.

    `retry` False sends `x-should-retry: false`, which the OpenAI and Anthropic SDKs obey
    instead of retrying by status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or []
        self.retry = status in RETRY_MAY_HELP if retry is None else retry


def error_body(status: int, message: str, code: str | None, anthropic: bool) -> bytes:
    openai_type, anthropic_type = _TYPES.get(status, ("api_error", "api_error"))
    if anthropic:
        return orjson.dumps(
            {"type": "error", "error": {"type": anthropic_type, "message": message}}
        )
    return orjson.dumps(
        {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
    )


def retry_after_headers(seconds: float) -> list[tuple[bytes, bytes]]:
    """Retry-After in whole seconds (rounded up) and retry-after-ms, which the SDKs prefer."""
    seconds = max(0.0, seconds)
    whole = int(seconds) + (seconds > int(seconds))
    return [
        (b"retry-after", str(max(1, whole)).encode()),
        (b"retry-after-ms", str(int(seconds * 1000)).encode()),
    ]
