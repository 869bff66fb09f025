"""Turn an upstream answer into a key-health event, a cooldown end and a retry decision.

Not every 429 is the key's fault and not every error is a 429: quota exhaustion arrives as 429
`insufficient_quota` or 402, Gemini says "API key not valid" with a 400, Anthropic's 529 is
overload. Reset hints come in several dialects; the earliest precise one wins.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from keygate.control.base import Event

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
_QUOTA_RE = re.compile(
    rb"insufficient_quota|quota[ _]exceeded|exceeded your current quota|billing|spend(ing)? limit"
    rb"|credit balance|out of credits|payment required|resource_exhausted.*quota",
    re.IGNORECASE,
)
_INVALID_RE = re.compile(
    rb"api[ _]key[ _]not[ _]valid|invalid[ _]api[ _]key|api_key_invalid|incorrect api key"
    rb"|invalid x-api-key|invalid authentication|key.{0,20}(revoked|deactivated|disabled)",
    re.IGNORECASE,
)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


@dataclass(slots=True)
class Verdict:
    event: Event
    until: float | None  # wall clock, for RATE_LIMITED/EXHAUSTED hints
    retry: bool  # another try may succeed
    key_fault: bool  # the key is to blame: retry on another key at once
    message: str  # short, for last_error (never contains a key)


def parse_duration(text: str) -> float | None:
    """`1.5`, `20ms`, `6m0s`, `1h2m3s` → seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    total, matched = 0.0, False
    for number, unit in _DURATION_RE.findall(text):
        matched = True
        value = float(number)
        total += value / 1000 if unit == "ms" else value * {"h": 3600, "m": 60, "s": 1}[unit]
    return total if matched else None


def reset_hint(headers: dict[str, str], now: float) -> float | None:
    """Wall-clock time the upstream says to come back, from whichever header it used."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return now + float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        seconds = parse_duration(value)
        if seconds is not None:
            return now + seconds
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset"):
        value = headers.get(name)
        if value:
            seconds = parse_duration(value)
            if seconds is not None:
                return now + seconds
    for name in ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset"):
        value = headers.get(name)
        if value:
            try:
                from datetime import datetime

                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
    return None


def classify(
    status: int, headers: dict[str, str], body: bytes, now: float | None = None
) -> Verdict:
    """`headers` with lower-case names; `body` the (bounded) error body."""
    now = time.time() if now is None else now
    if status < 400:
        return Verdict(Event.OK, None, False, False, "")
    snippet = body[:4096]
    if status in (401, 403) or (status == 400 and _INVALID_RE.search(snippet)):
        return Verdict(Event.INVALID, None, True, True, f"{status} invalid key")
    if status == 402 or (status in (429, 403, 400) and _QUOTA_RE.search(snippet)):
        return Verdict(
            Event.EXHAUSTED, reset_hint(headers, now), True, True, f"{status} quota exhausted"
        )
    if status == 429:
        return Verdict(Event.RATE_LIMITED, reset_hint(headers, now), True, True, "429 rate limited")
    if status in RETRYABLE_STATUSES:
        return Verdict(
            Event.PROVIDER_ERROR, reset_hint(headers, now), True, False, f"{status} upstream error"
        )
    if status >= 500:
        return Verdict(Event.PROVIDER_ERROR, None, False, False, f"{status} upstream error")
    return Verdict(Event.CLIENT_ERROR, None, False, False, "")
