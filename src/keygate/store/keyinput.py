"""Keys as people paste them: which tokens a text holds, and which of them can be a key.

Used by the store's imports and, before anything is stored, by the CLI, the admin API and the
configuration checks.
"""

from __future__ import annotations

import json
import re

__all__ = [
    "MAX_SECRET_LEN",
    "MIN_SECRET_LEN",
    "check_secret",
    "parse_key_entries",
    "parse_key_input",
]

MAX_SECRET_LEN = 512
MIN_SECRET_LEN = 8  # every provider's keys are far longer; shorter tokens are paste debris
_QUOTES = "\"'`“”‘’"  # noqa: RUF001 - curly quotes come from pasted text
_DEBRIS = _QUOTES + "[]"  # never part of a key: left over from pasted lists and JSON arrays
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')


def check_secret(secret: str) -> str:
    """Why `secret` cannot be a key ("" if it can): keeps junk out of the pools."""
    if not secret:
        return "empty"
    if len(secret) < MIN_SECRET_LEN:
        return f"shorter than {MIN_SECRET_LEN} characters: not an API key"
    if len(secret) > MAX_SECRET_LEN:
        return f"longer than {MAX_SECRET_LEN} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in secret):
        return "contains whitespace or control characters"
    return ""


def _unquote(token: str) -> str:
    return token.strip().strip(_DEBRIS).strip()


def _json_strings(text: str) -> list[str] | None:
    """The items of a JSON array of strings, or None when `text` is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, list) and all(isinstance(item, str) for item in data):
        return data
    return None


def parse_key_entries(text: str) -> list[tuple[int, str]]:
    """(line number, token) from pasted text: the whole text as one JSON array of strings, or
    per line a JSON array of strings or anything split on commas/whitespace. The line number
    lets an import report point at the entry it refuses.

    Repeats are kept so a batch import can report them as duplicates.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        items = _json_strings(stripped)
        if items is not None:
            lines = _string_lines(text, items)
            return [(n, tok) for n, tok in zip(lines, map(_unquote, items), strict=True) if tok]
    out: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        items = _json_strings(line) if line.startswith("[") else None
        tokens = items if items is not None else line.replace(",", " ").split()
        out.extend((number, tok) for tok in map(_unquote, tokens) if tok)
    return out


def _string_lines(text: str, items: list[str]) -> list[int]:
    """The line each item of a JSON array starts on (1 for all when they cannot be matched)."""
    found = [
        (text.count("\n", 0, m.start()) + 1, json.loads(m.group()))
        for m in _JSON_STRING_RE.finditer(text)
    ]
    if [value for _, value in found] != items:
        return [1] * len(items)
    return [line for line, _ in found]


def parse_key_input(text: str) -> list[str]:
    """Tokens from pasted text (see parse_key_entries), without their line numbers."""
    return [token for _, token in parse_key_entries(text)]
