"""Anthropic's Messages API: key in x-api-key with an anthropic-version, `/v1/messages`,
Anthropic's error shape and `anthropic-ratelimit-*-reset` hints."""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson

from keygate.dialects.base import ANTHROPIC_RESETS, RETRY_AFTER, Dialect, anthropic_budget
from keygate.dialects.budget import Announced

ANTHROPIC_VERSION = "2023-06-01"

# status → the error `type` Anthropic's API reports
_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class Anthropic(Dialect):
    key_style = "x-api-key"
    default_path = "/v1/messages"
    reset_headers = RETRY_AFTER + ANTHROPIC_RESETS
    credential_headers = (b"x-api-key",)

    def add_key(self, out: list[tuple[str, str]], secret: str) -> None:
        out.append(("x-api-key", secret))
        if not any(n == "anthropic-version" for n, _ in out):
            out.append(("anthropic-version", ANTHROPIC_VERSION))

    def read_budget(self, headers: Mapping[str, str]) -> list[Announced] | None:
        return anthropic_budget(headers, time.time())

    def error_body(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": _TYPES.get(status, "api_error"), "message": message},
            }
        )


ANTHROPIC = Anthropic()
