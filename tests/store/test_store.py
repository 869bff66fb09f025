"""The store contract, run against every backend in conftest.STORE_BACKENDS."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from keygate.store import (
    DuplicateKey,
    InvalidKey,
    Store,
    StoreError,
    create_store,
    mask,
    parse_key_input,
    sqlite_path,
)
from keygate.store.base import MAX_SECRET_LEN

OpenStore = Callable[..., Awaitable[Store]]  # the conftest fixture's type

PASSPHRASE = "correct horse battery staple"


def new_secret(prefix: str = "sk-") -> str:
    return prefix + secrets.token_hex(20)


def sqlite_file(db_location: str) -> Path:
    """The database file for SQLite-only checks; skips on other backends."""
    path = sqlite_path(db_location)
    if path is None:
        pytest.skip("SQLite file check")
    return path


def raw_files(db_file: Path) -> bytes:
    """Everything SQLite keeps on disk for this database."""
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        part = Path(f"{db_file}{suffix}")
        if part.exists():
            data += part.read_bytes()
    return data


# parsing and masking


def test_parse_key_input_splits_on_newlines_commas_whitespace() -> None:
    text = "sk-aaa1111\nsk-bbb2222, sk-ccc3333\t sk-ddd4444 ,,\n\n 'sk-eee5555' \"sk-fff6666\" sk-aaa1111"
    assert parse_key_input(text) == [
        "sk-aaa1111",
        "sk-bbb2222",
        "sk-ccc3333",
        "sk-ddd4444",
        "sk-eee5555",
        "sk-fff6666",
        "sk-aaa1111",  # repeats are kept for add_keys to report
    ]


def test_parse_key_input_json_array() -> None:
    assert parse_key_input('  ["sk-one1111", " sk-two2222 ", "", "sk-one1111"] ') == [
        "sk-one1111",
        "sk-two2222",
        "sk-one1111",
    ]
    # Not an array of strings: split as text instead, without the brackets and quotes (which
    # are never part of a key; the store then refuses "1" as too short).
    assert parse_key_input('[1, "sk-x1234567"]') == ["1", "sk-x1234567"]
    assert parse_key_input("") == []
    assert parse_key_input(" \n ,, \t") == []


def test_mask_never_returns_the_secret() -> None:
    for secret in ("sk-abcdefghijklmnop", "abcdefgh", "abcde", "a", "x" * 512):
        assert mask(secret) != secret
        assert "…" in mask(secret)
    assert mask("sk-abcdefghijklmnop") == "sk-a…mnop"


# keys


async def test_add_and_get_key(store: Store) -> None:
    secret = new_secret()
    rec = await store.add_key("groq", secret, label="Team A", source="cli")
    assert rec.id > 0
    assert rec.provider == "groq"
    assert rec.secret == secret
    assert rec.masked == mask(secret) and rec.masked != secret
    assert (rec.label, rec.status, rec.source, rec.until, rec.last_error) == (
        "Team A",
        "active",
        "cli",
        0.0,
        "",
    )
    assert abs(rec.created_at - time.time()) < 60
    assert (rec.use_count, rec.ok, rec.rpm, rec.max_conn) == (0, 0, 0, 0)

    [got] = await store.get_keys([rec.id])
    assert got == rec
    assert await store.get_keys([rec.id + 1000]) == []
    assert await store.get_keys([]) == []


async def test_add_key_strips_surrounding_whitespace(store: Store) -> None:
    secret = new_secret()
    rec = await store.add_key("groq", f"  {secret}\n")
    assert rec.secret == secret


async def test_duplicate_key(store: Store) -> None:
    secret = new_secret()
    first = await store.add_key("groq", secret)
    with pytest.raises(DuplicateKey) as info:
        await store.add_key("groq", secret)
    assert isinstance(info.value, StoreError)
    assert secret not in str(info.value)
    assert str(first.id) in str(info.value)
    # The same secret under another provider is a different key.
    other = await store.add_key("openai", secret)
    assert other.id != first.id


@pytest.mark.parametrize(
    "bad", ["", "   ", "sk-abc def", "sk-abc\tdef", "x" * (MAX_SECRET_LEN + 1)]
)
async def test_add_key_rejects_invalid(store: Store, bad: str) -> None:
    with pytest.raises(InvalidKey):
        await store.add_key("groq", bad)
    assert await store.load_keys() == []


async def test_add_key_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.add_key("", new_secret())
    with pytest.raises(ValueError):
        await store.add_key("groq", new_secret(), source="somewhere")


async def test_load_keys(store: Store) -> None:
    a = await store.add_key("groq", new_secret())
    b = await store.add_key("openai", new_secret())
    c = await store.add_key("groq", new_secret())
    assert [k.id for k in await store.load_keys()] == [a.id, b.id, c.id]
    assert [k.id for k in await store.load_keys("groq")] == [a.id, c.id]
    assert await store.load_keys("nobody") == []
    assert {k.secret for k in await store.load_keys()} == {a.secret, b.secret, c.secret}


async def test_list_keys_filters_search_pagination(store: Store) -> None:
    groq = [await store.add_key("groq", new_secret("gsk_"), label=f"groq {i}") for i in range(7)]
    oai = [await store.add_key("openai", new_secret(), label="Prod_Key 100%") for _ in range(3)]
    await store.update_key(groq[1].id, status="disabled")
    await store.update_key(groq[4].id, status="disabled")
    await store.update_key(oai[0].id, status="disabled")

    keys, total = await store.list_keys()
    assert total == 10
    assert [k.id for k in keys] == sorted((k.id for k in groq + oai), reverse=True)  # newest first

    keys, total = await store.list_keys(provider="groq")
    assert total == 7 and {k.provider for k in keys} == {"groq"}

    keys, total = await store.list_keys(status="disabled")
    assert total == 3 and {k.id for k in keys} == {groq[1].id, groq[4].id, oai[0].id}

    keys, total = await store.list_keys(provider="groq", status="disabled")
    assert total == 2 and [k.id for k in keys] == [groq[4].id, groq[1].id]

    keys, total = await store.list_keys(provider="groq", status="cooling")
    assert (keys, total) == ([], 0)

    # Search: label, case-insensitive substring.
    keys, total = await store.list_keys(q="GROQ 3")
    assert total == 1 and keys[0].id == groq[3].id
    keys, total = await store.list_keys(q="prod_key")
    assert total == 3
    # LIKE wildcards are literal.
    keys, total = await store.list_keys(q="100%")
    assert total == 3
    keys, total = await store.list_keys(q="Prod%Key")
    assert total == 0
    keys, total = await store.list_keys(q="groq_")
    assert total == 0
    # Search: the masked form, and part of it.
    keys, total = await store.list_keys(q=oai[2].masked)
    assert [k.id for k in keys] == [oai[2].id]
    keys, total = await store.list_keys(q=oai[2].masked[-4:].upper())
    assert oai[2].id in [k.id for k in keys]
    # Search: the whole secret pasted in finds its key.
    keys, total = await store.list_keys(q=groq[5].secret)
    assert [k.id for k in keys] == [groq[5].id]
    # Search combined with filters.
    keys, total = await store.list_keys(provider="openai", status="active", q="prod")
    assert total == 2

    # Pagination.
    page1, total = await store.list_keys(limit=4, offset=0)
    page2, _ = await store.list_keys(limit=4, offset=4)
    page3, _ = await store.list_keys(limit=4, offset=8)
    assert total == 10 and [len(page1), len(page2), len(page3)] == [4, 4, 2]
    ids = [k.id for k in page1 + page2 + page3]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 10
    keys, total = await store.list_keys(limit=4, offset=100)
    assert (keys, total) == ([], 10)
    keys, total = await store.list_keys(provider="groq", limit=2, offset=1)
    assert total == 7 and [k.id for k in keys] == [groq[5].id, groq[4].id]


async def test_add_keys_batch_statuses(store: Store) -> None:
    stored = await store.add_key("groq", new_secret())
    a, b, c = new_secret(), new_secret(), new_secret()
    text = f"{a}\n{b}, {a}\n\n{stored.secret}  ,, {c}\t{b}"
    tokens = parse_key_input(text)
    tokens += ["", "  ", "bad token", "x" * (MAX_SECRET_LEN + 1)]
    results = await store.add_keys("groq", tokens, source="cli")

    assert [r.status for r in results] == [
        "added",  # a
        "added",  # b
        "duplicate",  # a again
        "duplicate",  # already stored
        "added",  # c
        "duplicate",  # b again
        "invalid",
        "invalid",
        "invalid",
        "invalid",
    ]
    for r, token in zip(results, tokens, strict=True):
        assert r.input == mask(token.strip())
        if token.strip():
            assert token.strip() not in r.input
    assert results[0].id == results[2].id and results[0].id is not None
    assert results[1].id == results[5].id
    assert results[3].id == stored.id
    assert results[6].id is None and results[6].message
    assert results[3].message and results[2].message

    by_secret = {k.secret: k for k in await store.load_keys("groq")}
    assert set(by_secret) == {stored.secret, a, b, c}
    assert by_secret[a].id == results[0].id and by_secret[a].source == "cli"

    # Same input again: everything is a duplicate now, nothing added.
    again = await store.add_keys("groq", [a, b, c])
    assert [r.status for r in again] == ["duplicate"] * 3
    assert [r.id for r in again] == [results[0].id, results[1].id, results[4].id]
    # Another provider takes the same secrets.
    other = await store.add_keys("openai", [a, b])
    assert [r.status for r in other] == ["added", "added"]
    assert await store.add_keys("groq", []) == []


async def test_add_keys_json_array(store: Store) -> None:
    a, b = new_secret(), new_secret()
    results = await store.add_keys("groq", parse_key_input(json.dumps([a, "", b, a])))
    assert [r.status for r in results] == ["added", "added", "duplicate"]


async def test_update_key(store: Store) -> None:
    rec = await store.add_key("groq", new_secret())
    until = time.time() + 60
    upd = await store.update_key(
        rec.id, label="new", status="cooling", until=until, last_error="429", rpm=30, max_conn=2
    )
    assert upd is not None
    assert (upd.label, upd.status, upd.until, upd.last_error, upd.rpm, upd.max_conn) == (
        "new",
        "cooling",
        until,
        "429",
        30,
        2,
    )
    assert upd.secret == rec.secret
    [got] = await store.get_keys([rec.id])
    assert got == upd
    assert await store.update_key(rec.id) == upd  # nothing to change

    with pytest.raises(ValueError):
        await store.update_key(rec.id, secret="sk-other")
    with pytest.raises(ValueError):
        await store.update_key(rec.id, provider="openai")
    with pytest.raises(ValueError):
        await store.update_key(rec.id, status="broken")
    with pytest.raises(ValueError):
        await store.update_key(rec.id, rpm=-1)
    with pytest.raises(ValueError):
        await store.update_key(rec.id, rpm="10")
    assert await store.update_key(rec.id + 999, label="x") is None


async def test_delete_key_and_its_stats(store: Store) -> None:
    rec = await store.add_key("groq", new_secret())
    keep = await store.add_key("groq", new_secret())
    await store.add_counters(
        [(rec.id, 5, 4, 1, 0, 100, 200, 123.0)], {"groq": (5, 4, 1, 0, 100, 200)}
    )
    assert await store.delete_key(rec.id) is True
    assert await store.delete_key(rec.id) is False
    assert await store.get_keys([rec.id]) == []
    assert [k.id for k in await store.load_keys()] == [keep.id]
    # Counters for a deleted key are dropped, not resurrected; provider totals stay.
    await store.add_counters([(rec.id, 1, 1, 0, 0, 1, 1, 124.0)], {})
    again = await store.add_key("groq", rec.secret)
    assert again.id != rec.id and again.use_count == 0 and again.last_used == 0
    assert (await store.provider_totals())["groq"]["requests"] == 5


async def test_save_health(store: Store) -> None:
    a = await store.add_key("groq", new_secret())
    b = await store.add_key("groq", new_secret())
    until = time.time() + 300
    await store.save_health(
        [(a.id, "cooling", until, "429 Too Many Requests"), (b.id, "invalid", 0.0, "401")]
    )
    got = {k.id: k for k in await store.get_keys([a.id, b.id])}
    assert (got[a.id].status, got[a.id].until, got[a.id].last_error) == (
        "cooling",
        until,
        "429 Too Many Requests",
    )
    assert (got[b.id].status, got[b.id].last_error) == ("invalid", "401")
    await store.save_health([])
    await store.save_health([(9999, "active", 0.0, "")])  # a deleted key: ignored
    with pytest.raises(ValueError):
        await store.save_health([(a.id, "sleeping", 0.0, "")])


async def test_counters_add_up_across_instances(open_store: OpenStore) -> None:
    one = await open_store()
    two = await open_store()
    rec = await one.add_key("groq", new_secret())
    seq = await one.current_seq()

    await one.add_counters([(rec.id, 3, 2, 1, 0, 100, 50, 1000.0)], {"groq": (3, 2, 1, 0, 100, 50)})
    await two.add_counters(
        [(rec.id, 2, 1, 0, 1, 10, 5, 900.0)],
        {"groq": (2, 1, 0, 1, 10, 5), "openai": (1, 1, 0, 0, 7, 8)},
    )
    await asyncio.gather(
        one.add_counters([(rec.id, 1, 1, 0, 0, 1, 1, 1500.0)], {"groq": (1, 1, 0, 0, 1, 1)}),
        two.add_counters([(rec.id, 1, 1, 0, 0, 1, 1, 1200.0)], {"groq": (1, 1, 0, 0, 1, 1)}),
    )
    for s in (one, two):
        [got] = await s.get_keys([rec.id])
        assert (got.use_count, got.ok, got.err_4xx, got.err_5xx) == (7, 5, 1, 1)
        assert (got.tokens_in, got.tokens_out, got.last_used) == (112, 57, 1500.0)
        totals = await s.provider_totals()
        assert totals["groq"] == {
            "requests": 7,
            "ok": 5,
            "err_4xx": 1,
            "err_5xx": 1,
            "tokens_in": 112,
            "tokens_out": 57,
        }
        assert totals["openai"]["tokens_out"] == 8
    [listed], _ = await one.list_keys()
    assert listed.use_count == 7
    # Counter flushes do not move the change feed.
    assert await one.current_seq() == seq
    await one.add_counters([], {})


async def test_key_counts(store: Store) -> None:
    ids = [(await store.add_key("groq", new_secret())).id for _ in range(4)]
    await store.add_key("openai", new_secret())
    await store.update_key(ids[0], status="disabled")
    await store.save_health([(ids[1], "cooling", time.time() + 5, "429")])
    assert await store.key_counts() == {
        "groq": {"active": 2, "disabled": 1, "cooling": 1},
        "openai": {"active": 1},
    }


async def test_provider_overrides_merge(store: Store) -> None:
    assert await store.get_provider_overrides() == {}
    await store.set_provider_override("groq", {"rps": 2, "burst": 4})
    await store.set_provider_override("groq", {"burst": 6, "default_model": "llama"})
    await store.set_provider_override("openai", {"max_conn": 0})
    assert await store.get_provider_overrides() == {
        "groq": {"rps": 2, "burst": 6, "default_model": "llama"},
        "openai": {"max_conn": 0},
    }
    # None drops a field back to the config/env value.
    await store.set_provider_override("groq", {"rps": None, "headers": {"x-a": "1"}})
    assert (await store.get_provider_overrides())["groq"] == {
        "burst": 6,
        "default_model": "llama",
        "headers": {"x-a": "1"},
    }
    with pytest.raises(ValueError):
        await store.set_provider_override("groq", {"rps": object()})


async def test_meta(store: Store) -> None:
    assert await store.get_meta("admin_token") is None
    await store.set_meta("admin_token", "abc")
    await store.set_meta("admin_token", "def")
    await store.set_meta("default_model", "")
    assert await store.get_meta("admin_token") == "def"
    assert await store.get_meta("default_model") == ""


async def test_model_routes_and_their_feed(open_store: OpenStore) -> None:
    server = await open_store()
    other = await open_store()  # a second instance on the same database
    seq = await other.current_seq()
    assert await server.get_model_routes() == {}
    await server.set_model_route("fast", {"strategy": "fallback", "targets": ["groq/a"]})
    await server.set_model_route("gpt-4o", "openai/gpt-4o-mini")
    await server.set_model_route("hidden", None)  # hides a config entry of that name
    assert await other.get_model_routes() == {
        "fast": {"strategy": "fallback", "targets": ["groq/a"]},
        "gpt-4o": "openai/gpt-4o-mini",
        "hidden": None,
    }
    changes = await other.changes_since(seq)
    assert changes.models_changed and not changes.key_ids
    seq = changes.seq
    assert not (await other.changes_since(seq)).models_changed
    assert await server.delete_model_route("fast")
    assert not await server.delete_model_route("fast")
    changes = await other.changes_since(seq)
    assert changes.models_changed  # a deletion shows too
    assert set(await other.get_model_routes()) == {"gpt-4o", "hidden"}
    assert not (await other.changes_since(changes.seq)).models_changed
    with pytest.raises(ValueError):
        await server.set_model_route("", "groq/a")


# admin sessions


async def test_session_revocations_are_shared_and_pruned(
    open_store: OpenStore, db_location: str
) -> None:
    server = await open_store()
    other = await open_store()  # a second instance on the same database
    now = time.time()
    assert not await server.session_revoked("s-1")
    await server.revoke_session("s-1", now + 3600)
    await server.revoke_session("s-1", now + 60)  # revoking again never shortens it
    assert await server.session_revoked("s-1")
    assert await other.session_revoked("s-1")
    assert not await other.session_revoked("s-2")
    # One that has expired counts as not revoked (the session itself is dead by then), and the
    # next revocation prunes it.
    await other.revoke_session("s-old", now - 1)
    assert not await server.session_revoked("s-old")
    await other.revoke_session("s-2", now + 3600)
    await server.close()
    reopened = await open_store()
    assert await reopened.session_revoked("s-1") and await reopened.session_revoked("s-2")
    for bad in ("", "x" * 65):
        with pytest.raises(ValueError):
            await reopened.revoke_session(bad, now + 60)
    with pytest.raises(ValueError):
        await reopened.revoke_session("s-3", float("inf"))
    if sqlite_path(db_location):
        with sqlite3.connect(sqlite_file(db_location)) as conn:
            ids = {r[0] for r in conn.execute("SELECT session_id FROM revoked_sessions")}
        assert ids == {"s-1", "s-2"}


# change feed


async def test_change_feed_sees_another_writer(open_store: OpenStore) -> None:
    server = await open_store()
    cli = await open_store()  # another process on the same database, as the CLI is
    existing = await server.add_key("groq", new_secret())
    seq = await server.current_seq()
    ch = await server.changes_since(seq)
    assert (ch.seq, ch.key_ids, ch.deleted_ids, ch.providers_changed) == (seq, [], [], False)

    added = await cli.add_key("groq", new_secret())
    batch = await cli.add_keys("openai", [new_secret(), new_secret()])
    await cli.update_key(existing.id, status="disabled")
    ch = await server.changes_since(seq)
    assert ch.seq > seq and not ch.full
    assert ch.key_ids == sorted([added.id, existing.id, *(r.id for r in batch)])
    assert ch.deleted_ids == [] and ch.providers_changed is False
    [got] = await server.get_keys([existing.id])
    assert got.status == "disabled"

    seq = ch.seq
    await cli.delete_key(added.id)
    await cli.save_health([(existing.id, "cooling", time.time() + 30, "429")])
    ch = await server.changes_since(seq)
    assert ch.key_ids == [existing.id]
    assert ch.deleted_ids == [added.id]
    assert ch.providers_changed is False

    seq = ch.seq
    await cli.set_provider_override("groq", {"rps": 9})
    ch = await server.changes_since(seq)
    assert (ch.key_ids, ch.deleted_ids, ch.providers_changed) == ([], [], True)
    seq = ch.seq
    await cli.set_meta("default_model", "gpt-4o")
    ch = await server.changes_since(seq)
    assert ch.providers_changed is True
    assert await server.get_meta("default_model") == "gpt-4o"
    assert (await server.changes_since(ch.seq)).key_ids == []
    assert ch.seq == await server.current_seq() == await cli.current_seq()


async def test_change_feed_skips_unchanged_health(store: Store) -> None:
    rec = await store.add_key("groq", new_secret())
    until = time.time() + 30
    await store.save_health([(rec.id, "cooling", until, "429")])
    seq = await store.current_seq()
    await store.save_health([(rec.id, "cooling", until, "429")])  # echo of the same state
    assert await store.current_seq() == seq
    assert (await store.changes_since(seq)).key_ids == []


async def test_change_feed_from_zero_and_from_the_future(store: Store) -> None:
    a = await store.add_key("groq", new_secret())
    b = await store.add_key("groq", new_secret())
    ch = await store.changes_since(0)
    assert ch.key_ids == [a.id, b.id] and not ch.full
    # A seq this database never handed out (another database, restored backup): reload all.
    ch = await store.changes_since(ch.seq + 100)
    assert ch.full and ch.key_ids == [a.id, b.id] and ch.providers_changed


async def test_change_feed_asks_for_full_reload_after_pruning(open_store: OpenStore) -> None:
    store = await open_store()
    if not hasattr(store, "tombstone_ttl_s"):
        pytest.skip("backend has no tombstone TTL knob")
    a = await store.add_key("groq", new_secret())
    b = await store.add_key("groq", new_secret())
    c = await store.add_key("groq", new_secret())
    seq = await store.current_seq()
    await store.delete_key(a.id)
    store.tombstone_ttl_s = -1.0  # the next delete prunes every tombstone
    await store.delete_key(b.id)
    ch = await store.changes_since(seq)
    assert ch.full and ch.key_ids == [c.id]
    assert not (await store.changes_since(ch.seq)).full


# durability, migrations, files


async def test_reopen_keeps_everything_and_migrations_are_idempotent(
    open_store: OpenStore, db_location: str
) -> None:
    s = await open_store()
    rec = await s.add_key("groq", new_secret(), label="kept")
    await s.set_provider_override("groq", {"rps": 3})
    await s.add_counters([(rec.id, 2, 2, 0, 0, 5, 6, 77.0)], {"groq": (2, 2, 0, 0, 5, 6)})
    seq = await s.current_seq()
    await s.close()
    await s.close()  # twice is fine
    with pytest.raises(StoreError):
        await s.load_keys()

    for _ in range(2):
        s = await open_store()
        [got] = await s.load_keys()
        assert (got.id, got.secret, got.label, got.use_count) == (rec.id, rec.secret, "kept", 2)
        assert await s.get_provider_overrides() == {"groq": {"rps": 3}}
        assert await s.current_seq() == seq
        await s.close()

    if sqlite_path(db_location):
        with sqlite3.connect(sqlite_file(db_location)) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == sorted(set(versions)) and versions[0] == 1


async def test_newer_schema_is_refused(open_store: OpenStore, db_location: str) -> None:
    path = sqlite_file(db_location)
    s = await open_store()
    await s.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, 'x', 0)"
        )
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        await open_store()


async def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a database"):
        await create_store(f"sqlite:///{path}").open()


async def test_sqlite_settings(store: Store, db_location: str) -> None:
    sqlite_file(db_location)
    conn = store._conn  # type: ignore[attr-defined]
    modes = await store._run(  # type: ignore[attr-defined]
        lambda c: (
            c.execute("PRAGMA journal_mode").fetchone()[0],
            c.execute("PRAGMA busy_timeout").fetchone()[0],
            c.execute("PRAGMA synchronous").fetchone()[0],
            threading.current_thread().name,
        )
    )
    assert conn is not None
    assert modes[0] == "wal" and modes[1] >= 5000 and modes[2] == 1  # 1 = NORMAL
    assert modes[3].startswith("keygate-sqlite") and modes[3] != threading.current_thread().name


async def test_sqlite_feed_poll_reads_the_index_not_the_table(
    store: Store, db_location: str
) -> None:
    """A poll that finds nothing new stays cheap with many keys, also once the planner has
    statistics (PRAGMA optimize at close runs ANALYZE): it must not walk every key row."""
    sqlite_file(db_location)
    n = 20_000
    await store.add_keys("groq", [new_secret() for _ in range(n)])
    await store._run(lambda c: c.execute("ANALYZE"))  # type: ignore[attr-defined]
    seq = await store.current_seq()
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    await store._run(lambda c: c.set_progress_handler(count, 100))  # type: ignore[attr-defined]
    try:
        changes = await store.changes_since(seq)
    finally:
        await store._run(lambda c: c.set_progress_handler(None, 0))  # type: ignore[attr-defined]
    assert changes.key_ids == [] and not changes.full
    # a scan of the keys costs several virtual-machine steps per row: > n / 100 ticks
    assert steps[0] < n / 1000, f"{steps[0] * 100} VM steps for an empty poll"


KILL_SCRIPT = """
import asyncio, os, signal, sys
from keygate.store import create_store

async def main():
    s = create_store(sys.argv[1], sys.argv[2])
    await s.open()
    rec = await s.add_key("groq", sys.argv[3], label="survivor")
    await s.set_meta("note", "kept")
    print(rec.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.mark.parametrize("secret_key", ["", PASSPHRASE])
async def test_commits_survive_kill_9(
    open_store: OpenStore, db_location: str, secret_key: str
) -> None:
    secret = new_secret()
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", KILL_SCRIPT, db_location, secret_key, secret],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    s = await open_store(secret_key)
    [got] = await s.load_keys()
    assert (got.id, got.secret, got.label) == (int(proc.stdout), secret, "survivor")
    assert await s.get_meta("note") == "kept"


async def test_concurrent_writers(open_store: OpenStore) -> None:
    one = await open_store()
    two = await open_store()

    async def writer(s: Store, provider: str) -> None:
        for _ in range(20):
            rec = await s.add_key(provider, new_secret())
            await s.update_key(rec.id, label="x")
            await s.add_counters(
                [(rec.id, 1, 1, 0, 0, 1, 1, time.time())], {provider: (1, 1, 0, 0, 1, 1)}
            )

    await asyncio.gather(writer(one, "groq"), writer(two, "openai"), writer(one, "xai"))
    assert {p: sum(c.values()) for p, c in (await two.key_counts()).items()} == {
        "groq": 20,
        "openai": 20,
        "xai": 20,
    }


# encryption at rest


async def test_encrypted_files_hold_no_secret(open_store: OpenStore, db_location: str) -> None:
    path = sqlite_file(db_location)
    s = await open_store(PASSPHRASE)
    one = await s.add_key("groq", new_secret(), label="labelled")
    batch = [new_secret("gsk_") for _ in range(200)]
    await s.add_keys("groq", batch)
    await s.update_key(one.id, status="disabled")
    all_secrets = [one.secret, *batch]
    assert {k.secret for k in await s.load_keys()} == set(all_secrets)

    def leaked(data: bytes) -> list[str]:
        # The whole secret and its unmasked middle must appear nowhere.
        return [x for x in all_secrets if x.encode() in data or x[4:-4].encode() in data]

    assert leaked(raw_files(path)) == []  # while open (WAL holds the recent pages)
    assert PASSPHRASE.encode() not in raw_files(path)
    await s.close()
    data = raw_files(path)
    assert b"labelled" in data  # sanity: we really read the database
    assert leaked(data) == []
    assert PASSPHRASE.encode() not in data

    with sqlite3.connect(path) as conn:
        stored = [r[0] for r in conn.execute("SELECT secret FROM keys")]
    assert stored and all(x.startswith("enc:v1:") for x in stored)


async def test_encrypted_store_works_like_a_plain_one(open_store: OpenStore) -> None:
    s = await open_store(PASSPHRASE)
    secret = new_secret()
    rec = await s.add_key("groq", secret)
    assert rec.secret == secret and rec.masked == mask(secret)
    with pytest.raises(DuplicateKey):
        await s.add_key("groq", secret)
    results = await s.add_keys("groq", [secret, new_secret()])
    assert [r.status for r in results] == ["duplicate", "added"]
    keys, total = await s.list_keys(q=secret)
    assert total == 1 and keys[0].id == rec.id
    await s.close()
    again = await open_store(PASSPHRASE)
    assert {k.secret for k in await again.load_keys()} >= {secret}


async def test_wrong_secret_key(open_store: OpenStore) -> None:
    s = await open_store(PASSPHRASE)
    await s.add_key("groq", new_secret())
    await s.close()
    with pytest.raises(StoreError) as info:
        await open_store("not the passphrase")
    assert str(info.value) == (
        "KEYGATE_SECRET_KEY does not match the key this database was encrypted with"
    )


async def test_missing_secret_key(open_store: OpenStore) -> None:
    s = await open_store(PASSPHRASE)
    await s.add_key("groq", new_secret())
    await s.close()
    with pytest.raises(StoreError, match="KEYGATE_SECRET_KEY is required"):
        await open_store("")


async def test_plaintext_db_is_encrypted_in_place(open_store: OpenStore, db_location: str) -> None:
    plain = await open_store()
    originals = [new_secret() for _ in range(50)]
    await plain.add_keys("groq", originals)
    doomed = await plain.add_key("groq", new_secret())
    await plain.delete_key(doomed.id)
    ids = {k.secret: k.id for k in await plain.load_keys()}
    await plain.close()
    if sqlite_path(db_location):
        assert originals[0].encode() in raw_files(sqlite_file(db_location))

    enc = await open_store(PASSPHRASE)
    got = {k.secret: k.id for k in await enc.load_keys()}
    assert got == ids
    with pytest.raises(DuplicateKey):  # fingerprints were redone with the key
        await enc.add_key("groq", originals[3])
    await enc.close()

    if sqlite_path(db_location):
        data = raw_files(sqlite_file(db_location))
        assert [x for x in [*originals, doomed.secret] if x.encode() in data] == []
    # From now on the key is required, and must be the same one.
    with pytest.raises(StoreError, match="required"):
        await open_store("")
    with pytest.raises(StoreError, match="does not match"):
        await open_store(PASSPHRASE + "!")
    again = await open_store(PASSPHRASE)
    assert len(await again.load_keys()) == 50


async def test_plain_writer_refused_after_encryption(open_store: OpenStore) -> None:
    old_server = await open_store()  # started before encryption was switched on
    await open_store(PASSPHRASE)
    with pytest.raises(StoreError, match="KEYGATE_SECRET_KEY is required"):
        await old_server.add_key("groq", new_secret())


# factory


def test_create_store_locations(tmp_path: Path) -> None:
    from keygate.store.sqlite import SqliteStore

    s = create_store(f"sqlite:///{tmp_path}/a/keygate.db")
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "a" / "keygate.db"
    s = create_store(f"sqlite:///{tmp_path}/b.db", "pw")
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "b.db"
    s = create_store(f"{tmp_path}/c.db")
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "c.db"
    with pytest.raises(StoreError):
        create_store("mysql://localhost/db")
    for dsn in ("postgresql://u@localhost/db", "postgres://u@localhost/db"):
        try:
            s = create_store(dsn)
        except StoreError as exc:
            assert str(exc) == "PostgreSQL store not available"
        else:
            assert type(s).__name__ == "PostgresStore"


# scale


@pytest.mark.slow
async def test_100k_keys(store: Store) -> None:
    """Every one of 100k imported keys is stored, counted, reachable page by page and found by
    search, with exact answers (a handful labelled and disabled so the filters have some), and
    the import does not block the event loop."""
    n = 100_000
    tokens = [f"sk-{i:06d}-{secrets.token_hex(16)}" for i in range(n)]
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.005)  # the loop's heartbeat: counts ticks during the import
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    results = await store.add_keys("groq", tokens, source="cli")
    import_s = time.perf_counter() - t0
    stop.set()
    await tick_task
    assert [r.status for r in results].count("added") == n
    ids = [r.id for r in results]
    assert None not in ids and len(set(ids)) == n
    assert ticks > 10, "the event loop was blocked during the import"

    extra_secret = new_secret()
    t0 = time.perf_counter()
    again = await store.add_keys("groq", [*tokens[:1000], extra_secret])
    reimport_s = time.perf_counter() - t0
    assert [r.status for r in again] == ["duplicate"] * 1000 + ["added"]
    assert [r.id for r in again[:1000]] == ids[:1000]  # each duplicate names the stored key
    assert again[1000].id is not None
    ids.append(again[1000].id)
    secret_of = dict(zip(ids, [*tokens, extra_secret], strict=True))

    # A known few disabled and labelled, so filters and search have exact answers.
    disabled = [ids[3], ids[50_000], ids[n - 2]]
    labelled = [ids[10], ids[60_000], ids[n]]
    for key_id in disabled:
        await store.update_key(key_id, status="disabled")
    for key_id in labelled:
        await store.update_key(key_id, label="Needle team")
    label_of = dict.fromkeys(labelled, "Needle team")

    total_n = n + 1
    newest_first = sorted(ids, reverse=True)
    active = [i for i in newest_first if i not in disabled]

    def found(q: str) -> list[int]:
        """What a label/masked search must find: the same rule, computed here."""
        q = q.lower()
        return [
            i
            for i in newest_first
            if q in label_of.get(i, "").lower() or q in mask(secret_of[i]).lower()
        ]

    suffix = mask(tokens[77_777])[-4:].upper()  # part of the masked form, other case
    by_suffix = found(suffix)
    assert ids[77_777] in by_suffix
    cases: dict[str, tuple[dict[str, object], int, list[int]]] = {
        "first page": ({}, total_n, newest_first[:50]),
        "provider": ({"provider": "groq"}, total_n, newest_first[:50]),
        "other provider": ({"provider": "openai"}, 0, []),
        "provider+status": ({"provider": "groq", "status": "active"}, total_n - 3, active[:50]),
        "status (few)": ({"status": "disabled"}, 3, sorted(disabled, reverse=True)),
        "middle page": ({"offset": 50_000}, total_n, newest_first[50_000:50_050]),
        "last page": ({"offset": total_n - 50}, total_n, newest_first[-50:]),
        "past the end": ({"offset": total_n}, total_n, []),
        "search label": ({"q": "needle"}, 3, sorted(labelled, reverse=True)),
        "search masked": ({"q": suffix}, len(by_suffix), by_suffix[:50]),
        "search prefix (all)": ({"q": "sk-"}, total_n, newest_first[:50]),
        "search no match": ({"q": "zzzz"}, 0, []),
        "search full secret": ({"q": tokens[77_777]}, 1, [ids[77_777]]),
    }
    timings: dict[str, float] = {}
    for name, (kwargs, want_total, want_ids) in cases.items():
        await store.list_keys(**kwargs)  # warm
        t0 = time.perf_counter()
        keys, total = await store.list_keys(**kwargs)
        timings[name] = time.perf_counter() - t0
        assert (total, [k.id for k in keys]) == (want_total, want_ids), name

    # Every key is reachable page by page: the pages together are all keys, once, in order.
    walked: list[int] = []
    for offset in range(0, total_n, 20_000):
        page, total = await store.list_keys(limit=20_000, offset=offset)
        assert total == total_n
        walked += [k.id for k in page]
    assert walked == newest_first

    t0 = time.perf_counter()
    loaded = await store.load_keys()
    load_s = time.perf_counter() - t0
    assert [k.id for k in loaded] == sorted(ids)
    assert {k.id: k.secret for k in loaded} == secret_of
    assert {k.id for k in loaded if k.status == "disabled"} == set(disabled)

    print(f"\n100k add_keys: {import_s:.2f} s (loop ticks during it: {ticks})")
    print(f"re-import 1,001 (1,000 duplicates): {reimport_s * 1000:.1f} ms")
    print(f"load_keys 100k: {load_s:.2f} s")
    for name, secs in timings.items():
        print(f"list_keys {name}: {secs * 1000:.1f} ms")
    assert import_s < 60
    assert max(timings.values()) < 1.0


async def test_day_counters_add_up_and_a_new_day_replaces_them(open_store: OpenStore) -> None:
    one = await open_store()
    two = await open_store()
    rec = await one.add_key("groq", new_secret())
    other = await one.add_key("groq", new_secret())
    day, tomorrow = 1_000_000.0, 1_086_400.0
    await one.add_day_counters([(rec.id, day, 3, 300)])
    await two.add_day_counters([(rec.id, day, 2, 50), (other.id, day, 1, 10)])
    [got] = await two.get_keys([rec.id])
    assert (got.day, got.day_requests, got.day_tokens) == (day, 5, 350), "instances add up"
    await one.add_day_counters([(rec.id, tomorrow, 1, 7)])
    await two.add_day_counters([(rec.id, day, 4, 40)])  # a late flush of yesterday: dropped
    [got] = await one.get_keys([rec.id])
    assert (got.day, got.day_requests, got.day_tokens) == (tomorrow, 1, 7), "a new day replaces"
    # the key's own limits go with it
    updated = await one.update_key(rec.id, rph=100, rpd=1000, tpm=5, tph=6, tpd=7)
    assert updated is not None and updated.limits() == (0, 100, 1000, 5, 6, 7)
    with pytest.raises(ValueError):
        await one.update_key(rec.id, tpd=-1)
    # a deleted key's counters go with it and never come back
    assert await one.delete_key(rec.id)
    await two.add_day_counters([(rec.id, tomorrow, 9, 9)])
    assert await one.get_keys([rec.id]) == []
    assert [(k.id, k.day_requests) for k in await one.load_keys()] == [(other.id, 1)]
