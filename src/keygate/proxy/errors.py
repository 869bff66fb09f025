"""Errors keygate makes itself, in the caller's dialect: OpenAI's shape, Anthropic's on claude,
Google's on native Gemini paths (the SDKs parse only their own shape into a useful exception)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from keygate.proxy.route import upstream_path
from keygate.settings import ProviderConfig

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

# status → google.rpc.Code name, as the Gemini API reports it in error.status
_GOOGLE_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "INVALID_ARGUMENT",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
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


def error_dialect(
    cfg: ProviderConfig | None, rest: str, headers: Sequence[tuple[bytes, bytes]]
) -> str:
    """The error shape the caller's SDK understands: "anthropic", "gemini" or "openai".
    Decided only when there is an error to send, so the request path pays nothing for it."""
    if cfg is None:
        return "openai"
    if cfg.key_style == "x-api-key":
        return "anthropic"
    if cfg.key_style == "gemini" and upstream_path(cfg, rest, headers)[1]:
        return "gemini"
    return "openai"


def error_body(status: int, message: str, code: str | None, dialect: bool | str) -> bytes:
    """`dialect` is "openai", "anthropic" or "gemini"; a bool still means anthropic or not."""
    openai_type, anthropic_type = _TYPES.get(status, ("api_error", "api_error"))
    if dialect == "gemini":
        return orjson.dumps(
            {
                "error": {
                    "code": status,
                    "message": message,
                    "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
                }
            }
        )
    if dialect is True or dialect == "anthropic":
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
