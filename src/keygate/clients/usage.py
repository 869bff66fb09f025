"""A client's usage counters: counted in memory on the request path, flushed as additive
deltas per period ('all', the UTC day, the UTC month) like key counters."""

from __future__ import annotations

from keygate.clients.periods import PERIODS

TIMELINE_MIN = 60  # the admin page's chart: requests per minute, the last hour


class Usage:
    """Unflushed deltas per period, the last use, and a per-minute ring for the chart."""

    __slots__ = ("last_used", "minutes", "pending", "since_start")

    def __init__(self) -> None:
        self.pending: dict[str, list[int]] = {}  # period -> [requests, in, out, errors]
        self.since_start = [0, 0, 0, 0]  # requests, in, out, errors (for /metrics)
        self.last_used = 0.0
        self.minutes: list[int] | None = None  # [minute, count, minute, count, ...], lazily

    def count(self, now: float, tokens_in: int, tokens_out: int, error: bool) -> None:
        p = PERIODS.at(now)
        pending = self.pending
        row: list[int] | None
        for period in ("all", p.day, p.month, None):
            if period is None:
                row = self.since_start
            else:
                row = pending.get(period)
                if row is None:
                    row = pending[period] = [0, 0, 0, 0]
            row[0] += 1
            row[1] += tokens_in
            row[2] += tokens_out
            row[3] += error
        self.last_used = now
        minute = int(now // 60)
        ring = self.minutes
        if ring is None:
            ring = self.minutes = []
        if ring and ring[-2] == minute:
            ring[-1] += 1
        else:
            ring += [minute, 1]
            if len(ring) > 2 * TIMELINE_MIN:
                del ring[:2]

    def take(self) -> dict[str, list[int]]:
        """Hand the unflushed deltas to the flusher (it gives them back if the write fails)."""
        pending, self.pending = self.pending, {}
        return pending

    def give_back(self, pending: dict[str, list[int]]) -> None:
        for period, row in pending.items():
            mine = self.pending.setdefault(period, [0, 0, 0, 0])
            for i in range(4):
                mine[i] += row[i]

    def timeline(self, now: float, minutes: int = TIMELINE_MIN) -> list[int]:
        """Requests per minute, oldest first, ending with the current minute."""
        out = [0] * minutes
        ring = self.minutes or []
        last = int(now // 60)
        for i in range(0, len(ring), 2):
            age = last - ring[i]
            if 0 <= age < minutes:
                out[minutes - 1 - age] += ring[i + 1]
        return out
