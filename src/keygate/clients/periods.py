"""UTC day and month boundaries, computed once per day rather than once per request."""

from __future__ import annotations

import calendar
import time

_DAY = 86400.0


class Periods:
    """The current day's and month's keys ('d:2026-12-02', 'm:2026-12') and their ends."""

    __slots__ = ("day", "day_end", "day_start", "month", "month_end")

    def __init__(self) -> None:
        self.day_start = self.day_end = self.month_end = 0.0
        self.day = self.month = ""

    def at(self, now: float) -> Periods:
        if not self.day_start <= now < self.day_end:
            start = (now // _DAY) * _DAY
            t = time.gmtime(start)
            self.day_start, self.day_end = start, start + _DAY
            self.day = time.strftime("d:%Y-%m-%d", t)
            self.month = time.strftime("m:%Y-%m", t)
            year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
            self.month_end = float(calendar.timegm((year, month, 1, 0, 0, 0)))
        return self


PERIODS = Periods()
