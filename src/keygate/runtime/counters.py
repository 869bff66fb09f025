"""Counters counted in memory and written to the store as deltas at each flush: the one
definition of what has not been flushed yet (the flusher, the change poll and the stats all
need it)."""

from __future__ import annotations

from typing import Protocol


class Counted(Protocol):
    """A key entry or a provider's stats: live counters and their values at the last flush."""

    flushed: tuple[int, int, int, int, int, int]

    def counters(self) -> tuple[int, int, int, int, int, int]: ...


def unflushed(obj: Counted) -> tuple[int, int, int, int, int, int]:
    """What this instance counted since its last flush (not yet in the store)."""
    now, old = obj.counters(), obj.flushed
    return (
        now[0] - old[0],
        now[1] - old[1],
        now[2] - old[2],
        now[3] - old[3],
        now[4] - old[4],
        now[5] - old[5],
    )


def plus(
    stored: tuple[int, int, int, int, int, int], extra: tuple[int, int, int, int, int, int]
) -> tuple[int, int, int, int, int, int]:
    return (
        stored[0] + extra[0],
        stored[1] + extra[1],
        stored[2] + extra[2],
        stored[3] + extra[3],
        stored[4] + extra[4],
        stored[5] + extra[5],
    )
