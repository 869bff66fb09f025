"""Google's Gemini API, which answers two families on one host: its native API (key in
x-goog-api-key, `:generateContent` method paths, Google's error shape) and an OpenAI-compatible
one under `/v1beta/openai`. `route` tells them apart per request; OpenAI clients' `/v1/...`
paths are rewritten to the compatible API and then speak the OpenAI dialect."""

from __future__ import annotations

import re

import orjson

from keygate.dialects.base import Dialect, Headers
from keygate.dialects.openai import OPENAI

# `/v1/models/gemini-2.0-flash:generateContent`, `/v1beta/tunedModels/x:streamGenerateContent`:
# a Gemini method call (the last segment names an action after a colon, maybe encoded as %3A).
_NATIVE_METHOD_RE = re.compile(r"^/v\d+(?:alpha|beta)?\d*/.*(?::|%3[aA])[A-Za-z]+$")
# OpenAI endpoints without a native Gemini namesake.
_OPENAI_ONLY = (
    "/v1/chat/",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/images/",
    "/v1/audio/",
)

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


def native_gemini(rest: str, goog_key: bool) -> bool:
    """Whether a Gemini request speaks the native API rather than the OpenAI-compatible one.
    The Google SDKs send `/v1/…` or `/v1beta/…` method paths with x-goog-api-key; OpenAI
    clients send `/v1/chat/completions`, `/v1/models`, `/v1/embeddings` with a bearer token.
    `/v1beta/openai/…` is always the OpenAI-compatible API."""
    if rest.startswith("/v1beta/openai") and rest[14:15] in ("", "/"):
        return False
    if rest.startswith(_OPENAI_ONLY):
        return False  # no native method has these names: rewrite even with x-goog-api-key
    if goog_key or _NATIVE_METHOD_RE.match(rest.partition("?")[0]):
        return True
    return not (rest.startswith("/v1/") or rest == "/v1")


class Gemini(Dialect):
    key_style = "gemini"
    models_path = "/v1beta/models"
    credential_headers = (b"x-goog-api-key",)

    def route(self, rest: str, headers: Headers) -> tuple[str, Dialect]:
        if rest in ("", "/"):
            rest = self.default_path
        if native_gemini(rest, any(name == b"x-goog-api-key" for name, _ in headers)):
            return rest, self
        if rest.startswith("/v1/"):
            return "/v1beta/openai/" + rest[4:], OPENAI
        if rest == "/v1":
            return "/v1beta/openai", OPENAI
        return rest, OPENAI

    def add_key(self, out: list[tuple[str, str]], secret: str) -> None:
        out.append(("x-goog-api-key", secret))

    def error_body(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "code": status,
                    "message": message,
                    "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
                }
            }
        )


GEMINI = Gemini()
