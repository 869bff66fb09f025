"""Google's Gemini API, which answers two families on one host: its native API (key in
x-goog-api-key, `:generateContent` method paths, Google's error shape) and an OpenAI-compatible
one under `/v1beta/openai`. `route` tells them apart per request; OpenAI clients' `/v1/...`
paths are rewritten to the compatible API and then speak the OpenAI dialect."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson

from keygate.dialects.base import Dialect, Headers
from keygate.dialects.openai import OPENAI

# `/v1/models/gemini-2.0-flash:generateContent`, `/v1beta/tunedModels/x:streamGenerateContent`:
# a Gemini method call (the last segment names an action after a colon, maybe encoded as %3A).
_NATIVE_METHOD_RE = re.compile(r"^/v\d+(?:alpha|beta)?\d*/.*(?::|%3[aA])[A-Za-z]+$")
# A native path naming a model (once `path_model` normalised it): the collection, the name, and
# maybe a method. Any other path that mentions models, but for the lists, names one unreadably.
_NATIVE_MODEL_RE = re.compile(
    r"^/v\d+(?:alpha|beta)?\d*/(models|tunedModels)/([A-Za-z0-9][A-Za-z0-9._-]*)(?::[A-Za-z]+)?$"
)
_MODEL_LIST_RE = re.compile(r"^/v\d+(?:alpha|beta)?\d*/(?:models|tunedModels)/?$")
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


# Usage in Gemini's own answers: `"usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount":
# 17, "totalTokenCount": 40, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
# "thoughtsTokenCount": 15}`. The object holds numbers and, one level down, lists of small
# objects: the pattern finds its end, and only the object is parsed, never the whole answer.
_USAGE_KEY = b'"usageMetadata"'
_USAGE_KEY_LEN = len(_USAGE_KEY)
_USAGE_OBJECT_RE = re.compile(rb"\s*:\s*(\{(?:[^{}]++|\{[^{}]*+\})*+\})")
_USAGE_COUNT_RE = re.compile(
    rb'"(promptTokenCount|candidatesTokenCount|thoughtsTokenCount|totalTokenCount)"\s*:\s*'
    rb"(\d{1,12})(?!\d)"
)
_USAGE_SPAN = 2048  # an object cut off by the end of a read: its counts within this many bytes


def scan_gemini_usage(chunk: bytes, usage: list[int], whole: bool = False) -> None:
    """Keep the largest token counts (input, output) of the `usageMetadata` objects in `chunk`:
    input = promptTokenCount, output = candidatesTokenCount + thoughtsTokenCount (or
    totalTokenCount - promptTokenCount when only the total is given). A stream repeats the
    object in every chunk with running totals, so the largest is the last, never a sum. Only a
    chunk holding the key is searched further (a quote in a JSON string is escaped, so the key
    is a key); `whole`: a whole answer, whose own usage is looked for from its end first."""
    if whole:
        at = chunk.rfind(_USAGE_KEY)
        if at < 0 or _gemini_usage_at(chunk, at + _USAGE_KEY_LEN, usage):
            return
    at = chunk.find(_USAGE_KEY)
    while at >= 0:
        at += _USAGE_KEY_LEN
        _gemini_usage_at(chunk, at, usage)
        at = chunk.find(_USAGE_KEY, at)


def _gemini_usage_at(chunk: bytes, start: int, usage: list[int]) -> bool:
    """The counts of the object after the key at `start` into `usage` (when the read ends
    inside the object, those that arrived); whether there were any."""
    found = _USAGE_OBJECT_RE.match(chunk, start)
    counts: dict[Any, Any]
    if found is not None:
        try:
            counts = orjson.loads(found.group(1))
        except orjson.JSONDecodeError:
            return False
        prompt = _count(counts.get("promptTokenCount"))
        candidates = counts.get("candidatesTokenCount")
        thoughts = counts.get("thoughtsTokenCount")
        total = counts.get("totalTokenCount")
    else:
        counts = dict(_USAGE_COUNT_RE.findall(chunk, start, start + _USAGE_SPAN))
        prompt = _count(counts.get(b"promptTokenCount"))
        candidates = counts.get(b"candidatesTokenCount")
        thoughts = counts.get(b"thoughtsTokenCount")
        total = counts.get(b"totalTokenCount")
    if candidates is not None or thoughts is not None:
        output = _count(candidates) + _count(thoughts)
    elif total is not None:
        output = max(0, _count(total) - prompt)
    elif not prompt:
        return False
    else:
        output = 0
    if prompt > usage[0]:
        usage[0] = prompt
    if output > usage[1]:
        usage[1] = output
    return True


def _count(value: object) -> int:
    """A count as the answer wrote it (a number, or digits when read from a cut object)."""
    if type(value) is int:
        return value if 0 <= value < 10**12 else 0  # more is no answer's usage
    if isinstance(value, bytes):
        return int(value)
    return 0


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

    def path_model(self, path: str) -> tuple[str, str] | None:
        """The model a native path names, read as the upstream will read it: the path is
        decoded and its empty segments dropped once, and that same path is what is sent, so
        the model checked is the model served (`/models%2Fx:…`, `/models//x:…` are `x`). A
        path that names no model goes as it came."""
        read = unquote(path) if "%" in path else path
        if "//" in read:
            read = re.sub("/{2,}", "/", read)
        found = _NATIVE_MODEL_RE.match(read)
        if found is not None:  # only plain characters: safe to send as read
            kind, name = found.group(1), found.group(2)
            return read, name if kind == "models" else f"{kind}/{name}"
        if "models" in read.lower() and not _MODEL_LIST_RE.match(read):
            raise ValueError("the model in this path cannot be read")
        return path, ""  # names no model: the model list, files, operations

    def add_key(self, out: list[tuple[str, str]], secret: str) -> None:
        out.append(("x-goog-api-key", secret))

    # Gemini's own answers report `usageMetadata`; the OpenAI-compatible ones are scanned by
    # OPENAI, the dialect `route` gives them.
    scan_usage = staticmethod(scan_gemini_usage)

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
