"""The traffic-control contract, run against every form in conftest.CONTROL_FORMS.

The key-health state machine exists in Python (the local form) and in Lua (the Redis form);
these cases hold both to the same answers: admission, the pick, every release event and the
pool-wide 429 guard.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from harness import eventually_async
from keygate.control.base import Event, Rejected
from keygate.control.keypool import POOL_GUARD_WINDOW_S

from .conftest import Form

COOL = 30.0  # cooldown_s
EXH = 3600.0  # exhausted_cooldown_s
RECHECK = 300.0  # recheck_interval_s


# --- helpers: the request path's questions ------------------------------------------------------


async def take(pool: Any, tried: tuple[int, ...] = ()) -> Any:
    """A key as the retry loop asks for one: not one already tried, unless only those are left."""
    return (await pool.acquire(tried)).entry


async def wait_of(pool: Any) -> float | None:
    """When no key is usable: seconds until one is; None when none will be by itself."""
    pick = await pool.acquire(())
    assert pick.entry is None
    return pick.wait


async def one_round(pool: Any, n: int) -> list[int]:
    ids = []
    for _ in range(n):
        entry = await take(pool)
        assert entry is not None
        ids.append(entry.id)
        await pool.release(entry, Event.OK)
    return ids


def status(pool: Any, key_id: int) -> tuple[str, float]:
    e = pool.entries[key_id]
    return e.status, e.until


# --- key pick -----------------------------------------------------------------------------------


async def test_round_robin_over_active_keys(form: Form) -> None:
    pool = await form.pool(3)
    assert await one_round(pool, 6) == [1, 2, 3, 1, 2, 3]


async def test_pick_skips_cooling_invalid_and_disabled(form: Form) -> None:
    pool = await form.pool(5)
    now = form.clock()
    pool.set_status(2, "cooling", now + 10)
    pool.set_status(3, "invalid", now + RECHECK)
    pool.set_status(4, "disabled")
    assert await one_round(pool, 4) == [1, 5, 1, 5]
    form.clock.advance(10)
    assert sorted(await one_round(pool, 3)) == [1, 2, 5], "cooling key back by itself"


async def test_tried_keys_are_avoided_unless_only_they_are_left(form: Form) -> None:
    pool = await form.pool(3)
    first = await take(pool, (1, 2))
    assert first.id == 3
    await pool.release(first, Event.OK)
    pool.set_status(3, "disabled")
    again = await take(pool, (1, 2))
    assert again is not None and again.id in (1, 2), "the only usable keys were tried: reuse"


async def test_nothing_usable_says_how_long(form: Form) -> None:
    pool = await form.pool(2)
    now = form.clock()
    pool.set_status(1, "cooling", now + 7)
    pool.set_status(2, "cooling", now + 12)
    assert await take(pool) is None
    assert await wait_of(pool) == pytest.approx(7)
    pool.set_status(1, "invalid", now + RECHECK)
    pool.set_status(2, "disabled")
    assert await take(pool) is None
    assert await wait_of(pool) is None, "invalid and disabled keys come back only by a re-check"


async def test_per_key_rpm(form: Form) -> None:
    pool = await form.pool(1, key_rpm=2)
    assert await one_round(pool, 2) == [1, 1]
    form.clock.advance(20)
    assert await take(pool) is None
    assert await wait_of(pool) == pytest.approx(40)
    form.clock.advance(40)
    assert await one_round(pool, 1) == [1], "the minute moved on"


async def test_per_key_max_conn(form: Form) -> None:
    pool = await form.pool(2, key_max_conn=1)
    a, b = await take(pool), await take(pool)
    assert {a.id, b.id} == {1, 2}
    assert await take(pool) is None, "each key holds its one connection"
    await pool.release(a, Event.CLIENT_ERROR)
    c = await take(pool)
    assert c is not None and c.id == a.id, "any release frees the key's connection"


# --- release events -----------------------------------------------------------------------------


async def test_ok_keeps_the_key_active(form: Form) -> None:
    pool = await form.pool(1)
    e = await take(pool)
    await pool.release(e, Event.OK)
    assert status(pool, 1)[0] == "active" and pool.entries[1].inflight == 0


async def test_rate_limited_with_a_hint_cools_until_then(form: Form) -> None:
    pool = await form.pool(2)
    now = form.clock()
    e = await take(pool)
    assert await pool.release(e, Event.RATE_LIMITED, now + 4.5, "429") is None
    assert status(pool, e.id) == ("cooling", pytest.approx(now + 4.5))
    assert await one_round(pool, 2) == [2, 2]
    form.clock.advance(4.5)
    assert sorted(await one_round(pool, 2)) == [1, 2]


async def test_repeated_429s_double_the_cooldown_up_to_16x(form: Form) -> None:
    pool = await form.pool(1, cooldown_s=COOL)
    seen = []
    for _ in range(6):
        e = await take(pool)
        assert e is not None
        start = form.clock()
        await pool.release(e, Event.RATE_LIMITED, None, "429")
        kind, until = status(pool, 1)
        assert kind == "cooling"
        seen.append(round(until - start, 6))
        form.clock.advance(until - start)
    assert seen == [COOL, 2 * COOL, 4 * COOL, 8 * COOL, 16 * COOL, 16 * COOL]


async def test_a_success_after_a_cooldown_resets_the_backoff(form: Form) -> None:
    """A key back from cooling that then succeeds starts over at one cooldown on its next 429.

    The success comes long after the 429 (past the guard window): the Redis form must still tell
    Redis, or Lua's strike count keeps growing while Python's starts over."""
    pool = await form.pool(1, cooldown_s=COOL)
    e = await take(pool)
    await pool.release(e, Event.RATE_LIMITED, None, "429")
    await form.settle()  # the fleet has heard of the 429 before time moves on
    form.clock.advance(COOL + POOL_GUARD_WINDOW_S)
    e = await take(pool)
    assert e is not None, "back after its cooldown"
    await pool.release(e, Event.OK)
    e = await take(pool)
    start = form.clock()
    await pool.release(e, Event.RATE_LIMITED, None, "429")
    assert status(pool, 1) == ("cooling", pytest.approx(start + COOL))


async def test_invalid_is_held_for_the_recheck(form: Form) -> None:
    pool = await form.pool(2, recheck_interval_s=RECHECK)
    now = form.clock()
    e = await take(pool)
    assert await pool.release(e, Event.INVALID, None, "401 bad key") is None
    assert status(pool, 1) == ("invalid", pytest.approx(now + RECHECK))
    assert pool.entries[1].last_error == "401 bad key"
    form.clock.advance(RECHECK + 1)
    assert await one_round(pool, 2) == [2, 2], "invalid keys wait for a re-check, not the clock"
    assert [k.id for k in pool.due_for_recheck()] == [1]


async def test_exhausted_is_held_for_its_long_cooldown(form: Form) -> None:
    pool = await form.pool(1, exhausted_cooldown_s=EXH)
    now = form.clock()
    e = await take(pool)
    await pool.release(e, Event.EXHAUSTED, now + 60, "quota")
    assert status(pool, 1) == ("exhausted", pytest.approx(now + EXH)), "its own hold, not a hint"
    assert await take(pool) is None
    assert await wait_of(pool) == pytest.approx(EXH)


@pytest.mark.parametrize("event", [Event.PROVIDER_ERROR, Event.CLIENT_ERROR, Event.CANCELLED])
async def test_not_the_keys_fault_changes_nothing(form: Form, event: Event) -> None:
    pool = await form.pool(1, cooldown_s=COOL, key_max_conn=1)
    e = await take(pool)
    await pool.release(e, Event.RATE_LIMITED, None, "429")  # strike 1
    form.clock.advance(COOL)
    e = await take(pool)
    assert e is not None
    await pool.release(e, event, None, "boom")
    assert status(pool, 1)[0] == "active"
    e = await take(pool)
    assert e is not None, "the key's connection was given back"
    start = form.clock()
    await pool.release(e, Event.RATE_LIMITED, None, "429")
    assert status(pool, 1) == ("cooling", pytest.approx(start + 2 * COOL)), "strikes kept"


async def test_a_disabled_key_stays_disabled_whatever_its_try_said(form: Form) -> None:
    pool = await form.pool(2)
    e = await take(pool)
    pool.set_status(e.id, "disabled")
    await pool.release(e, Event.INVALID, None, "401")
    assert status(pool, e.id)[0] == "disabled"


# --- the pool-wide 429 guard ----------------------------------------------------------------------


async def test_guard_pauses_the_provider_and_keeps_the_keys(form: Form) -> None:
    pool = await form.pool(3, cooldown_s=COOL)
    now = form.clock()
    held = [await take(pool) for _ in range(3)]
    pauses = [await pool.release(e, Event.RATE_LIMITED, None, "429") for e in held]
    assert pauses[:2] == [None, None]
    assert pauses[2] == pytest.approx(now + 5), "min(cooldown, 5 s)"
    assert [pool.entries[i].status for i in (1, 2, 3)] == ["active"] * 3
    assert sorted(await one_round(pool, 3)) == [1, 2, 3]


async def test_guard_takes_the_hint_for_its_pause(form: Form) -> None:
    pool = await form.pool(2)
    now = form.clock()
    a, b = await take(pool), await take(pool)
    assert await pool.release(a, Event.RATE_LIMITED, now + 20, "429") is None
    assert await pool.release(b, Event.RATE_LIMITED, now + 8, "429") == pytest.approx(now + 8)


async def test_guard_window_and_successes_in_between(form: Form) -> None:
    pool = await form.pool(4, cooldown_s=COOL)
    a, b, c, d = [await take(pool) for _ in range(4)]
    assert await pool.release(a, Event.RATE_LIMITED, None, "429") is None
    form.clock.advance(POOL_GUARD_WINDOW_S + 0.5)
    assert await pool.release(b, Event.RATE_LIMITED, None, "429") is None
    form.clock.advance(0.1)
    await pool.release(c, Event.OK)
    form.clock.advance(0.1)
    assert await pool.release(d, Event.RATE_LIMITED, None, "429") is None, (
        "a's 429 is out of the window and c's success came after b's"
    )
    e = await take(pool)
    assert e is not None and e.id == 3
    assert await pool.release(e, Event.RATE_LIMITED, None, "429") is None
    assert [pool.entries[i].status for i in (1, 2, 3, 4)] == ["cooling"] * 4


# --- admission (real time, small numbers) ---------------------------------------------------------


async def test_bucket_burst_then_rate(form: Form) -> None:
    adm = form.admission(rps=20, burst=2, max_conn=0, queue=10, queue_timeout_s=5)
    t = time.monotonic()
    slots = [await adm.acquire() for _ in range(3)]
    assert time.monotonic() - t >= 0.04, "the third waits ~1/rps"
    for s in slots:
        await s.release()


async def test_gate_fifo_order(form: Form) -> None:
    adm = form.admission(rps=0, burst=1, max_conn=1, queue=10, queue_timeout_s=5)
    first = await adm.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        slot = await adm.acquire()
        order.append(i)
        await asyncio.sleep(0.01)
        await slot.release()

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(waiter(i)))
        await eventually_async(
            lambda i=i: adm.snapshot()["queued"] == i + 1, 5, f"waiter {i} queued"
        )
    await first.release()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert adm.snapshot()["in_flight"] == 0


async def test_full_queue_rejects_at_once_and_timeout_rejects(form: Form) -> None:
    adm = form.admission(rps=0, burst=1, max_conn=1, queue=1, queue_timeout_s=0.2)
    held = await adm.acquire()
    queued = asyncio.create_task(adm.acquire())
    await eventually_async(lambda: adm.snapshot()["queued"] == 1, 5, "the one queue place taken")
    t = time.monotonic()
    with pytest.raises(Rejected) as full:
        await adm.acquire()
    assert full.value.reason == "queue full" and time.monotonic() - t < 0.1
    with pytest.raises(Rejected) as late:
        await queued
    assert late.value.reason == "queue timeout"
    await held.release()
    again = await adm.acquire()
    await again.release()
    assert adm.snapshot()["in_flight"] == 0


async def test_pause_holds_admissions(form: Form) -> None:
    adm = form.admission(rps=0, burst=1, max_conn=2, queue=10, queue_timeout_s=5)
    adm.pause_until(time.time() + 0.15)
    t = time.monotonic()
    slot = await adm.acquire()
    assert time.monotonic() - t >= 0.12
    await slot.release()


async def test_a_key_cooled_again_reports_its_new_return_time(form: Form) -> None:
    """Let out of cooling early (the guard), then cooled again for longer: the wait is the new
    time, not the one it left behind."""
    pool = await form.pool(2, cooldown_s=COOL)
    now = form.clock()
    a = await take(pool)
    await pool.release(a, Event.RATE_LIMITED, now + 5, "429")
    b = await take(pool)
    assert await pool.release(b, Event.RATE_LIMITED, now + 5, "429") is not None, "the guard"
    assert status(pool, a.id)[0] == "active"
    pool.set_status(b.id, "disabled")
    a = await take(pool)
    await pool.release(a, Event.RATE_LIMITED, now + 50, "429")
    assert status(pool, a.id) == ("cooling", pytest.approx(now + 50))
    assert await wait_of(pool) == pytest.approx(50)


async def test_capacity_reads_the_bucket_and_the_gate_without_taking(form: Form) -> None:
    """What `spread` routing compares: tokens in the bucket, free slots, queue room."""
    adm = form.admission(rps=5, burst=4, max_conn=3, queue=10, queue_timeout_s=5)
    cap = await adm.capacity()
    assert cap.free_slots == 3 and 3.9 <= cap.tokens <= 4 and cap.queue_room == 10
    assert cap.size == 3
    slots = [await adm.acquire() for _ in range(2)]
    cap = await adm.capacity()
    assert cap.free_slots == 1 and 1.9 <= cap.tokens <= 2.3
    assert (await adm.capacity()).free_slots == 1  # a read takes nothing
    for s in slots:
        await s.release()

    async def all_free() -> bool:  # the Redis form hands slots back without waiting
        return (await adm.capacity()).free_slots == 3

    await eventually_async(all_free, 5, "every slot free again")
    adm.pause_until(time.time() + 30)
    assert (await adm.capacity()).tokens == 0  # paused: nothing may go now
    free = form.admission(rps=0, burst=1, max_conn=0, queue=10, queue_timeout_s=5)
    cap = await free.capacity()
    assert cap.tokens == cap.free_slots == float("inf")
    assert cap.score() > (await adm.capacity()).score()


async def test_usable_now_follows_key_health(form: Form) -> None:
    pool = await form.pool(1)  # one key: a 429 cools it (several would trip the pool guard)
    assert pool.usable_now()
    e = (await pool.acquire()).entry
    await pool.release(e, Event.RATE_LIMITED, form.clock() + 60, "429")
    await form.settle()
    assert not pool.usable_now()
    form.clock.advance(61)
    assert pool.usable_now()


# --- fair share (SPEC §13): one FIFO per client, clients served in turn ---------------------------


async def _queue_up(adm: Any, client: Any, label: str, order: list[str]) -> asyncio.Task[None]:
    """One waiter of `client`, in the queue once this returns."""
    before = adm.snapshot()["queued"]

    async def waiter() -> None:
        slot = await adm.acquire(client)
        order.append(label)
        await asyncio.sleep(0)
        await slot.release()

    task = asyncio.create_task(waiter())
    await eventually_async(lambda: adm.snapshot()["queued"] > before, 5, f"{label} queued")
    return task


async def test_clients_take_turns_in_the_queue(form: Form) -> None:
    adm = form.admission(rps=0, burst=1, max_conn=1, queue=50, queue_timeout_s=5)
    first = await adm.acquire()
    order: list[str] = []
    tasks = [await _queue_up(adm, 1, f"A{i}", order) for i in range(6)]
    tasks += [await _queue_up(adm, 2, f"B{i}", order) for i in range(2)]
    tasks.append(await _queue_up(adm, None, "N0", order))  # no client key: a client of its own
    await first.release()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert order == ["A0", "B0", "N0", "A1", "B1", "A2", "A3", "A4", "A5"]
    assert adm.snapshot()["in_flight"] == 0 and adm.snapshot()["queued"] == 0


async def test_fair_queue_keeps_bound_timeout_and_cancel(form: Form) -> None:
    adm = form.admission(rps=0, burst=1, max_conn=1, queue=3, queue_timeout_s=0.3)
    held = await adm.acquire()
    order: list[str] = []
    a0 = await _queue_up(adm, 1, "A0", order)
    a1 = await _queue_up(adm, 1, "A1", order)
    b0 = await _queue_up(adm, 2, "B0", order)
    with pytest.raises(Rejected) as full:  # the bound is for the queue, whatever the client
        await adm.acquire(3)
    assert full.value.reason == "queue full"
    a0.cancel()  # a client that leaves its turn to the next one
    await held.release()
    async with asyncio.timeout(5):
        await asyncio.gather(a1, b0)
    assert order == ["A1", "B0"]  # A's turn passed over its cancelled waiter to its next
    held = await adm.acquire()
    with pytest.raises(Rejected) as late:
        await adm.acquire(2)
    assert late.value.reason == "queue timeout"
    await held.release()
    assert adm.snapshot()["in_flight"] == 0
