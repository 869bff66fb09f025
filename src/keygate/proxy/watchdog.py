"""The one timer a request owns: it cancels the request when the upstream stays silent too
long, and it wakes the request's disconnect watcher once the exchange has lasted a moment.

`asyncio.timeout` costs a timer and two coroutine calls per use, and a stream would re-arm it
twice per chunk. Here a chunk only stamps the time; the timer, when it fires, looks at the stamp
and either re-arms for the remainder or cancels the request's task.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any


class Watchdog:
    __slots__ = (
        "_due",
        "_handle",
        "_limit",
        "_loop",
        "_paused",
        "_task",
        "_wake",
        "_wake_at",
        "fired",
        "last",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Task[Any],
        wake: Callable[[], None] | None = None,
        wake_after_s: float = 0.05,
    ) -> None:
        self._loop = loop
        self._task = task
        self._limit = math.inf  # no silence limit until `watch`
        self._paused = False
        self._wake = wake
        self.last = 0.0
        self.fired = False
        if wake is not None:
            self._wake_at = self._due = due = loop.time() + wake_after_s
            self._handle: asyncio.TimerHandle | None = loop.call_at(due, self._check)
        else:
            self._wake_at = self._due = math.inf
            self._handle = None

    def _arm(self, due: float) -> None:
        if due < self._due:
            if self._handle is not None:
                self._handle.cancel()
            self._due = due
            self._handle = self._loop.call_at(due, self._check)

    def watch(self, seconds: float) -> None:
        """From now on, at most `seconds` of upstream silence."""
        now = self.last = self._loop.time()
        self._limit = seconds
        self._paused = False
        self.fired = False
        if now + seconds < self._due:  # else the timer already set will look again then
            self._arm(now + seconds)

    def touch(self) -> None:
        """The upstream spoke (or the client took its time): the silence starts again."""
        self.last = self._loop.time()
        self._paused = False

    def pause(self) -> None:
        """Writing to a slow client is not upstream silence."""
        self._paused = True

    def stop(self) -> None:
        """No silence limit until the next `watch` (between tries, after the last byte)."""
        self._limit = math.inf

    def close(self) -> None:
        """The request is over: no more timer."""
        self._limit = math.inf
        self._wake = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = math.inf

    def _check(self) -> None:
        self._handle = None
        self._due = math.inf
        now = self._loop.time()
        if self._wake is not None and now >= self._wake_at:
            wake, self._wake = self._wake, None
            wake()
        silent_until = (now if self._paused else self.last) + self._limit
        if now >= silent_until:
            self.fired = True
            self._limit = math.inf
            self._task.cancel()
            return
        due = min(silent_until, self._wake_at if self._wake is not None else math.inf)
        if due != math.inf:
            self._arm(due)


def absorb_cancel(ours: bool) -> bool:
    """Called on a CancelledError. When `ours` (the watchdog fired, or the disconnect watcher
    cancelled), withdraw the cancellation so the request can still answer or account, and
    say True; otherwise False, and the caller re-raises: the cancel came from outside."""
    if not ours:
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True
