"""Key tiers and weights in the store (SPEC §15), on every backend: stored, validated, and
carried by the change feed to another reader (a running server following a CLI write)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import pytest

from keygate.store.base import Store

OpenStore = Callable[..., Awaitable[Store]]


async def test_tier_and_weight_are_stored_and_follow_the_feed(
    store: Store, open_store: OpenStore
) -> None:
    rec = await store.add_key("groq", "sk-" + secrets.token_hex(20))
    assert (rec.tier, rec.weight) == (0, 1), "the defaults"
    other = await open_store()  # a running server's view of the same database
    seq = await other.current_seq()
    upd = await store.update_key(rec.id, tier=2, weight=7)
    assert upd is not None and (upd.tier, upd.weight) == (2, 7)
    changes = await other.changes_since(seq)
    assert rec.id in changes.key_ids
    [got] = await other.get_keys([rec.id])
    assert (got.tier, got.weight) == (2, 7)
    [listed] = (await other.list_keys("groq"))[0]
    assert (listed.tier, listed.weight) == (2, 7)


@pytest.mark.parametrize(
    ("field", "value"),
    [("tier", -1), ("tier", 1001), ("tier", "1"), ("weight", 0), ("weight", 101), ("weight", 2.5)],
)
async def test_bad_tier_or_weight_is_refused(store: Store, field: str, value: object) -> None:
    rec = await store.add_key("groq", "sk-" + secrets.token_hex(20))
    with pytest.raises(ValueError, match=field):
        await store.update_key(rec.id, **{field: value})
    [got] = await store.get_keys([rec.id])
    assert (got.tier, got.weight) == (0, 1)
