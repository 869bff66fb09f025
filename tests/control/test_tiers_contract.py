"""Key tiers, weights and the `prefer` hook (SPEC §15), run against every control form.

The lowest tier with a key able to serve now takes the request; inside a tier, smooth weighted
round-robin. `prefer` (what affinity asks for) is honoured only when the normal rule would also
allow that key now; both forms must give the same answers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from keygate.control.base import Event
from keygate.control.keypool import KeyEntry
from keygate.control.quota import Announced, Ticket

from .conftest import Form

COOL = 30.0


def ticket() -> Ticket:
    return Ticket(b'{"max_tokens": 0}', 0, [0, 0])


async def tiered(
    form: Form, spec: list[tuple[int, int]], rpm: dict[int, int] | None = None, **cfg: Any
) -> Any:
    """A pool whose key i+1 has (tier, weight) `spec[i]`; `rpm` sets keys' own rpm."""
    from .conftest import provider

    pool = form.make_pool(provider("t", **cfg))
    for i, (tier, weight) in enumerate(spec, start=1):
        entry = KeyEntry(i, "t", f"sk-tiers-{i:04d}-secret", tier=tier, weight=weight)
        if rpm and i in rpm:
            entry.set_limits((rpm[i], 0, 0, 0, 0, 0))
        pool.add(entry)
    return pool


async def use(pool: Any, n: int, avoid: tuple[int, ...] = ()) -> list[int]:
    """`n` requests one after the other, each released OK; the keys they got."""
    ids = []
    for _ in range(n):
        t = ticket()
        p = await pool.acquire(avoid, t)
        assert p.entry is not None, f"no key after {ids}"
        ids.append(p.entry.id)
        await pool.release(p.entry, Event.OK, ticket=t)
    return ids


async def pinned(pool: Any, prefer: int, avoid: tuple[int, ...] = ()) -> Any:
    t = ticket()
    p = await pool.acquire(avoid, t, prefer=prefer)
    assert p.entry is not None
    return p.entry


# --- tiers ------------------------------------------------------------------------------------


async def test_free_keys_first_paid_key_takes_only_the_overflow(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (0, 1), (1, 1)], rpm={1: 5, 2: 5})
    first = await use(pool, 10)
    assert Counter(first) == {1: 5, 2: 5}, first
    assert await use(pool, 5) == [3] * 5
    form.clock.advance(60.5)  # the free keys' minute is over
    again = await use(pool, 10)
    assert Counter(again) == {1: 5, 2: 5}, "the paid key gets nothing more"


async def test_weights_split_a_tier_smoothly(form: Form) -> None:
    pool = await tiered(form, [(0, 3), (0, 1)])
    ids = await use(pool, 300)
    counts = Counter(ids)
    assert abs(counts[1] - 225) <= 5 and abs(counts[2] - 75) <= 5, counts
    assert ids[:8] == [1, 1, 2, 1, 1, 1, 2, 1], "smooth: the light key is spread out"


async def test_weights_apply_inside_the_lowest_tier_only(form: Form) -> None:
    pool = await tiered(form, [(1, 100), (0, 1), (0, 2)])
    assert Counter(await use(pool, 30)) == {3: 20, 2: 10}


async def test_a_cooling_invalid_or_disabled_lower_tier_hands_over(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (1, 1), (2, 1)], cooldown_s=COOL)
    now = form.clock()
    pool.set_status(1, "cooling", now + 10)
    assert await use(pool, 2) == [2, 2]
    pool.set_status(2, "disabled")
    assert await use(pool, 2) == [3, 3]
    form.clock.advance(10)
    assert await use(pool, 2) == [1, 1], "the free key is back: the others rest"
    pool.set_status(1, "invalid", form.clock() + 300)
    pool.set_status(2, "active")
    assert await use(pool, 2) == [2, 2]


async def test_retries_follow_the_tier_order(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (1, 1), (2, 1)])
    assert await use(pool, 1, avoid=(1,)) == [2]
    assert await use(pool, 1, avoid=(1, 2)) == [3]
    assert await use(pool, 1, avoid=(1, 2, 3)) == [1], "all tried: the order starts again"


async def test_a_full_lower_tier_overflows(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (1, 1)], key_max_conn=1)
    a = (await pool.acquire((), ticket())).entry
    b = (await pool.acquire((), ticket())).entry
    assert (a.id, b.id) == (1, 2)
    p = await pool.acquire((), ticket())
    assert p.entry is None and p.wait is not None
    await pool.release(a, Event.OK)
    c = (await pool.acquire((), ticket())).entry
    assert c.id == 1


async def test_a_key_may_change_tier(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (1, 1)])
    assert await use(pool, 2) == [1, 1]
    entry = pool.entries[1]
    entry.tier = 2
    pool.add(entry)
    assert await use(pool, 2) == [2, 2]


async def test_a_wait_when_every_tier_is_spent(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (1, 1)], rpm={1: 1, 2: 1})
    assert await use(pool, 2) == [1, 2]
    p = await pool.acquire((), ticket())
    assert p.entry is None and p.quota and 0 < (p.wait or 0) <= 60


async def test_a_nearly_spent_key_resetting_soonest_goes_first_inside_a_tier(
    form: Form,
) -> None:
    pool = await tiered(form, [(0, 1), (0, 1), (0, 1), (1, 1)])
    now = form.clock()
    for key_id, reset in ((1, 100.0), (2, 10.0), (3, 50.0)):
        t = ticket()
        p = await pool.acquire((), t)
        assert p.entry is not None and p.entry.id == key_id
        await pool.release(
            p.entry, Event.OK, ticket=t, budget=[Announced("rpd", 1, now + reset, 100)]
        )
    # each has 1 of 100 left: the one whose budget resets in 10 s first, then in 50 s
    assert await use(pool, 2) == [2, 3]


# --- prefer (the affinity hook) ----------------------------------------------------------------


async def test_prefer_is_honoured_and_counted(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (0, 1), (0, 1)])
    entry = await pinned(pool, 3)
    assert entry.id == 3 and entry.use_count == 1 and entry.inflight == 1
    await pool.release(entry, Event.OK)
    assert (await pinned(pool, 3)).id == 3


async def test_prefer_refused_when_the_key_cannot_serve(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (0, 1), (0, 1)], cooldown_s=COOL)
    pool.set_status(3, "cooling", form.clock() + 10)
    assert (await pinned(pool, 3)).id != 3, "cooling"
    pool.set_status(3, "disabled")
    assert (await pinned(pool, 3)).id != 3, "disabled"
    pool.set_status(3, "active")
    assert (await pinned(pool, 3, avoid=(3,))).id != 3, "avoided by this request"
    assert (await pinned(pool, 99)).id in (1, 2, 3), "an unknown key: the normal pick"


async def test_prefer_refused_when_its_quota_is_spent(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (0, 1)], rpm={2: 1})
    first = await pinned(pool, 2)
    assert first.id == 2
    await pool.release(first, Event.OK)
    assert (await pinned(pool, 2)).id == 1


async def test_prefer_refused_when_max_conn_is_full(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (0, 1)], key_max_conn=1)
    assert (await pinned(pool, 2)).id == 2  # held, not released
    assert (await pinned(pool, 2)).id == 1


async def test_prefer_refused_while_a_lower_tier_can_serve(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (1, 1), (1, 1)], cooldown_s=COOL)
    assert (await pinned(pool, 2)).id == 1, "a free key can serve: the paid pin is left"
    pool.set_status(1, "cooling", form.clock() + 10)
    assert (await pinned(pool, 3)).id == 3, "the free tier cannot: the pin holds in tier 1"
    assert (await pinned(pool, 3, avoid=(1,))).id == 3
    form.clock.advance(10)
    assert (await pinned(pool, 3)).id == 1, "a lower tier just freed"


async def test_prefer_of_a_lower_tier_key_skips_the_round_robin(form: Form) -> None:
    pool = await tiered(form, [(0, 1), (0, 1), (1, 1)])
    assert [(await pinned(pool, 2)).id for _ in range(3)] == [2, 2, 2]
