"""A request's conversation, named so that every turn of it maps to the same pin (SPEC §15).

First match wins: the body's `prompt_cache_key` (OpenAI), the header `x-session-id` or
`x-keygate-session`, Anthropic's `metadata.user_id`; with `affinity: prefix` also a hash of the
stable prefix (provider, model, system prompt, tools, first user message), which every later
turn of the conversation repeats unchanged. Pure: the body comes in parsed, once, by the route
that needed it anyway; the name is a short checksum, so no client text is kept or sent to Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from zlib import crc32

import orjson

SESSION_HEADERS = (b"x-session-id", b"x-keygate-session")
MODES = ("prefix", "header", "off")


def _digest(kind: bytes, value: bytes) -> str:
    """A CRC-32 and the length: two conversations sharing a name would only share a key, so
    speed matters more here than a cryptographic hash (several times the cost on a body of a
    few KB, on every request)."""
    return f"{kind.decode()}{crc32(value):08x}{len(value):x}"


def _role(item: Any) -> Any:
    return item.get("role") if type(item) is dict else None


def stable_prefix(doc: dict[str, Any]) -> tuple[Any, Any, Any] | None:
    """(system prompt, tools, first user message) of a Chat, Messages or Responses body; None
    when it has neither a system prompt nor a user message to name it by."""
    system: Any = None
    first: Any = None
    messages = doc.get("messages")
    if isinstance(messages, list):
        if "system" in doc:  # Messages: the system prompt is its own field
            system = doc["system"]
            first = next((m for m in messages if _role(m) == "user"), None)
        else:  # Chat: the system/developer messages before the first user message
            lead = []
            for m in messages:
                role = m.get("role") if type(m) is dict else None  # `_role`, inline
                if role == "user":
                    first = m
                    break
                if role in ("system", "developer"):
                    lead.append(m)
            system = lead or None
    else:  # Responses: `instructions`, and `input` (a string is the first user message)
        system = doc.get("instructions")
        given = doc.get("input")
        if isinstance(given, str):
            first = given
        elif isinstance(given, list):
            first = next((m for m in given if _role(m) == "user"), None)
    if system is None and first is None:
        return None
    return system, doc.get("tools"), first


def conversation(
    mode: str,
    provider: str,
    headers: Sequence[tuple[bytes, bytes]],
    doc: dict[str, Any] | None,
) -> str | None:
    """The name of the request's conversation (a hex digest), or None when it has none.
    `mode`: the provider's `affinity` (`prefix` or `header`; never called for `off`)."""
    # the explicit names first (inline: this runs on every request of such a provider)
    if doc is not None:
        key = doc.get("prompt_cache_key")
        if key and isinstance(key, str):
            return _digest(b"k", key.encode())
    for name, value in headers:
        if name in SESSION_HEADERS and value:
            return _digest(b"s", value)
    if doc is None:
        return None
    meta = doc.get("metadata")
    if meta:
        user = meta.get("user_id") if isinstance(meta, dict) else None
        if user and isinstance(user, str):
            return _digest(b"u", user.encode())
    if mode != "prefix":
        return None
    prefix = stable_prefix(doc)
    if prefix is None:
        return None
    model = doc.get("model")
    try:
        packed = orjson.dumps((provider, model if isinstance(model, str) else "", *prefix))
    except TypeError:  # not JSON after all (a value orjson cannot write): no name
        return None
    return f"p{crc32(packed):08x}{len(packed):x}"  # `_digest`, inline


def parse(body: bytes | None) -> dict[str, Any] | None:
    """The body as a JSON object, or None (not JSON: only the header can name it)."""
    if not body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
