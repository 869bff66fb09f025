"""One timer per request that cancels it when the upstream stays silent too long.

`asyncio.timeout` costs a timer and two coroutine calls per use, and a stream would re-arm it
twice per chunk. Here a chunk only stamps the time; the single timer, when it fires, looks at
the stamp and either re-arms for the remainder or cancels the request's task.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Watchdog:
    __slots__ = ("_due", "_handle", "_limit", "_loop", "_paused", "_task", "fired", "last")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self._loop = loop
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._limit = 0.0
        self._paused = False
        self.last = 0.0
        self.fired = False

    def watch(self, seconds: float) -> None:
        """From now on, at most `seconds` of upstream silence."""
        now = self._loop.time()
        self.last = now
        self._limit = seconds
        self._paused = False
        due = now + seconds
        if self._handle is None or due < self._due:
            if self._handle is not None:
                self._handle.cancel()
            self._due = due
            self._handle = self._loop.call_at(due, self._check)

    def touch(self) -> None:
        """The upstream spoke (or the client took its time): the silence starts again."""
        self.last = self._loop.time()
        self._paused = False

    def pause(self) -> None:
        """Writing to a slow client is not upstream silence."""
        self._paused = True

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        due = (now if self._paused else self.last) + self._limit
        if now < due:
            self._due = due
            self._handle = self._loop.call_at(due, self._check)
            return
        self.fired = True
        self._task.cancel()
