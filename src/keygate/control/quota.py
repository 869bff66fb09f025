"""Per-key quota windows (SPEC §12): requests and tokens per minute, hour and day, configured
or announced by the upstream, whichever is lower.

Why here: the key pool's "usable now" grows from health alone to health + every window that
applies, and both control forms must give the same answers. This module holds what they share
(the token estimate, the views) and the in-process windows; `scripts/pick.lua` and
`release_key.lua` are their Redis twins. The day boundary is `keygate.config.quotaday`'s and the shape
of an announced budget `keygate.dialects.budget`'s (the settings and the dialects, below, use them too).

A key with no quota configured and nothing announced has `entry.quota is None` and the pick
does no extra work for it.
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import TYPE_CHECKING, Any, TypedDict

from keygate.dialects.budget import Announced, within

if TYPE_CHECKING:
    from keygate.control.base import Pick

WINDOWS = ("rpm", "rph", "rpd", "tpm", "tph", "tpd")
SLIDING = {"rpm": 60.0, "rph": 3600.0, "tpm": 60.0, "tph": 3600.0}
NEARLY_SPENT = 0.1  # a window with less than this share left: use the key before it resets
LOOKAHEAD = 4  # usable keys compared by the pick when the first one is nearly spent


# --- the token estimate ---------------------------------------------------------------------

_MAX_RE = re.compile(rb'"(?:max_tokens|max_completion_tokens|maxOutputTokens)"\s*:\s*(\d{1,9})')


def estimate_tokens(body: bytes, default_max_tokens: int) -> int:
    """Prompt bytes / 4 + the completion the request allows (`max_tokens`,
    `max_completion_tokens`, Gemini's `maxOutputTokens`), else `default_max_tokens`.
    A search, not a JSON parse: the body is parsed once, by the upstream. The largest such
    field counts, so a small one nested in a tool's schema cannot shrink the estimate
    (`estimate_parsed` reads the top level's own, where the body was parsed anyway)."""
    found = _MAX_RE.findall(body)
    return len(body) // 4 + (max(map(int, found)) if found else default_max_tokens)


_MAX_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MAX_ESTIMATE = 10**9  # a completion allowance past this is no real request's


def estimate_parsed(doc: dict[str, Any], size: int, default_max_tokens: int) -> int:
    """`estimate_tokens` for a body already parsed: the request's own top-level allowance
    (a `max_tokens` nested in a tool's schema says nothing about the answer's length)."""
    allowed: object = None
    for name in _MAX_FIELDS:
        if name in doc:
            allowed = doc[name]
            break
    else:
        config = doc.get("generationConfig")
        if isinstance(config, dict):
            allowed = config.get("maxOutputTokens")
    if isinstance(allowed, bool) or not isinstance(allowed, int | float) or not allowed >= 0:
        allowed = default_max_tokens
    return size // 4 + int(min(allowed, MAX_ESTIMATE))


class Ticket:
    """One client request as the quota windows see it: its token estimate (computed only when
    a pick needs it), what the latest pick charged, and the usage the answer reports."""

    __slots__ = ("_tokens", "body", "charge", "default_max", "usage", "waited")

    def __init__(
        self, body: bytes | None, default_max: int, usage: list[int], tokens: int = -1
    ) -> None:
        self.body = body or b""
        self.default_max = default_max
        self._tokens = tokens  # -1: estimated from the body when a pick first needs it
        self.usage = usage  # the request's [tokens_in, tokens_out], filled by the relay
        self.charge: tuple[float, int, object] | None = None  # (at, tokens, form's handle)
        self.waited = 0.0  # seconds spent waiting for a quota reset

    @property
    def tokens(self) -> int:
        if self._tokens < 0:
            self._tokens = estimate_tokens(self.body, self.default_max) if self.body else 0
        return self._tokens

    def actual(self, charged: int) -> int:
        """Tokens the answer reported, else what was charged (no usage: keep the estimate)."""
        used = self.usage[0] + self.usage[1]
        return used if used > 0 else charged


def quota_delay(pick: Pick, ticket: Ticket | None, timeout_s: float) -> float:
    """Seconds to wait for the earliest quota reset before picking again, when every key's
    quota (not its health) holds it back and the wait fits in the queue timeout; else 0."""
    wait = pick.wait
    if not pick.quota or wait is None or ticket is None or ticket.waited + wait > timeout_s:
        return 0.0
    delay = wait + 0.005  # just after the reset, never just before
    ticket.waited += delay
    return delay


# --- announced budgets ------------------------------------------------------------------------


# --- the in-process windows ---------------------------------------------------------------------


class KeyQuota:
    """One key's windows in process: the charges of the last minute and of the last hour
    (`[at, tokens]`, oldest first, trimmed as they age: their number is the requests, their sum
    the tokens), the day's counters, and what the upstream announced."""

    __slots__ = ("ann", "cut", "day", "flushed", "h", "hsum", "m", "msum", "rd", "snug", "td")

    def __init__(self) -> None:
        self.m: deque[list[float]] = deque()  # [at, tokens], tokens corrected in place
        self.h: deque[list[float]] = deque()  # the same items, kept for an hour
        self.msum = 0.0
        self.hsum = 0.0
        self.day = 0.0  # start of the day the counters belong to
        self.rd = 0
        self.td: float = 0  # a float once an answer's usage has corrected a charge
        self.flushed: tuple[float, int, float] = (0.0, 0, 0)  # (day, rd, td) at the last flush
        self.cut = 0.0  # the time of the last trim: charges after cut - span are still held
        self.snug = False  # the last check found a window over 90% used (see nearly_spent)
        # window -> [remaining, reset_at, limit, period, tentative]
        self.ann: dict[str, list[float]] = {}

    def unflushed(self) -> tuple[float, int, float] | None:
        """(day, requests, tokens) counted since the last flush; None when nothing was."""
        day, rd, td = self.flushed
        if day != self.day:
            rd = td = 0
        if self.rd == rd and self.td == td:
            return None
        return self.day, self.rd - rd, self.td - td

    def restore(self, day: float, requests: int, tokens: int) -> None:
        """The day's counters as the store has them (a restart mid-day)."""
        self.day, self.rd, self.td = day, requests, tokens
        self.flushed = (day, requests, tokens)

    def trim(self, now: float) -> None:
        self.cut = now
        m = self.m
        h = now - 60.0
        while m and m[0][0] <= h:
            self.msum -= m.popleft()[1]
        hr = self.h
        h = now - 3600.0
        while hr and hr[0][0] <= h:
            self.hsum -= hr.popleft()[1]

    def roll(self, day: float) -> None:
        if self.day != day:
            self.day = day
            self.rd = self.td = 0

    def announced(self, window: str, now: float) -> list[float] | None:
        """The live announcement for `window`; one past its reset starts the next period
        full (tentatively: the next answer's word replaces it), or is dropped."""
        a = self.ann.get(window)
        if a is None or now < a[1]:
            return a
        if a[2] > 0 and a[3] > 0:
            a[0] = a[2]
            a[1] += a[3] * math.ceil((now - a[1]) / a[3] + 1e-9)
            a[4] = 1.0
            return a
        del self.ann[window]
        return None

    def wait(
        self,
        limits: tuple[int, int, int, int, int, int],
        now: float,
        cost: int,
        day_end: float,
    ) -> float:
        """0 when one more request of `cost` tokens fits every window now, else the seconds
        until it would (the longest of the waits of the windows that refuse it)."""
        rpm, rph, rpd, tpm, tph, tpd = limits
        m, h = self.m, self.h
        nm, nh = len(m), len(h)
        if (
            (not rpm or nm < rpm * 0.9)
            and (not rph or nh < rph * 0.9)
            and (not rpd or self.rd < rpd * 0.9)
            and (not tpm or self.msum + cost <= tpm * 0.9)
            and (not tph or self.hsum + cost <= tph * 0.9)
            and (not tpd or self.td + cost <= tpd * 0.9)
            and not self.ann
        ):
            self.snug = False
            return 0.0  # the usual case: room in every window, nothing announced
        self.snug = True
        wait = 0.0
        if rpm and nm >= rpm:
            wait = max(wait, m[nm - rpm][0] + 60.0 - now)
        if rph and nh >= rph:
            wait = max(wait, h[nh - rph][0] + 3600.0 - now)
        if rpd and self.rd >= rpd:
            wait = max(wait, day_end - now)
        if tpm and self.msum + min(cost, tpm) > tpm:
            wait = max(wait, _token_wait(m, self.msum, tpm, cost, 60.0, now))
        if tph and self.hsum + min(cost, tph) > tph:
            wait = max(wait, _token_wait(h, self.hsum, tph, cost, 3600.0, now))
        if tpd and self.td + min(cost, tpd) > tpd:
            wait = max(wait, day_end - now)
        if self.ann:
            for window in list(self.ann):
                a = self.announced(window, now)
                if a is None:
                    continue
                need = 1 if window[0] == "r" else cost
                if a[2]:
                    need = min(need, int(a[2]))  # larger than a whole period: when it is full
                if a[0] < need:
                    wait = max(wait, a[1] - now)
        return wait

    def nearly_spent(
        self, limits: tuple[int, int, int, int, int, int], now: float, day_end: float
    ) -> float | None:
        """When a window has less than NEARLY_SPENT of its limit left: when the soonest such
        window resets (its quota is lost then if unused); else None."""
        rpm, rph, rpd, tpm, tph, tpd = limits
        m, h = self.m, self.h
        soon: float | None = None
        if (rpm and rpm - len(m) < rpm * NEARLY_SPENT) or (
            tpm and tpm - self.msum < tpm * NEARLY_SPENT
        ):
            soon = m[0][0] + 60.0 if m else now
        if (rph and rph - len(h) < rph * NEARLY_SPENT) or (
            tph and tph - self.hsum < tph * NEARLY_SPENT
        ):
            reset = h[0][0] + 3600.0 if h else now
            soon = reset if soon is None or reset < soon else soon
        if (rpd and rpd - self.rd < rpd * NEARLY_SPENT) or (
            tpd and tpd - self.td < tpd * NEARLY_SPENT
        ):
            soon = day_end if soon is None or day_end < soon else soon
        if self.ann:
            for a in self.ann.values():
                if a[2] and a[0] < a[2] * NEARLY_SPENT and (soon is None or a[1] < soon):
                    soon = a[1]
        return soon

    def charge(self, now: float, cost: int) -> list[float]:
        item = [now, float(cost)]
        self.m.append(item)
        self.h.append(item)
        self.msum += cost
        self.hsum += cost
        self.rd += 1
        self.td += cost
        if self.ann:
            for window, a in self.ann.items():
                a[0] -= 1 if window[0] == "r" else cost
        return item

    def correct(self, item: list[float], tokens: int, now: float) -> None:
        """The answer's usage replaces the estimate charged at the pick."""
        delta = tokens - item[1]
        if not delta:
            return
        at = item[0]
        if at > self.cut - 60.0:  # not trimmed away yet: the sum still holds it
            self.msum += delta
        if at > self.cut - 3600.0:
            self.hsum += delta
        item[1] = float(tokens)
        if at >= self.day:
            self.td = max(0, self.td + delta)
        for window, a in self.ann.items():
            if window[0] == "t" and not a[4]:
                a[0] -= delta

    def announce(self, found: list[Announced], now: float, others: int, cost: int) -> None:
        """An answer's budgets: the lower of what we knew and what it says (less the tries
        still in flight that it may not have counted yet) holds until its reset. One whose
        reset is further away than its window allows says nothing (the dialects drop those
        already; a minute's budget never holds a key for a day)."""
        for b in found:
            if not within(b.window, b.reset_at - now):
                continue
            held = (others if b.window[0] == "r" else others * cost) if others > 0 else 0
            remaining = b.remaining - held
            old = self.announced(b.window, now)
            if (
                old is not None
                and not old[4]
                and old[0] <= remaining
                and b.reset_at <= old[1] + 0.5
            ):
                if b.limit:
                    old[2] = b.limit
                continue
            self.ann[b.window] = [
                float(remaining),
                b.reset_at,
                float(b.limit),
                max(0.0, b.reset_at - now),
                0.0,
            ]

    def rows(
        self, limits: tuple[int, int, int, int, int, int], now: float, day_end: float
    ) -> QuotaView:
        """The SPEC §12 view of these windows (see `view_rows`)."""
        self.trim(now)
        m, h = self.m, self.h
        used = (len(m), len(h), self.rd, round(self.msum), round(self.hsum), self.td)
        first_m = m[0][0] + 60.0 if m else None
        first_h = h[0][0] + 3600.0 if h else None
        ann = {w: a for w in list(self.ann) if (a := self.announced(w, now)) is not None}
        return view_rows(limits, used, (first_m, first_h, day_end), ann)


class WindowRow(TypedDict):
    """One window as SPEC §12 shows it; None: unknown."""

    used: float | None  # requests or tokens (a float where usage corrected an estimate)
    limit: int | None
    reset_at: float | None


QuotaView = dict[str, WindowRow]  # window (`rpm` … `tpd`) -> its row


def view_rows(
    limits: tuple[int, int, int, int, int, int],
    used: tuple[int, int, int, int, int, float],
    resets: tuple[float | None, float | None, float],
    ann: dict[str, list[float]],
) -> QuotaView:
    """Per window: used, limit (configured or announced, the lower; None: unknown) and when it
    resets (`resets`: the minute's, the hour's, the day's)."""
    out: QuotaView = {}
    for i, window in enumerate(WINDOWS):
        limit: int | None = limits[i] or None
        reset = resets[i % 3]
        u: float | None = used[i]
        a = ann.get(window)
        if a is not None:
            ann_limit = int(a[2]) if a[2] else None
            if ann_limit is not None and (limit is None or ann_limit < limit):
                limit = ann_limit
            if limit is not None:
                u = max(u or 0, limit - int(a[0]))
            reset = a[1]
        out[window] = {"used": u, "limit": limit, "reset_at": reset}
    return out


def _token_wait(
    log: deque[list[float]], total: float, limit: int, cost: int, span: float, now: float
) -> float:
    need = min(cost, limit)
    if total + need <= limit:
        return 0.0
    for at, n in log:
        total -= n
        if total + need <= limit:
            return at + span - now
    return 0.0


def empty_view() -> QuotaView:
    return {w: {"used": None, "limit": None, "reset_at": None} for w in WINDOWS}
