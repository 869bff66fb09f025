"""Where a request goes: provider prefix, dot segments, model fill. The rest of the path is the
dialect's to map (`Dialect.route`)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from keygate.config.settings import ProviderConfig

# Paths whose JSON body carries a `model` the provider's default may fill or force.
_MODEL_PATHS = ("/chat/completions", "/completions", "/messages", "/embeddings", "/responses")


def split_prefix(path: str, default_provider: str) -> tuple[str, str]:
    """`/groq/v1/x` → ("groq", "/v1/x"); `/v1/x` → (default, "/v1/x")."""
    if path.startswith("/v1/") or path == "/v1":
        return default_provider, path
    slash = path.find("/", 1)
    if slash < 0:
        return path[1:], ""
    return path[1:slash], path[slash:]


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


def apply_model(
    body: bytes, cfg: ProviderConfig, path: str, parsed: dict[str, Any] | None = None
) -> bytes:
    """Fill the default model when none is named, or force it. Bodies are parsed only for
    providers that have a default model, and only on model-bearing paths (`parsed`: the body
    already parsed, left as it is)."""
    if not cfg.default_model or not body or not path.endswith(_MODEL_PATHS):
        return body
    if parsed is not None:
        doc = dict(parsed)
    else:
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


# the first `"model"` key with a string value, its name (up to 199 bytes) the group: one
# search, where four `find`s cost twice as much
MODEL_VALUE = re.compile(rb'"model"\s*:\s*"([^"]{0,199})"')


def find_model(body: bytes) -> str:
    """The model name for logs and the recent-requests view, without parsing the body."""
    found = MODEL_VALUE.search(body)
    return "" if found is None else found.group(1).decode("utf-8", "replace")
