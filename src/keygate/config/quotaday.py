"""The quota day (SPEC §12): when the per-day windows (rpd, tpd) start again, `HH:MM <IANA
zone>`, DST included.

At the ground floor because the settings check the configured moment and the quota windows
of both control forms count from it."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_DAY_RESET = "00:00 UTC"
_RESET_RE = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)(?:\s+(\S+))?\s*$")


def parse_day_reset(text: str) -> tuple[int, int, str]:
    """`"HH:MM <IANA zone>"` → (hour, minute, zone); ValueError naming the problem."""
    m = _RESET_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f'must be "HH:MM <IANA zone>", e.g. "00:00 UTC", got {text!r}')
    zone = m.group(3) or "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone!r}") from None
    return int(m.group(1)), int(m.group(2)), zone


def day_window(now: float, spec: str) -> tuple[float, float]:
    """(start, end) in epoch seconds of the quota day containing `now`."""
    hour, minute, zone = parse_day_reset(spec)
    tz = ZoneInfo(zone)
    local = datetime.fromtimestamp(now, tz)
    start = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if start > local:
        start -= timedelta(days=1)
    # wall-clock arithmetic in the zone (a DST day is 23 or 25 hours long)
    end = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=tz)
    return start.timestamp(), end.timestamp()
