"""Turn an upstream answer into a key-health event, a cooldown end and a retry decision.

Not every 429 is the key's fault and not every error is a 429: quota exhaustion arrives as 429
`insufficient_quota` or 402, Gemini says "API key not valid" with a 400, Anthropic's 529 is
overload. Reset hints come in each family's own headers; the dialect reads them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from keygate.config.error_rules import ErrorRule, ErrorRules
from keygate.control.base import Event
from keygate.dialects.base import EVERY_RESET, parse_duration, read_reset

__all__ = ["RETRYABLE_STATUSES", "Verdict", "classify", "parse_duration", "reset_hint"]

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


@dataclass(slots=True)
class Verdict:
    event: Event
    until: float | None  # wall clock, for RATE_LIMITED/EXHAUSTED hints
    retry: bool  # another try may succeed
    key_fault: bool  # the key is to blame: retry on another key at once
    message: str  # short, for last_error (never contains a key)


def reset_hint(headers: Mapping[str, str], now: float) -> float | None:
    """Wall-clock time the upstream says to come back, from whichever family's header it used
    (a dialect reads only its own family's: `Dialect.reset_hint`). Never raises; a value that
    is no plain number, duration or date, or one more than a day away, is no hint (None)."""
    return read_reset(headers, now, EVERY_RESET)


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    hint: Callable[[Mapping[str, str], float], float | None] = reset_hint,
    rules: ErrorRules | None = None,
) -> Verdict:
    """`headers` with lower-case names; `body` the (bounded) error body; `hint` reads reset
    times (the answering dialect's `reset_hint`); `rules` the provider's error rules, whose
    first match decides before the built-in judgement (SPEC §15)."""
    now = time.time() if now is None else now
    if status < 400:
        return Verdict(Event.OK, None, False, False, "")
    if rules:
        rule = rules.find(status, body)
        if rule is not None:
            return by_rule(rule, status, headers, now, hint)
    snippet = body[:4096]
    if status in (401, 403) or (status == 400 and _INVALID_RE.search(snippet)):
        return Verdict(Event.INVALID, None, True, True, f"{status} invalid key")
    if status == 402 or (status in (429, 403, 400) and _QUOTA_RE.search(snippet)):
        return Verdict(Event.EXHAUSTED, hint(headers, now), True, True, f"{status} quota exhausted")
    if status == 429:
        return Verdict(Event.RATE_LIMITED, hint(headers, now), True, True, "429 rate limited")
    if status in RETRYABLE_STATUSES:
        return Verdict(
            Event.PROVIDER_ERROR, hint(headers, now), True, False, f"{status} upstream error"
        )
    if status >= 500:
        return Verdict(Event.PROVIDER_ERROR, None, False, False, f"{status} upstream error")
    return Verdict(Event.CLIENT_ERROR, None, False, False, "")


def by_rule(
    rule: ErrorRule,
    status: int,
    headers: Mapping[str, str],
    now: float,
    hint: Callable[[Mapping[str, str], float], float | None],
) -> Verdict:
    """What an error rule's action makes of an answer: the key's four actions set it aside
    and try another key at once (as after a 401); `provider` retries with the provider's
    backoff, the key untouched; `pass` relays the answer as it came."""
    action = rule.action
    message = f"{status} {action} by error_rules[{rule.index}]"
    if action == "invalid":
        return Verdict(Event.INVALID, None, True, True, message)
    if action == "exhausted":
        return Verdict(Event.EXHAUSTED, hint(headers, now), True, True, message)
    if action == "cool":
        return Verdict(Event.COOLING, now + rule.cool_s, True, True, message)
    if action == "disable":
        return Verdict(Event.DISABLED, None, True, True, message)
    if action == "provider":
        return Verdict(Event.PROVIDER_ERROR, hint(headers, now), True, False, message)
    return Verdict(Event.CLIENT_ERROR, None, False, False, message)  # pass
