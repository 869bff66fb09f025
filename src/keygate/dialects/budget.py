"""What an upstream's answer announces about a key's budget (SPEC §12): the shape a dialect
reads from rate-limit headers and both control forms' quota windows take in.

At the ground floor because two layers meet on it: the dialects (which header says what) and
`control.quota` (what the windows do with it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Announced:
    """What one answer says is left in one window: `remaining` until `reset_at` (wall clock),
    of `limit` per window when the upstream said."""

    window: str
    remaining: int
    reset_at: float
    limit: int = 0


# The largest count an answer may announce (remaining, limit): more is clamped to it. Far above
# any provider's budget, small enough for a float to hold exactly and JSON's 64-bit integers.
COUNT_MAX = 10**12
# How far away a window's reset may be, by the last letter of its name: a minute window resets
# within a minute, an hour window within an hour, a day window by the next day reset (25 hours
# on a day the clocks go back). A reset further away is out of range: not believed.
SPANS = {"m": 60.0, "h": 3600.0, "d": 90000.0}
LONGEST_RESET_S = SPANS["d"]  # no announced reset or reset hint is believed beyond this
_SLACK_S = 1.0  # a named window's reset rounded up (Anthropic's are whole seconds)


def window_for(kind: str, reset_in: float) -> str | None:
    """`r`/`t` + the window an announced reset belongs to: within a minute, an hour, a day.
    None: further than a day (or not a time ahead), out of every window's range."""
    if 0.0 < reset_in <= 60.0:
        return kind + "pm"
    if 60.0 < reset_in <= 3600.0:
        return kind + "ph"
    if 3600.0 < reset_in <= LONGEST_RESET_S:
        return kind + "pd"
    return None


def within(window: str, reset_in: float) -> bool:
    """An announced reset `reset_in` seconds away fits `window` (`rpm` … `tpd`)."""
    return 0.0 < reset_in <= SPANS.get(window[-1:], 0.0) + _SLACK_S
