"""The OpenAI-compatible family: bearer key, `/v1/...` paths, OpenAI's error shape. Most
providers speak it, including gateways and aggregators in front of other families."""

from __future__ import annotations

import orjson

from keygate.dialects.base import EVERY_RESET, Dialect

# status → the `type` OpenAI's API reports
_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class OpenAICompatible(Dialect):
    key_style = "bearer"
    # what sits behind a bearer provider may relay any family's reset hints
    reset_headers = EVERY_RESET

    def error_body(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": message,
                    "type": _TYPES.get(status, "api_error"),
                    "param": None,
                    "code": code,
                }
            }
        )


OPENAI = OpenAICompatible()
