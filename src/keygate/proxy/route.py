"""Where a request goes: provider prefix → upstream path, the gemini rewrite, model fill."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from keygate.providers import chat_path
from keygate.settings import ProviderConfig

# Paths whose JSON body carries a `model` the provider's default may fill or force.
_MODEL_PATHS = ("/chat/completions", "/completions", "/messages", "/embeddings", "/responses")


@dataclass(slots=True)
class Target:
    provider: str
    path: str  # on the upstream, starts with "/"
    query: bytes  # without the client's ?key=
    native_gemini: bool  # gemini native API: key goes in x-goog-api-key


def split_prefix(path: str, default_provider: str) -> tuple[str, str]:
    """`/groq/v1/x` → ("groq", "/v1/x"); `/v1/x` → (default, "/v1/x")."""
    if path.startswith("/v1/") or path == "/v1":
        return default_provider, path
    slash = path.find("/", 1)
    if slash < 0:
        return path[1:], ""
    return path[1:slash], path[slash:]


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


def native_gemini(rest: str, goog_key: bool) -> bool:
    """Whether a Gemini request speaks the native API (key in x-goog-api-key) rather than the
    OpenAI-compatible one. The Google SDKs send `/v1/…` or `/v1beta/…` method paths with
    x-goog-api-key; OpenAI clients send `/v1/chat/completions`, `/v1/models`, `/v1/embeddings`
    with a bearer token. `/v1beta/openai/…` is always the OpenAI-compatible API."""
    if rest.startswith("/v1beta/openai") and rest[14:15] in ("", "/"):
        return False
    if rest.startswith(_OPENAI_ONLY):
        return False  # no native method has these names: rewrite even with x-goog-api-key
    if goog_key or _NATIVE_METHOD_RE.match(rest.partition("?")[0]):
        return True
    return not (rest.startswith("/v1/") or rest == "/v1")


def upstream_path(
    cfg: ProviderConfig, rest: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[str, bool]:
    """The path on the upstream and whether it is Gemini's native API; only OpenAI-compatible
    Gemini requests under `/v1` are rewritten to `/v1beta/openai`."""
    if rest in ("", "/"):
        rest = chat_path(cfg.key_style)
    if cfg.key_style != "gemini":
        return rest, False
    if native_gemini(rest, any(name == b"x-goog-api-key" for name, _ in headers)):
        return rest, True
    if rest.startswith("/v1/"):
        return "/v1beta/openai/" + rest[4:], False
    if rest == "/v1":
        return "/v1beta/openai", False
    return rest, False


def resolve_dots(rest: str) -> str:
    """Remove `.` and `..` segments (`%2e` spelt too) from the path after the provider prefix,
    as RFC 3986 §5.2.4 does, so the upstream URL cannot climb out of the provider's base. Other
    segments keep the client's encoding (`%2F`, `%20`). A path that climbs above the base is
    refused (ValueError)."""
    if "." not in rest and "%2" not in rest:
        return rest  # nothing that could be a dot segment: the usual case
    segments = rest.split("/")
    out: list[str] = []
    trailing = False
    for segment in segments[1:]:  # rest starts with "/"
        dots = segment.replace("%2e", ".").replace("%2E", ".")
        trailing = dots in (".", "..")
        if dots == ".":
            continue
        if dots == "..":
            if not out:
                raise ValueError("path leaves the provider's base")
            out.pop()
            continue
        out.append(segment)
    path = "/" + "/".join(out)
    if trailing and out:
        path += "/"  # `/a/b/..` is the folder `/a/`
    return path


def apply_model(body: bytes, cfg: ProviderConfig, path: str) -> bytes:
    """Fill the default model when none is named, or force it. Bodies are parsed only for
    providers that have a default model, and only on model-bearing paths."""
    if not cfg.default_model or not body or not path.endswith(_MODEL_PATHS):
        return body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # not ours to judge: the upstream answers a malformed body
    if not isinstance(doc, dict):
        return body
    if cfg.force_model:
        if doc.get("model") == cfg.default_model:
            return body
    elif doc.get("model"):
        return body
    doc["model"] = cfg.default_model
    return orjson.dumps(doc)


def find_model(body: bytes) -> str:
    """The model name for logs and the recent-requests view, without parsing the body."""
    at = body.find(b'"model"')
    if at < 0:
        return ""
    start = body.find(b'"', body.find(b":", at + 7) + 1)
    if start < 0:
        return ""
    end = body.find(b'"', start + 1)
    if end < 0 or end - start > 200:
        return ""
    return body[start + 1 : end].decode("utf-8", "replace")
