"""Client keys in the store (SPEC §13), against every backend: records, checked fields, the
change feed (create, change, delete reach other instances), usage per period, and a restart
that keeps both."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from keygate.clients.secret import key_hash, mask, new_key
from keygate.store import Store

OpenStore = Callable[..., Awaitable[Store]]


async def test_add_list_update_delete(store: Store) -> None:
    key = new_key()
    rec = await store.add_client(
        key_hash(key),
        mask(key),
        {"name": "alice", "rpd": 10, "models": ["groq/*", "gpt-4o"], "providers": ["groq"]},
    )
    assert rec.name == "alice" and rec.rpd == 10 and rec.enabled
    assert rec.models == ["groq/*", "gpt-4o"] and rec.providers == ["groq"]
    assert rec.key_hash == key_hash(key) and key not in repr(rec)
    changed = await store.update_client(rec.id, {"enabled": False, "rpm": 3, "models": []})
    assert changed is not None and not changed.enabled and changed.rpm == 3 and changed.models == []
    assert [c.id for c in await store.load_clients()] == [rec.id]
    assert await store.delete_client(rec.id)
    assert not await store.delete_client(rec.id)
    assert await store.load_clients() == []
    assert await store.get_client(rec.id) is None
    assert await store.update_client(rec.id, {"rpm": 1}) is None


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "name"),
        ({"name": "a", "tpd": -5}, "tpd"),
        ({"name": "a", "monthly_tokens": 1.5}, "monthly_tokens"),
        ({"name": "a", "models": ["a*b"]}, "models"),
        ({"name": "a", "enabled": 1}, "enabled"),
        ({"name": "a", "expires_at": time.time() - 10}, "expires_at"),
    ],
)
async def test_bad_fields_name_the_field(store: Store, doc: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        await store.add_client("h", "m", doc)
    assert await store.load_clients() == []


async def test_the_feed_carries_every_change(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    seq = await b.current_seq()
    rec = await a.add_client("h1", "m1", {"name": "x"})
    changes = await b.changes_since(seq)
    assert changes.clients_changed and not changes.key_ids
    seq = changes.seq
    assert not (await b.changes_since(seq)).clients_changed
    await a.update_client(rec.id, {"rpd": 4})
    changes = await b.changes_since(seq)
    assert changes.clients_changed
    seq = changes.seq
    await a.delete_client(rec.id)
    changes = await b.changes_since(seq)
    assert changes.clients_changed and await b.load_clients() == []


async def test_usage_is_additive_per_period_and_survives_a_reopen(open_store: OpenStore) -> None:
    st = await open_store()
    rec = await st.add_client("h", "m", {"name": "u"})
    await st.add_client_counters(
        [(rec.id, "all", 2, 10, 20, 1, 5.0), (rec.id, "d:2026-12-02", 2, 10, 20, 1, 5.0)]
    )
    await st.add_client_counters(
        [(rec.id, "all", 1, 1, 1, 0, 9.0), (rec.id, "all", 1, 0, 0, 0, 7.0)]
    )
    await st.close()
    st = await open_store()
    usage = await st.client_usage(["all", "d:2026-12-02", "m:2026-12"])
    assert usage[rec.id]["all"] == {
        "requests": 4,
        "tokens_in": 11,
        "tokens_out": 21,
        "errors": 1,
        "last_used": 9.0,
    }
    assert usage[rec.id]["d:2026-12-02"]["requests"] == 2
    assert "m:2026-12" not in usage[rec.id]
    assert [c.name for c in await st.load_clients()] == ["u"]
