"""The quota contract (SPEC §12), run against every control form with one fake clock: per-key
request and token windows, configured per provider or per key, announced by the upstream, the
estimate charged at the pick and corrected at the release, and the waits when every key is spent.
"""

from __future__ import annotations

from typing import Any

import pytest

from keygate.config.quotaday import day_window
from keygate.control.base import Event
from keygate.control.quota import Announced, Ticket

from .conftest import T0, Form


def ticket(max_tokens: int = 0, pad: int = 0) -> Ticket:
    """A request whose estimate is (body bytes / 4) + max_tokens."""
    body = b'{"max_tokens": %d, "p": "%s"}' % (max_tokens, b"x" * pad)
    return Ticket(body, 0, [0, 0])


async def pick(pool: Any, t: Ticket | None = None, avoid: tuple[int, ...] = ()) -> Any:
    return await pool.acquire(avoid, t or ticket())


async def use(pool: Any, n: int, t: Ticket | None = None) -> list[int]:
    """`n` requests one after the other, each released OK; the keys they got."""
    ids = []
    for _ in range(n):
        t1 = t or ticket()
        p = await pool.acquire((), t1)
        assert p.entry is not None, f"no key after {ids}"
        ids.append(p.entry.id)
        await pool.release(p.entry, Event.OK, ticket=t1)
    return ids


async def test_rpd_caps_each_key_exactly_then_waits_for_the_day(form: Form) -> None:
    pool = await form.pool(2, key_rpd=3)
    assert sorted(await use(pool, 6)) == [1, 1, 1, 2, 2, 2]
    p = await pick(pool)
    assert p.entry is None and p.quota, "every key spent its day"
    _, end = day_window(form.clock(), "00:00 UTC")
    assert p.wait == pytest.approx(end - form.clock(), abs=1e-3)
    form.clock.t = end + 1
    assert sorted(await use(pool, 2)) == [1, 2], "a new day"


async def test_day_reset_in_a_zone(form: Form) -> None:
    pool = await form.pool(1, key_rpd=1, quota_day_reset="06:30 America/Los_Angeles")
    await use(pool, 1)
    p = await pick(pool)
    _, end = day_window(form.clock(), "06:30 America/Los_Angeles")
    assert p.entry is None and p.quota and p.wait == pytest.approx(end - form.clock(), abs=1e-3)


async def test_rpm_and_rph_slide(form: Form) -> None:
    pool = await form.pool(1, key_rpm=2, key_rph=3)
    await use(pool, 2)
    p = await pick(pool)
    assert p.entry is None and p.quota and p.wait == pytest.approx(60)
    form.clock.advance(60)
    await use(pool, 1)
    p = await pick(pool)
    assert p.entry is None and p.wait == pytest.approx(3540), "the hour holds it now"
    form.clock.advance(3540)
    assert await use(pool, 1) == [1]


async def test_a_key_limit_wins_over_the_provider_default(form: Form) -> None:
    pool = await form.pool(2, key_rpd=1)
    entry = pool.entries[2]
    entry.set_limits((0, 0, 3, 0, 0, 0))
    pool.add(entry)
    await form.settle()
    assert sorted(await use(pool, 4)) == [1, 2, 2, 2]
    assert (await pick(pool)).entry is None


async def test_tpm_charges_the_estimate_and_the_answer_corrects_it(form: Form) -> None:
    pool = await form.pool(1, key_tpm=1000)
    big = ticket(max_tokens=600)  # ~608 tokens estimated
    p = await pool.acquire((), big)
    assert p.entry is not None
    other = ticket(max_tokens=600)
    assert (await pool.acquire((), other)).entry is None, "the estimate is held at the pick"
    big.usage[:] = [20, 30]  # the answer used 50
    await pool.release(p.entry, Event.OK, ticket=big)
    p2 = await pool.acquire((), other)
    assert p2.entry is not None, "the correction gave the rest back"
    await pool.release(p2.entry, Event.OK, ticket=other)  # no usage: the estimate stays
    q = await pick(pool, ticket(max_tokens=400))
    assert q.entry is None and q.quota
    assert q.wait == pytest.approx(60, abs=1e-3)
    form.clock.advance(60)
    assert (await pick(pool, ticket(max_tokens=400))).entry is not None


async def test_a_request_larger_than_the_window_goes_when_it_is_empty(form: Form) -> None:
    pool = await form.pool(1, key_tpm=100)
    huge = ticket(max_tokens=5000)
    p = await pool.acquire((), huge)
    assert p.entry is not None, "never stuck for good: it waits for an empty window"
    await pool.release(p.entry, Event.OK, ticket=huge)
    assert (await pick(pool, ticket(max_tokens=5000))).entry is None


async def test_announced_budget_holds_until_its_reset(form: Form) -> None:
    pool = await form.pool(2)
    now = form.clock()
    t = ticket()
    p = await pool.acquire((), t)
    assert p.entry is not None
    spent = p.entry.id
    await pool.release(p.entry, Event.OK, ticket=t, budget=[Announced("rpm", 0, now + 5, 10)])
    assert await use(pool, 3) == [3 - spent] * 3, "the spent key is not picked"
    form.clock.advance(5)
    ids = await use(pool, 2)
    assert spent in ids, "back after the reset"


async def test_announced_tokens_refuse_what_they_cannot_cover(form: Form) -> None:
    pool = await form.pool(1)
    now = form.clock()
    t = ticket()
    p = await pool.acquire((), t)
    await pool.release(p.entry, Event.OK, ticket=t, budget=[Announced("tpm", 100, now + 7, 0)])
    assert (await pick(pool, ticket(max_tokens=50))).entry is not None, "50 fits in 100"
    p = await pick(pool, ticket(max_tokens=200))
    assert p.entry is None and p.quota and p.wait == pytest.approx(7, abs=1e-3)


async def test_an_announcement_only_lowers_until_its_reset(form: Form) -> None:
    pool = await form.pool(1)
    now = form.clock()
    a, b = ticket(), ticket()
    pa = await pool.acquire((), a)
    await pool.release(pa.entry, Event.OK, ticket=a, budget=[Announced("rpm", 2, now + 30, 5)])
    pb = await pool.acquire((), b)  # 1 left
    # an answer that says more is left (another window's view, a stale replica): the lower holds
    await pool.release(pb.entry, Event.OK, ticket=b, budget=[Announced("rpm", 3, now + 30, 5)])
    assert (await pick(pool)).entry is not None
    assert (await pick(pool)).entry is None


async def test_after_a_reset_the_announced_limit_is_the_next_budget(form: Form) -> None:
    pool = await form.pool(1)
    now = form.clock()
    t = ticket()
    p = await pool.acquire((), t)
    await pool.release(p.entry, Event.OK, ticket=t, budget=[Announced("rpm", 0, now + 2, 2)])
    form.clock.advance(2)
    assert len(await use(pool, 2)) == 2, "a new period of 2"
    p = await pick(pool)
    assert p.entry is None and p.wait == pytest.approx(2, abs=1e-3), "of 2 seconds"


async def test_nearly_spent_key_resetting_soonest_goes_first(form: Form) -> None:
    pool = await form.pool(3)
    now = form.clock()
    for key_id, reset in ((1, 100.0), (2, 10.0), (3, 50.0)):
        t = ticket()
        p = await pool.acquire((), t)
        assert p.entry is not None and p.entry.id == key_id
        await pool.release(
            p.entry, Event.OK, ticket=t, budget=[Announced("rpd", 1, now + reset, 100)]
        )
    # each key has 1 of 100 left; the one whose budget resets in 10 s is used first
    assert (await use(pool, 1)) == [2]
    assert (await use(pool, 1)) == [3]


async def test_no_quota_means_no_windows(form: Form) -> None:
    pool = await form.pool(2)
    await use(pool, 4)
    assert all(e.quota is None for e in pool.entries.values())
    view = pool.quota_view(pool.entries[1], form.clock())
    assert view["rpd"] == {"used": None, "limit": None, "reset_at": None}


async def test_quota_view(form: Form) -> None:
    pool = await form.pool(1, key_rpd=10, key_tpm=1000)
    t = ticket(max_tokens=100)
    p = await pool.acquire((), t)
    t.usage[:] = [30, 12]
    await pool.release(p.entry, Event.OK, ticket=t)
    view = pool.quota_view(pool.entries[1], form.clock())
    assert view["rpd"]["used"] == 1 and view["rpd"]["limit"] == 10
    assert view["rpd"]["reset_at"] == day_window(form.clock(), "00:00 UTC")[1]
    assert view["tpm"] == {"used": 42, "limit": 1000, "reset_at": pytest.approx(T0 + 60)}
    assert view["rph"]["limit"] is None


async def test_cooling_is_not_quota(form: Form) -> None:
    pool = await form.pool(1, key_rpd=10)
    pool.set_status(1, "cooling", form.clock() + 9)
    p = await pick(pool)
    assert p.entry is None and not p.quota and p.wait == pytest.approx(9)
