"""A key revived by a test outside the running server (`keygate keys test`, another instance)
reaches the server through the store's change feed, as an admin's write does; a stale read-back
of the store (a row the server wrote before it marked the key bad) still revives nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from harness import CHAT, eventually, wait_for_store
from keygate.config.settings import load_settings
from keygate.runtime.keyops import KeyOps
from keygate.runtime.sync import StoreSync
from keygate.store import create_store
from keygate.testing.mock_upstream import MockUpstream
from servers import redis_bin, start_redis

KEY = "csk-revive-aaaaaaaaaaaa0001"


def _chat(gw: Any) -> int:
    r = httpx.post(
        gw.url + "/cerebras/v1/chat/completions", json=CHAT, headers=gw.auth(), timeout=10
    )
    return r.status_code


@pytest.mark.parametrize(
    "shared",
    [
        "local",
        pytest.param(
            "redis",
            marks=[
                pytest.mark.redis,
                pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed"),
            ],
        ),
    ],
)
def test_cli_keys_test_revives_the_key_in_a_running_server(
    gateway_factory: Any, mock: MockUpstream, tmp_path: Path, shared: str
) -> None:
    env = {"CEREBRAS_API_KEYS": KEY, "KV_FLUSH_INTERVAL_MS": "200"}
    if shared == "redis":  # the pools' health lives in Redis: the revive must reach it too
        redis = start_redis(tmp_path / "redis")
        env["KEYGATE_REDIS_URL"] = redis.url
    try:
        _cli_revive(gateway_factory(env=env), mock)
    finally:
        if shared == "redis":
            redis.stop()


def _cli_revive(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(KEY, status=401)
    assert _chat(gw) == 401
    assert _chat(gw) == 503  # the one key is invalid: nothing is sent
    [key] = gw.api("GET", "/api/keys", headers=gw.admin()).json()["keys"]
    assert key["status"] == "invalid"

    async def stored_invalid(store: Any) -> bool:
        [rec] = await store.get_keys([key["id"]])
        return bool(rec.status == "invalid")

    wait_for_store(gw, stored_invalid, 10, "the server flushed the key as invalid")

    mock.set_behavior(KEY)  # the upstream takes the key again
    proc = subprocess.run(
        [sys.executable, "-m", "keygate", "keys", "test", str(key["id"])],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "now active" in proc.stdout, proc.stdout
    sent = mock.count(KEY)
    # the server follows within its change poll (1 s), not at the key's re-check (300 s)
    eventually(lambda: _chat(gw) == 200, 5, "the running server uses the revived key")
    assert mock.count(KEY) > sent
    [key] = gw.api("GET", "/api/keys", headers=gw.admin()).json()["keys"]
    assert key["status"] == "active"


def test_an_admin_revive_on_one_instance_reaches_another(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    env = {"CEREBRAS_API_KEYS": KEY, "KV_FLUSH_INTERVAL_MS": "200"}
    a = gateway_factory(env=env)
    b = gateway_factory(env=env, data_dir=a.data_dir)  # two instances, one store
    mock.set_behavior(KEY, status=401)
    assert _chat(a) == 401

    def b_status() -> str:
        [key] = b.api("GET", "/api/keys", headers=b.admin()).json()["keys"]
        return str(key["status"])

    # the other instance follows a condemnation from the store (as it always did)
    eventually(lambda: b_status() == "invalid", 5, "the second instance sees the key invalid")
    assert _chat(b) == 503
    [key] = a.api("GET", "/api/keys", headers=a.admin()).json()["keys"]

    mock.set_behavior(KEY)
    r = a.api("PATCH", f"/api/keys/{key['id']}", headers=a.admin(), json={"status": "active"})
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    assert _chat(a) == 200
    eventually(lambda: _chat(b) == 200, 5, "the other instance follows the admin's revive")


# --- in-process: the same store, a second writer ------------------------------------------


async def _setup(tmp_path: Path, mock: MockUpstream) -> tuple[Any, StoreSync, Any, Any]:
    from keygate.runtime.provider import ProviderRuntime

    settings = load_settings(
        {"KEYGATE_DATA_DIR": str(tmp_path), "KEYGATE_CEREBRAS_BASE_URL": mock.url}
    )
    store = create_store(f"sqlite:///{tmp_path / 'keygate.db'}", "")
    await store.open()
    await store.add_keys("cerebras", [KEY], source="env")
    rt = ProviderRuntime(settings.providers["cerebras"])
    sync = StoreSync(store, {"cerebras": rt}, settings)
    await sync.load_all()
    [entry] = rt.pool.entries.values()
    return store, sync, rt, entry


async def _cli_test(tmp_path: Path, rt: Any, key_id: int) -> str:
    """`keygate keys test` as the CLI runs it: its own store connection, no running gateway."""
    other = create_store(f"sqlite:///{tmp_path / 'keygate.db'}", "")
    await other.open()
    try:
        [rec] = await other.get_keys([key_id])
        async with aiohttp.ClientSession() as session:
            result = await KeyOps(other).test(session, rt.cfg, rec)
        assert result.ok and result.health is not None, result
        return result.health[0]
    finally:
        await other.close()


async def test_a_revive_from_another_process_wins_a_stale_read_back_does_not(
    tmp_path: Path, mock: MockUpstream
) -> None:
    store, sync, rt, entry = await _setup(tmp_path, mock)
    try:
        now = time.time()
        # the server marks the key bad; the store still has "active" until the next flush,
        # and any row of it read back before then (here: an admin's label change) is stale
        rt.pool.set_status(entry.id, "invalid", now + 300, "401 from upstream")
        await store.update_key(entry.id, label="relabelled")
        await sync.poll()
        assert (entry.status, entry.label) == ("invalid", "relabelled")
        await sync.flush()
        [rec] = await store.get_keys([entry.id])
        assert rec.status == "invalid"

        # another process proves the key works: the server follows at its next poll
        assert await _cli_test(tmp_path, rt, entry.id) == "active"
        [revived] = await store.get_keys([entry.id])
        await sync.poll()
        assert entry.status == "active"
        assert rt.pool.usable_now()
        await sync.flush()  # nothing to echo back: the store already says so
        seq = await store.current_seq()

        # the server marks it bad again; the revive's row, read back before the flush (an
        # admin's label change moves it through the feed), is stale: the key stays bad
        rt.pool.set_status(entry.id, "invalid", time.time() + 300, "401 from upstream")
        await store.update_key(entry.id, label="again")
        assert await store.current_seq() > seq
        await sync.poll()
        assert (entry.status, entry.label) == ("invalid", "again")
        await sync.flush()
        [rec] = await store.get_keys([entry.id])
        assert rec.status == "invalid"

        # a revive that meets a health change this server has not flushed yet: the server's
        # own evidence wins, and its flush writes it over the revive
        rt.pool.set_status(entry.id, "exhausted", time.time() + 3600, "quota exceeded")
        assert await _cli_test(tmp_path, rt, entry.id) == "active"
        await sync.poll()
        assert entry.status == "exhausted"
        await sync.flush()
        [rec] = await store.get_keys([entry.id])
        assert rec.status == "exhausted"

        # ... and an old revive written back by a lagging writer (another instance's echo of
        # what it had applied) is no news either
        await store.save_health([(entry.id, revived.status, revived.until, revived.last_error)])
        await sync.poll()
        assert entry.status == "exhausted"
    finally:
        await store.close()
