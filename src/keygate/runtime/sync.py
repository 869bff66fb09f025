"""Memory and store in step: the key pools follow the store's change feed (writes by the CLI,
another instance, or this one), and what traffic counted goes back as additive deltas.

Store I/O happens here in background tasks only; the request path reads and counts on the
in-memory entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from keygate.clients.periods import PERIODS
from keygate.clients.registry import ClientRegistry
from keygate.config.overrides import apply_stored
from keygate.config.settings import Settings
from keygate.control.keypool import KeyEntry
from keygate.observe.logs import log
from keygate.runtime.counters import plus, unflushed
from keygate.runtime.probe import proven_at
from keygate.store.base import KeyRecord, Store

if TYPE_CHECKING:
    from keygate.runtime.provider import ProviderRuntime

CHANGE_POLL_S = 1.0
FEED_CHUNK = 2000  # big imports: let requests run between chunks
Marks = list[tuple[Any, tuple[Any, ...]]]  # (counted object, its counters as sent)
ClientsTaken = list[tuple[Any, dict[str, list[int]]]]  # (client, the usage handed to a flush)


def store_health_wins(mine: str, stored: str, until: float, revived: bool = False) -> bool:
    """Whether a status read back from the store should replace the one in memory.

    Memory sees this instance's traffic first, and the store learns of it only at the next
    flush, so a read-back can be stale. Admin decisions (disable/enable) always apply, and so
    does `revived`, a revive a key test proved or an admin made (news to this instance, see
    `StoreSync.load`);
    another instance's condemnation of a key we think active applies; any other recovery is
    left to our own clock and re-checks.
    """
    if mine == stored:
        return False
    if "disabled" in (mine, stored) or revived:
        return True
    return mine == "active" and (stored == "invalid" or until > time.time())


class StoreSync:
    """Owns the change-feed position and the flush; `providers` is the gateway's live table."""

    def __init__(
        self,
        store: Store,
        providers: dict[str, ProviderRuntime],
        settings: Settings,
        on_models: Callable[[], Awaitable[None]] | None = None,
        clients: ClientRegistry | None = None,
    ) -> None:
        self.store = store
        self.on_models = on_models  # the model table changed in the store
        self.providers = providers
        self.clients = clients if clients is not None else ClientRegistry()
        self.settings = settings
        self.seq = 0
        # per key, when the last test-proven revive this instance saw was proven: a row read
        # again later (a label change, another writer's echo) is no news
        self.revived: dict[int, float] = {}
        self._lock = asyncio.Lock()
        self._clients_lock = asyncio.Lock()  # one reload at a time: the last one read last
        # This process's flushes, as the store marks them (`Store.add_flush`); a batch whose
        # outcome is unknown (the store failed while it was sent) waits in `_unsure` until the
        # store can say whether it was committed.
        self._writer = f"{int(time.time()):010d}.{secrets.token_hex(6)}"
        self._batches = itertools.count(1)
        self._unsure: tuple[int, Marks, ClientsTaken] | None = None

    # --- loading -----------------------------------------------------------------------------
    async def load_all(self) -> None:
        """At start: the feed position first, so nothing written while loading is missed."""
        self.seq = await self.store.current_seq()
        for rec in await self.store.load_keys():
            self.load(rec)
        await self.reload_clients()

    async def reload_clients(self) -> None:
        """The client table as the store has it; new clients' windows start from the store's
        usage of today and this month. Client changes are rare admin writes: a full reload
        (one query, even with 10,000 clients) keeps this simple and always exact. Reloads run
        one at a time, so one that read the store before a change never lands after one that
        read it after."""
        async with self._clients_lock:
            records = await self.store.load_clients()
            fresh = [r.id for r in records if r.id not in self.clients.by_id]
            usage: dict[int, dict[str, dict[str, int]]] = {}
            if fresh:
                p = PERIODS.at(time.time())
                usage = await self.store.client_usage([p.day, p.month])
            self.clients.replace(records, usage)

    def load(self, rec: KeyRecord, from_feed: bool = False) -> KeyEntry | None:
        """Make the pool agree with a store record; an existing entry is updated in place so
        requests holding it keep counting on the same object."""
        rt = self.providers.get(rec.provider)
        if rt is None:
            return None
        status = rec.status
        if status == "cooling" and rec.until <= time.time():
            status = "active"
        stored = (rec.use_count, rec.ok, rec.err_4xx, rec.err_5xx, rec.tokens_in, rec.tokens_out)
        entry = rt.pool.entries.get(rec.id)
        limits = None
        if entry is not None:
            limits = (entry.limits(), entry.max_conn, entry.tier, entry.weight)
        total: tuple[int, ...] | None = stored
        if entry is None:
            entry = KeyEntry(
                rec.id, rec.provider, rec.secret, source=rec.source, created_at=rec.created_at
            )
        elif from_feed:
            # The store holds what every instance flushed; add what this one counted since.
            # (Only under the feed's lock, which a flush also holds: read while a flush's
            # write was committed but not yet marked, `stored` would count its deltas twice.)
            total = plus(stored, unflushed(entry))
        else:
            total = None  # this process's own admin write: its counters stay as they are
        if total is not None:
            (
                entry.use_count,
                entry.ok,
                entry.err_4xx,
                entry.err_5xx,
                entry.tokens_in,
                entry.tokens_out,
            ) = total
            entry.flushed = stored
        entry.last_used = max(entry.last_used, rec.last_used)
        entry.label = rec.label
        entry.set_limits(rec.limits())
        entry.max_conn = rec.max_conn
        entry.tier, entry.weight = rec.tier, rec.weight
        entry.last_error = rec.last_error
        known = rec.id in rt.pool.entries
        if not known and rec.day_requests + rec.day_tokens:
            rt.pool.restore_day(entry, rec.day, rec.day_requests, rec.day_tokens)
        if known and limits != (rec.limits(), rec.max_conn, rec.tier, rec.weight):
            # per-key limits, tier or weight changed: the pool (and the shared state) hears of it
            rt.pool.add(entry)
        revived = self._revive_news(rec) and rec.id not in rt.pool.changed
        if known and from_feed:
            if not store_health_wins(entry.status, status, rec.until, revived):
                return entry
            if revived:
                # A test elsewhere (the CLI, another instance) proved the key, or an admin set
                # it active there: applied as an admin's write here is, in the shared state too. Not flushed back: the store has
                # it. (Not when this instance changed the key's health since its last flush:
                # that change is newer than anything the store says.)
                rt.pool.set_status(rec.id, status, rec.until, rec.last_error)
                rt.pool.changed.discard(rec.id)
                return entry
        if entry.status != status or entry.until != rec.until or not known:
            entry.status = status
            entry.until = rec.until
            rt.pool.add(entry)
        return entry

    def _revive_news(self, rec: KeyRecord) -> bool:
        """Whether `rec` carries a revive a key test proved that this instance has not seen
        yet; seen from now on."""
        at = proven_at(rec.status, rec.until)
        if at <= self.revived.get(rec.id, 0.0):
            return False
        self.revived[rec.id] = at
        return True

    def remove(self, key_id: int) -> None:
        self.revived.pop(key_id, None)
        for rt in self.providers.values():
            if rt.pool.remove(key_id) is not None:
                return

    def apply_overrides(self, overrides: dict[str, dict[str, Any]]) -> None:
        """Run-time provider settings from the store, applied to the live providers."""
        configs = {name: rt.cfg for name, rt in self.providers.items()}
        for name in apply_stored(configs, overrides, self.settings.allow_private_upstreams):
            self.providers[name].reconfigure(self.settings.fleet_size)

    # --- the change feed ---------------------------------------------------------------------
    async def poll_loop(self) -> None:
        """Pick up writes made by the CLI or another instance (admin writes here apply at once)."""
        while True:
            await asyncio.sleep(CHANGE_POLL_S)
            await self.poll()

    async def poll(self) -> None:
        """One pass of the change poll; also run at once when another instance announces one."""
        async with self._lock:
            try:
                # The store's counters are merged below: first learn whether they hold a
                # batch whose outcome was unknown.
                await self._settle()
                changes = await self.store.changes_since(self.seq)
                self.seq = changes.seq
                if changes.full:  # the feed no longer reaches back: drop what the store lacks
                    present = set(changes.key_ids)
                    for rt in self.providers.values():
                        for key_id in [k for k in rt.pool.entries if k not in present]:
                            rt.pool.remove(key_id)
                for key_id in changes.deleted_ids:
                    self.remove(key_id)
                ids = changes.key_ids
                for start in range(0, len(ids), FEED_CHUNK):
                    for rec in await self.store.get_keys(ids[start : start + FEED_CHUNK]):
                        self.load(rec, from_feed=True)
                    await asyncio.sleep(0)
                if changes.providers_changed:
                    self.apply_overrides(await self.store.get_provider_overrides())
                if changes.models_changed and self.on_models is not None:
                    await self.on_models()
                if changes.clients_changed:
                    await self.reload_clients()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store change poll failed: %s", exc)

    # --- flushing ----------------------------------------------------------------------------
    async def flush_loop(self) -> None:
        # KV_FLUSH_INTERVAL_MS=0 keeps counters out of the store; key health is still saved.
        interval = (self.settings.flush_interval_ms or 5000) / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("counter flush failed (will retry): %s", exc)

    async def flush(self) -> None:
        """Write counter deltas (additive) and health changes in one batch each; never while
        the change poll merges the store's counters into the pool's (the feed's lock)."""
        async with self._lock:
            await self._flush()

    async def _settle(self) -> None:
        """Resolve a batch whose outcome is unknown: committed, its marks apply; not, its
        deltas stay unflushed (and the clients' usage goes back) for the next flush. Raises
        (and stays unsure) while the store cannot answer."""
        if self._unsure is None:
            return
        batch, marks, client_taken = self._unsure
        stored = await self.store.flush_stored(self._writer, batch)
        self._unsure = None
        if stored:
            for obj, value in marks:
                obj.flushed = value
        else:
            self._restore([], client_taken)

    async def _flush(self) -> None:
        await self._settle()
        key_deltas: list[tuple[int, int, int, int, int, int, int, float]] = []
        health: list[tuple[int, str, float, str]] = []
        marks: list[tuple[Any, tuple[Any, ...]]] = []
        days: list[tuple[int, float, int, int]] = []
        taken: list[tuple[Any, set[int], set[int]]] = []
        provider_deltas: dict[str, tuple[int, int, int, int, int, int]] = {}
        for name, rt in self.providers.items():
            pool = rt.pool
            touched, changed = pool.touched, pool.changed
            pool.touched, pool.changed = set(), set()
            taken.append((pool, touched, changed))
            for key_id in touched:
                entry = pool.entries.get(key_id)
                if entry is None:
                    continue
                delta = unflushed(entry)
                if any(delta):
                    key_deltas.append((key_id, *delta, entry.last_used))
                    marks.append((entry, entry.counters()))
                q = entry.quota
                day = q.unflushed() if q is not None else None
                if day is not None:
                    days.append((key_id, *day))
                    marks.append((q, (q.day, q.rd, q.td)))
            for key_id in changed:
                entry = pool.entries.get(key_id)
                if entry is not None:  # disabled too: an error rule's (SPEC §15) must last
                    health.append((key_id, entry.status, entry.until, entry.last_error))
            delta = unflushed(rt.stats)
            if any(delta):
                provider_deltas[name] = delta
                marks.append((rt.stats, rt.stats.counters()))
        counting = self.settings.flush_interval_ms > 0
        client_taken = self._take_client_usage() if counting else []

        client_rows = [
            (c.id, period, *row, c.usage.last_used)
            for c, pending in client_taken
            for period, row in pending.items()
        ]
        if not counting:  # counted in memory only (the marks still move)
            key_deltas, provider_deltas, days = [], {}, []
        batch = next(self._batches)
        sending = [False]

        async def write() -> None:
            if health:
                # Idempotent (a status set twice is set once): sent again after a failure.
                await self.store.save_health(health)
            if key_deltas or provider_deltas or days or client_rows:
                # All counters in one transaction, marked: a failure leaves none or all of
                # them stored, and `_settle` finds out which.
                sending[0] = True
                await self.store.add_flush(
                    self._writer, batch, key_deltas, provider_deltas, days, client_rows
                )

        sent = asyncio.ensure_future(write())
        try:
            # A cancel (shutdown) must not cut the batch between a commit and its marks: the
            # next flush would add the same deltas again. The batch finishes, then the cancel.
            await asyncio.shield(sent)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await sent
            if sent.done() and not sent.cancelled() and sent.exception() is None:
                for obj, value in marks:
                    obj.flushed = value
            else:
                self._failed(sending[0], batch, marks, taken, client_taken)
            raise
        except BaseException:
            self._failed(sending[0], batch, marks, taken, client_taken)
            raise
        for obj, value in marks:
            obj.flushed = value

    def _failed(
        self,
        sent: bool,
        batch: int,
        marks: Marks,
        taken: list[tuple[Any, set[int], set[int]]],
        client_taken: ClientsTaken,
    ) -> None:
        """The keys stay dirty. Counters never sent are simply unflushed still; a batch that
        was sent may or may not be stored: what it carried waits in `_unsure` until the store
        can say (`_settle`)."""
        if sent:
            self._restore(taken, [])
            self._unsure = (batch, marks, client_taken)
        else:
            self._restore(taken, client_taken)

    @staticmethod
    def _restore(taken: list[tuple[Any, set[int], set[int]]], client_taken: ClientsTaken) -> None:
        """Nothing was marked flushed: put the dirty sets back so the next flush retries."""
        for pool, touched, changed in taken:
            pool.touched |= touched
            pool.changed |= changed
        for client, pending in client_taken:
            client.usage.give_back(pending)

    def _take_client_usage(self) -> list[tuple[Any, dict[str, list[int]]]]:
        """Every client's unflushed usage (the retired ones' last counts too)."""
        retired, self.clients.retired = self.clients.retired, []
        out = []
        for client in [*self.clients.by_id.values(), *retired]:
            if client.usage.pending:
                out.append((client, client.usage.take()))
        return out
