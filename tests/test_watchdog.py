"""The request's one timer: silence limit, pauses for slow clients, the disconnect-watch wake."""

from __future__ import annotations

import asyncio

from keygate.proxy.watchdog import Watchdog


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


async def test_touch_and_pause_keep_it_alive_and_stop_disarms() -> None:
    task = asyncio.create_task(_sleeper(0.5))
    await asyncio.sleep(0)
    dog = Watchdog(asyncio.get_running_loop(), task)
    dog.watch(0.08)
    for _ in range(5):  # the upstream keeps talking
        await asyncio.sleep(0.04)
        dog.touch()
    dog.pause()  # a slow client for longer than the limit is not upstream silence
    await asyncio.sleep(0.15)
    assert not task.done()
    dog.stop()  # between tries: no limit
    assert await asyncio.wait_for(task, 1) == "done"
    assert not dog.fired
    dog.close()


async def test_a_shorter_watch_rearms_earlier() -> None:
    task = asyncio.create_task(_sleeper(5))
    await asyncio.sleep(0)
    dog = Watchdog(asyncio.get_running_loop(), task)
    dog.watch(10)
    dog.watch(0.05)
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(task, 1) == "cancelled"
    assert asyncio.get_running_loop().time() - started < 0.5
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
