"""Errors across families: what cannot be translated, and upstream refusals in the client's
shape (the status stays; the `type` is the one the client's SDK maps to its exception)."""

from __future__ import annotations

from typing import Any

import orjson

from keygate.translate.tables import anthropic_error_type, openai_error_type

MESSAGE_MAX = 2000  # characters of an upstream's error text carried over


class Untranslatable(ValueError):
    """Input keygate cannot carry over faithfully; `field` names where, as a JSON path."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


def upstream_message(body: bytes, status: int) -> str:
    """The human text of an error body of any family (OpenAI, Anthropic, Gemini, plain text)."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:MESSAGE_MAX] or f"upstream answered HTTP {status}"
    if isinstance(doc, list) and doc:
        doc = doc[0]  # Gemini's compatible API sometimes wraps its error in a list
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, str):
            return err[:MESSAGE_MAX]
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if isinstance(msg, str) and msg:
                return msg[:MESSAGE_MAX]
        msg = doc.get("message") or doc.get("detail")
        if isinstance(msg, str) and msg:
            return msg[:MESSAGE_MAX]
    return f"upstream answered HTTP {status}"


def upstream_code(body: bytes) -> str | None:
    """An OpenAI-style `code` or an Anthropic error `type`, kept as the translated `code`."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        if isinstance(code, str | int):
            return str(code)
    return None


def anthropic_error(status: int, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    )


def openai_error(status: int, message: str, code: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": openai_error_type(status),
                "param": None,
                "code": code,
            }
        }
    )
