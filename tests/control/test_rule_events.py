"""The two key-health events only error rules (SPEC §15) send, held to the same answers in every
control form: a cooldown of the rule's own length, and a key disabled until a person acts."""

from __future__ import annotations

import pytest

from keygate.control.base import Event

from .conftest import Form

COOL = 30.0


async def test_a_rules_cooldown_is_its_own_length_without_strikes_or_guard(form: Form) -> None:
    pool = await form.pool(3, cooldown_s=COOL)
    now = form.clock()
    for _ in range(3):  # three keys cooled at once: no pool-wide pause, no keys let out
        e = (await pool.acquire(())).entry
        assert e is not None
        assert (
            await pool.release(e, Event.COOLING, now + 3600, "429 cool by error_rules[0]") is None
        )
    await form.settle()
    for key_id in (1, 2, 3):
        e = pool.entries[key_id]
        assert (e.status, e.until) == ("cooling", pytest.approx(now + 3600))
        assert e.last_error == "429 cool by error_rules[0]"
        assert e.strikes == 0
    pick = await pool.acquire(())
    assert pick.entry is None and pick.wait == pytest.approx(3600)
    form.clock.advance(3601)
    e = (await pool.acquire(())).entry
    assert e is not None and e.status == "active"


async def test_a_disabled_key_stays_out_until_set_active(form: Form) -> None:
    pool = await form.pool(2, recheck_interval_s=1)
    e = (await pool.acquire(())).entry
    assert e is not None
    await pool.release(e, Event.DISABLED, None, "403 disable by error_rules[1]")
    await form.settle()
    assert pool.entries[e.id].status == "disabled"
    assert pool.entries[e.id].last_error == "403 disable by error_rules[1]"
    form.clock.advance(3600)
    assert pool.due_for_recheck() == [], "never re-checked"
    for _ in range(4):
        other = (await pool.acquire(())).entry
        assert other is not None and other.id != e.id
        await pool.release(other, Event.OK)
    pool.set_status(e.id, "active")
    await form.settle()
    seen = set()
    for _ in range(4):
        got = (await pool.acquire(())).entry
        assert got is not None
        seen.add(got.id)
        await pool.release(got, Event.OK)
    assert e.id in seen


async def test_rule_events_leave_an_already_disabled_key_alone(form: Form) -> None:
    pool = await form.pool(2)
    e = (await pool.acquire(())).entry
    assert e is not None
    pool.set_status(e.id, "disabled")
    await pool.release(e, Event.COOLING, form.clock() + 60, "cool")
    await form.settle()
    assert pool.entries[e.id].status == "disabled"
