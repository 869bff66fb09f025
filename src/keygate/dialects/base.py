"""The shape every API family (a dialect) fills in, and what the families share.

A dialect answers what the request path would otherwise answer with compares on `key_style`:
how the key travels, what a bare prefix means and how paths are rewritten, where the model
list is, how an error looks to that family's SDK, where usage and reset hints are in an answer.
A provider is a dialect + base URL + limits. Dialects are stateless singletons: the request path
calls their methods and builds nothing per request on their behalf.

Seams for what comes next: `route` already answers the dialect spoken on the upstream path,
which translation (one family's client, another family's upstream) hooks onto; `read_budget`
reads the per-key budgets an answer announces in its headers (SPEC §12).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import ClassVar

from keygate.dialects.budget import COUNT_MAX, LONGEST_RESET_S, Announced, window_for, within

Headers = Sequence[tuple[bytes, bytes]]
# A reset hint's parser: the header's value and the wall clock now → when to come back.
ResetParser = Callable[[str, float], "float | None"]

# Numbers in headers (SPEC §12) are read strictly, in ASCII, and bounded: anything else (inf,
# nan, signs, exponents, hex, other scripts' digits, thousands of digits, a date years away) is
# ignored, never an exception (a budget is read in the relay's `finally`, before the key goes
# back). No number, duration or date a provider sends is longer than _LONGEST_VALUE.
_LONGEST_VALUE = 64
_DECIMAL_RE = re.compile(r"([0-9]+)(?:\.[0-9]+)?")
_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_COUNT_DIGITS = len(str(COUNT_MAX)) - 1  # this many digits are always below COUNT_MAX
_DATE_ERRORS = (ArithmeticError, LookupError, TypeError, ValueError, OSError)
# a count of more than 12 digits is no answer's usage (it would break every sum it joins)
_USAGE_RE = re.compile(rb'"(prompt|completion|input|output)_tokens"\s*:\s*(\d{1,12})(?!\d)')
_INPUT_NAMES = frozenset((b"prompt", b"input"))


def parse_count(value: str | None) -> int | None:
    """An announced count (remaining, limit): ASCII digits, a fraction dropped, more than
    COUNT_MAX clamped to it (that much is plenty); anything else None."""
    if not value:
        return None
    if not (value.isdigit() and value.isascii()):  # plain digits, the usual case, skip this
        m = _DECIMAL_RE.fullmatch(value.strip()) if len(value) <= _LONGEST_VALUE else None
        if m is None:
            return None
        value = m.group(1)
    if len(value) > _COUNT_DIGITS:
        value = value.lstrip("0")
        if len(value) > _COUNT_DIGITS:
            return COUNT_MAX
    return int(value or "0")


def _decimal(text: str) -> bool:
    """`text` is ASCII digits with at most one `.` among them (what float() then reads)."""
    digits = text.replace(".", "", 1)
    return digits.isdigit() and digits.isascii()


def parse_duration(text: str) -> float | None:
    """`1.5`, `20ms`, `6m0s`, `1h2m3s` → seconds, finite and ≥ 0; None for anything else."""
    if len(text) > _LONGEST_VALUE:
        return None
    text = text.strip()
    if text[-1:].isdigit():  # a number of seconds
        return float(text) if _decimal(text) else None
    total, size = 0.0, 0
    for number, unit in _PART_RE.findall(text):
        total += float(number) * _UNITS[unit]
        size += len(number) + len(unit)
    return total if size and size == len(text) else None  # every character in a part


def _near(moment: float, now: float) -> float | None:
    """`moment` when it is within LONGEST_RESET_S of `now` (no window resets later), else
    None: out of range, not believed."""
    return moment if -LONGEST_RESET_S <= moment - now <= LONGEST_RESET_S else None


def after_ms(value: str, now: float) -> float | None:
    value = value.strip()
    if len(value) > _LONGEST_VALUE or not _decimal(value):
        return None
    return _near(now + float(value) / 1000, now)


def after_duration(value: str, now: float) -> float | None:
    seconds = parse_duration(value)
    return None if seconds is None else _near(now + seconds, now)


def retry_after(value: str, now: float) -> float | None:
    """RFC 9110 Retry-After: seconds or an HTTP date (a duration such as `1m30s` too)."""
    seconds = parse_duration(value)
    if seconds is not None:
        return _near(now + seconds, now)
    if len(value) > _LONGEST_VALUE:
        return None
    try:
        return _near(parsedate_to_datetime(value).timestamp(), now)
    except _DATE_ERRORS:
        return None


def at_iso(value: str, now: float) -> float | None:
    if len(value) > _LONGEST_VALUE:
        return None
    try:
        return _near(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp(), now)
    except _DATE_ERRORS:
        return None


# Reset hints as each family sends them, in the order they are trusted.
RETRY_AFTER: tuple[tuple[str, ResetParser], ...] = (
    ("retry-after-ms", after_ms),
    ("retry-after", retry_after),
)
OPENAI_RESETS: tuple[tuple[str, ResetParser], ...] = (
    ("x-ratelimit-reset-requests", after_duration),
    ("x-ratelimit-reset-tokens", after_duration),
    ("x-ratelimit-reset", after_duration),
)
ANTHROPIC_RESETS: tuple[tuple[str, ResetParser], ...] = (
    ("anthropic-ratelimit-requests-reset", at_iso),
    ("anthropic-ratelimit-tokens-reset", at_iso),
)
EVERY_RESET = RETRY_AFTER + OPENAI_RESETS + ANTHROPIC_RESETS


def read_reset(
    headers: Mapping[str, str], now: float, names: Sequence[tuple[str, ResetParser]]
) -> float | None:
    """Wall-clock time the upstream says to come back: the first of `names` that parses."""
    for name, parse in names:
        value = headers.get(name)
        if value:
            moment = parse(value, now)
            if moment is not None:
                return moment
    return None


def _budget(
    out: list[Announced],
    kind: str,
    remaining: str | None,
    reset: str | None,
    limit: str | None,
    now: float,
    at: ResetParser,
    window: str = "",
) -> None:
    """One announced window: `kind` r(equests) or t(okens); the window is named by the header
    (Cerebras' -day, -minute) or follows from how far away its reset is. A count that is no
    count, or a reset further away than its window allows, says nothing."""
    left = parse_count(remaining)
    if left is None or not reset:
        return
    moment = at(reset, now)
    if moment is None:
        return
    name: str | None
    if window:
        if not within(window, moment - now):
            return
        name = window
    else:
        name = window_for(kind, moment - now)
        if name is None:
            return
    out.append(Announced(name, left, moment, parse_count(limit) or 0))


def openai_budget(headers: Mapping[str, str], now: float) -> list[Announced] | None:
    """OpenAI and Groq: `x-ratelimit-{remaining,reset,limit}-{requests,tokens}`; Cerebras:
    the same names with `-day` (requests) and `-minute` (tokens)."""
    get = headers.get
    rr, rt = get("x-ratelimit-remaining-requests"), get("x-ratelimit-remaining-tokens")
    rd, tm = get("x-ratelimit-remaining-requests-day"), get("x-ratelimit-remaining-tokens-minute")
    if rr is None and rt is None and rd is None and tm is None:
        return None
    out: list[Announced] = []
    for kind, left, name, suffix in (
        ("r", rr, "", "requests"),
        ("t", rt, "", "tokens"),
        ("r", rd, "rpd", "requests-day"),
        ("t", tm, "tpm", "tokens-minute"),
    ):
        if left is not None:
            _budget(
                out,
                kind,
                left,
                get("x-ratelimit-reset-" + suffix),
                get("x-ratelimit-limit-" + suffix),
                now,
                after_duration,
                name,
            )
    return out or None


def anthropic_budget(headers: Mapping[str, str], now: float) -> list[Announced] | None:
    """`anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{remaining,reset,
    limit}`; the input and output budgets bound the total, so the lowest token one counts."""
    get = headers.get
    rr = get("anthropic-ratelimit-requests-remaining")
    found: list[Announced] = []
    if rr is not None:
        _budget(
            found,
            "r",
            rr,
            get("anthropic-ratelimit-requests-reset"),
            get("anthropic-ratelimit-requests-limit"),
            now,
            at_iso,
        )
    tokens: list[Announced] = []
    for name in ("tokens", "input-tokens", "output-tokens"):
        left = get(f"anthropic-ratelimit-{name}-remaining")
        if left is not None:
            _budget(
                tokens,
                "t",
                left,
                get(f"anthropic-ratelimit-{name}-reset"),
                get(f"anthropic-ratelimit-{name}-limit"),
                now,
                at_iso,
            )
    if tokens:
        found.append(min(tokens, key=lambda b: b.remaining))
    return found or None


def scan_usage(chunk: bytes, usage: list[int], whole: bool = False) -> None:
    """Keep the largest token counts the upstream reported (input, output) in `usage`.
    Only the few hundred bytes after each `"usage"` are searched, not the whole answer.
    `whole`: `chunk` is a whole JSON answer, whose own `usage` comes last (a quote inside a
    JSON string is escaped, so `"usage"` is a key or a string value): looked for from the
    end first, the whole answer searched only when that one holds no counts."""
    if whole:
        at = chunk.rfind(b'"usage"')
        if at < 0 or _usage_at(chunk, at, usage):
            return
    at = chunk.find(b'"usage"')
    while at >= 0:
        _usage_at(chunk, at, usage)
        at = chunk.find(b'"usage"', at + 7)


def _usage_at(chunk: bytes, at: int, usage: list[int]) -> bool:
    found = False
    for name, value in _USAGE_RE.findall(chunk, at, at + 400):
        n = int(value)
        slot = 0 if name in _INPUT_NAMES else 1
        if n > usage[slot]:
            usage[slot] = n
        found = True
    return found


class Dialect:
    """One API family. Subclasses set the data and override what their family does differently;
    one instance of each lives in the registry (`keygate.dialects`)."""

    key_style: ClassVar[str]  # the provider config's `key_style` value naming this family
    default_path: ClassVar[str] = "/v1/chat/completions"  # what `/{provider}` stands for
    models_path: ClassVar[str] = "/v1/models"  # the cheap authenticated request of key tests
    reset_headers: ClassVar[Sequence[tuple[str, ResetParser]]] = RETRY_AFTER
    # where this family's clients put their credential: never forwarded, whatever the dialect
    credential_headers: ClassVar[tuple[bytes, ...]] = (b"authorization",)

    def route(self, rest: str, headers: Headers) -> tuple[str, Dialect]:
        """The path on the upstream for the client's path after the prefix, and the dialect
        spoken there (whose key style, error shape and usage fields apply to this request)."""
        if rest in ("", "/"):
            rest = self.default_path
        return rest, self

    def path_model(self, path: str) -> tuple[str, str] | None:
        """For a family whose paths name the model: (the path as it will be sent, the model
        it names, '' for none); a ValueError when the path names a model in a form this
        cannot read. None (every family but Gemini's native API): the body names it."""
        return None

    def add_key(self, out: list[tuple[str, str]], secret: str) -> None:
        """Append the headers that carry `secret` (and any the family requires with it)."""
        out.append(("authorization", "Bearer " + secret))

    def models_request(self, base_url: str, secret: str) -> tuple[str, dict[str, str]]:
        """URL and headers of the model list, the request that tells whether a key works."""
        headers: list[tuple[str, str]] = []
        self.add_key(headers, secret)
        return base_url + self.models_path, dict(headers)

    def error_body(self, status: int, message: str, code: str | None) -> bytes:
        """keygate's own error, in the shape this family's SDKs parse into an exception."""
        raise NotImplementedError

    # Usage fields: OpenAI's and Anthropic's names (the OpenAI Responses API uses Anthropic's).
    scan_usage = staticmethod(scan_usage)

    def reset_hint(self, headers: Mapping[str, str], now: float) -> float | None:
        """`headers` with lower-case names."""
        return read_reset(headers, now, self.reset_headers)

    def read_budget(self, headers: Mapping[str, str]) -> list[Announced] | None:
        """What an answer says is left of the key's budget (remaining requests and tokens,
        and when they reset); `headers` looked up case-insensitively. None: nothing said."""
        return openai_budget(headers, time.time())
