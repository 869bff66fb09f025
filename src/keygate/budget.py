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


def window_for(kind: str, reset_in: float) -> str:
    """`r`/`t` + the window an announced reset belongs to: within a minute, an hour, a day."""
    if reset_in <= 60.0:
        return kind + "pm"
    if reset_in <= 3600.0:
        return kind + "ph"
    return kind + "pd"
