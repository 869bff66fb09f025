"""Counters flushed while the store is read back: a flush's deltas are committed before they are
marked flushed, so whatever merges the store's counters into the pool in that moment must not
see them as both stored and unflushed (the kill -9 test found a key stored above what the
upstream received)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from harness import eventually_async
from keygate.config.settings import load_settings
from keygate.runtime.sync import StoreSync
from keygate.store import create_store


async def _setup(tmp_path: Path) -> tuple[Any, StoreSync, Any]:
    from keygate.runtime.provider import ProviderRuntime

    settings = load_settings({"KV_FLUSH_INTERVAL_MS": "500", "KEYGATE_DATA_DIR": str(tmp_path)})
    store = create_store(f"sqlite:///{tmp_path / 'keygate.db'}", "")
    await store.open()
    await store.add_keys("cerebras", ["csk-race-aaaaaaaaaaaa0001"], source="env")
    rt = ProviderRuntime(settings.providers["cerebras"])
    sync = StoreSync(store, {"cerebras": rt}, settings)
    await sync.load_all()
    return store, sync, rt


def _use(rt: Any, n: int) -> Any:
    [entry] = rt.pool.entries.values()
    for _ in range(n):
        entry.use_count += 1
        entry.ok += 1
    rt.pool.touched.add(entry.id)
    return entry


async def _paused_write(store: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold every flush between its counter commit and the rest of its batch."""
    committed, go_on = asyncio.Event(), asyncio.Event()
    real = store.add_flush

    async def add_flush(*args: Any, **kw: Any) -> None:
        await real(*args, **kw)
        committed.set()
        await go_on.wait()

    store.add_flush = add_flush
    return committed, go_on


class _CountedLock(asyncio.Lock):
    """The feed's lock, counting who asked for it (so a test sees the change poll waiting)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def acquire(self) -> Literal[True]:
        self.asked += 1
        return await super().acquire()


async def _stored_uses(store: Any) -> int:
    keys, _ = await store.list_keys("cerebras", None, None, 10, 0)
    return keys[0].use_count


async def test_a_poll_during_a_flush_counts_nothing_twice(tmp_path: Path) -> None:
    store, sync, rt = await _setup(tmp_path)
    try:
        entry = _use(rt, 5)
        committed, go_on = await _paused_write(store)
        sync._lock = lock = _CountedLock()
        flush = asyncio.create_task(sync.flush())
        await asyncio.wait_for(committed.wait(), 5)
        # the feed reports the key (another instance's write, an admin change) right now
        await store.update_key(entry.id, label="changed")
        poll = asyncio.create_task(sync.poll())
        # the poll has gone as far as it can while the flush is held: waiting for the feed's
        # lock (or, were it not to take it, done reading the store)
        await eventually_async(
            lambda: lock.asked == 2 or poll.done(), 5, "the poll waits for the flush"
        )
        go_on.set()
        await asyncio.wait_for(asyncio.gather(flush, poll), 5)
        _use(rt, 2)
        await sync.flush()
        assert entry.use_count == 7
        assert await _stored_uses(store) == 7
    finally:
        await store.close()


async def test_an_admin_write_during_a_flush_counts_nothing_twice(tmp_path: Path) -> None:
    store, sync, rt = await _setup(tmp_path)
    try:
        entry = _use(rt, 5)
        committed, go_on = await _paused_write(store)
        flush = asyncio.create_task(sync.flush())
        await asyncio.wait_for(committed.wait(), 5)
        rec = await store.update_key(entry.id, label="mid-flush")
        assert sync.load(rec) is entry  # what PATCH /api/keys does with its own write
        assert entry.label == "mid-flush"
        go_on.set()
        await asyncio.wait_for(flush, 5)
        _use(rt, 3)
        await sync.flush()
        assert entry.use_count == 8
        assert await _stored_uses(store) == 8
    finally:
        await store.close()
