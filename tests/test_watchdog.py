"""The request's one timer: silence limit, pauses for slow clients, the disconnect-watch wake."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from keygate.proxy.watchdog import Watchdog


class FakeLoop:
    """The two things a Watchdog asks of its loop, `time` and `call_at`, on a clock that moves
    only when the test says: `advance` runs every timer that falls due, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer(when, callback, args)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := [t for t in self.timers if not t.cancelled and t.when <= end]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback(*timer.args)
        self.now = end


class FakeTimer:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTask:
    """What a Watchdog does to its request's task: cancel it."""

    def __init__(self) -> None:
        self.cancels = 0

    def cancel(self) -> bool:
        self.cancels += 1
        return True


async def _sleeper(seconds: float) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        return "cancelled"
    return "done"


async def test_silence_cancels_and_wake_runs_once() -> None:
    woke: list[float] = []
    task = asyncio.create_task(_sleeper(5))
    await asyncio.sleep(0)
    dog = Watchdog(asyncio.get_running_loop(), task, wake=lambda: woke.append(1), wake_after_s=0.02)
    dog.watch(0.1)
    assert await asyncio.wait_for(task, 1) == "cancelled"
    assert dog.fired and woke == [1]
    dog.close()


def test_touch_and_pause_keep_it_alive_and_stop_disarms() -> None:
    loop, task = FakeLoop(), FakeTask()
    dog = Watchdog(loop, task)  # type: ignore[arg-type]
    dog.watch(0.125)
    for _ in range(5):  # the upstream keeps talking, within the limit each time
        loop.advance(0.0625)
        dog.touch()
    assert task.cancels == 0
    dog.pause()  # a slow client for longer than the limit is not upstream silence
    loop.advance(1)
    assert task.cancels == 0
    dog.touch()  # the upstream again: the silence counts from now
    loop.advance(0.0625)
    assert task.cancels == 0
    dog.stop()  # between tries: no limit
    loop.advance(60)
    assert task.cancels == 0 and not dog.fired
    dog.watch(0.125)  # the next try: a silence as long as the limit cancels it
    loop.advance(0.0625)
    assert task.cancels == 0
    loop.advance(0.0625)
    assert task.cancels == 1 and dog.fired
    dog.close()
    assert not [t for t in loop.timers if not t.cancelled], "no timer left behind"


def test_a_shorter_watch_rearms_earlier() -> None:
    loop, task = FakeLoop(), FakeTask()
    dog = Watchdog(loop, task)  # type: ignore[arg-type]
    dog.watch(10)
    dog.watch(0.25)
    loop.advance(0.125)
    assert task.cancels == 0
    loop.advance(0.125)
    assert task.cancels == 1 and dog.fired, "cancelled at the shorter limit, not the first"
    dog.close()


async def test_close_cancels_everything() -> None:
    woke: list[int] = []
    task = asyncio.create_task(_sleeper(0.2))
    await asyncio.sleep(0)
    dog = Watchdog(asyncio.get_running_loop(), task, wake=lambda: woke.append(1), wake_after_s=0.05)
    dog.watch(0.1)
    dog.close()
    assert await asyncio.wait_for(task, 1) == "done"
    assert woke == [] and not dog.fired
