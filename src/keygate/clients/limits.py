"""The one interface that counts a client's limits: `check` before a request goes anywhere,
`settle` once its answer told the real token count.

Kept deliberately small and self-contained (a sliding minute, the UTC day, the UTC month):
one instance's form, and the fallback of the fleet's (`clients.fleet`, on Redis), which
mirrors its counts here.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from keygate.clients.periods import PERIODS


class Limited(Protocol):
    """What the windows read of a client: its limits (0 = none) and its window state."""

    id: int
    rpm: int
    rpd: int
    tpd: int
    monthly_tokens: int
    windows: Windows


class Windows:
    """One client's counts: request times of the last minute; the day's requests and tokens;
    the month's tokens. Day and month restart at their UTC boundary."""

    __slots__ = ("day", "day_requests", "day_tokens", "minute", "month", "month_tokens")

    def __init__(self) -> None:
        self.minute: deque[float] = deque()
        self.day = self.month = ""
        self.day_requests = self.day_tokens = self.month_tokens = 0

    def roll(self, now: float) -> None:
        p = PERIODS.at(now)
        if self.day != p.day:
            self.day, self.day_requests, self.day_tokens = p.day, 0, 0
        if self.month != p.month:
            self.month, self.month_tokens = p.month, 0


def seed(
    client: Limited, day_requests: int, day_tokens: int, month_tokens: int, now: float
) -> None:
    """Start from what the store holds for today and this month (a restart forgets nothing
    but the sliding minute)."""
    w = client.windows
    w.roll(now)
    w.day_requests, w.day_tokens, w.month_tokens = day_requests, day_tokens, month_tokens


def check(client: Limited, estimated_tokens: int, now: float) -> tuple[str, float] | None:
    """None when the request may go (it is then counted, with `estimated_tokens` reserved);
    else (the limit, seconds until it resets)."""
    w = client.windows
    w.roll(now)
    p = PERIODS.at(now)
    if client.rpm:
        minute = w.minute
        while minute and minute[0] <= now - 60.0:
            minute.popleft()
        if len(minute) >= client.rpm:
            return "rpm", minute[0] + 60.0 - now
    if client.rpd and w.day_requests >= client.rpd:
        return "rpd", p.day_end - now
    if client.tpd and w.day_tokens + estimated_tokens > client.tpd:
        return "tpd", p.day_end - now
    if client.monthly_tokens and w.month_tokens + estimated_tokens > client.monthly_tokens:
        return "monthly_tokens", p.month_end - now
    if client.rpm:
        w.minute.append(now)
    w.day_requests += 1
    w.day_tokens += estimated_tokens
    w.month_tokens += estimated_tokens
    return None


def settle(client: Limited, reserved: int, actual_tokens: int, now: float) -> None:
    """Replace the reservation by the tokens the upstream reported (none: it stays)."""
    if not actual_tokens:
        return
    w = client.windows
    w.roll(now)
    diff = actual_tokens - reserved
    w.day_tokens = max(0, w.day_tokens + diff)
    w.month_tokens = max(0, w.month_tokens + diff)
