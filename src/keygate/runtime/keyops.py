"""The operations on keys, one each, for the admin API and the CLI alike: add, import, list,
delete, test. Every write goes to the store first (so a crash loses nothing); with a running
gateway (`live`) it is then applied to its pools at once, without one (the CLI) a running
server picks it up from the store's change feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from keygate.config.settings import ProviderConfig
from keygate.control.keypool import KeyEntry
from keygate.masking import mask
from keygate.runtime.probe import KeyTest, run_key_test
from keygate.runtime.views import effective_status
from keygate.store.base import DuplicateKey, ImportResult, KeyRecord, Store

if TYPE_CHECKING:
    from keygate.runtime.gateway import Gateway

ALL_MATCHES = 1_000_000  # keys of one provider only the store holds, filtered by status


class Duplicate(DuplicateKey):
    """The provider already holds this secret; `existing` is the stored twin's id if found."""

    def __init__(self, provider: str, masked: str, existing: int | None) -> None:
        super().__init__(f"{provider} already has this key {masked}")
        self.provider = provider
        self.masked = masked
        self.existing = existing


@dataclass(slots=True)
class Imported:
    results: list[ImportResult]
    counts: dict[str, int]  # added, duplicate, invalid (and any other status seen)


async def apply_key_options(
    store: Store,
    options: dict[str, dict[str, int]],
    keys: list[str],
    results: list[ImportResult],
) -> list[KeyRecord]:
    """The tier and weight the config file or the environment gives its keys
    (`secret|tier=1|weight=3`), written where the store holds other values: the declared
    ones win at every start and reload. `results` are `store.add_keys(keys)`'s; the keys
    changed come back."""
    wanted = {
        r.id: options[k]
        for k, r in zip(keys, results, strict=True)
        if r.id is not None and k in options
    }
    changed = []
    for rec in await store.get_keys(list(wanted)) if wanted else ():
        fields = {name: v for name, v in wanted[rec.id].items() if getattr(rec, name) != v}
        if fields:
            new = await store.update_key(rec.id, **fields)
            if new is not None:
                changed.append(new)
    return changed


class KeyOps:
    def __init__(self, store: Store, live: Gateway | None = None) -> None:
        self.store = store
        self.live = live

    def _adopt(self, rec: KeyRecord) -> KeyEntry | None:
        return self.live.adopt_key(rec) if self.live is not None else None

    def entry(self, provider: str, key_id: int) -> KeyEntry | None:
        if self.live is None:
            return None
        rt = self.live.providers.get(provider)
        return rt.pool.entries.get(key_id) if rt is not None else None

    def freshest(self, rec: KeyRecord) -> KeyEntry | KeyRecord:
        """Memory is fresher than the store for health and counters; the record stands in for
        keys the running gateway does not hold (e.g. of a provider it does not run)."""
        return self.entry(rec.provider, rec.id) or rec

    async def record(self, key_id: int) -> KeyRecord | None:
        recs = await self.store.get_keys([key_id])
        return recs[0] if recs else None

    # --- writes ------------------------------------------------------------------------------
    async def add(
        self, provider: str, secret: str, label: str, source: str
    ) -> KeyEntry | KeyRecord:
        """Raises Duplicate or InvalidKey."""
        try:
            rec = await self.store.add_key(provider, secret, label=label, source=source)
        except DuplicateKey:
            secret = secret.strip()
            raise Duplicate(provider, mask(secret), await self._twin(provider, secret)) from None
        return self._adopt(rec) or rec

    async def _twin(self, provider: str, secret: str) -> int | None:
        """The id of the stored twin: the store matches a whole pasted secret by fingerprint."""
        recs, _ = await self.store.list_keys(provider, None, secret, 50, 0)
        masked = mask(secret)
        for rec in recs:
            if rec.masked == masked:
                return rec.id
        return None

    async def import_(self, provider: str, tokens: list[str], source: str) -> Imported:
        results = await self.store.add_keys(provider, tokens, source=source) if tokens else []
        added = [r.id for r in results if r.status == "added" and r.id is not None]
        if added and self.live is not None:
            for rec in await self.store.get_keys(added):
                self.live.adopt_key(rec)
        counts = {"added": 0, "duplicate": 0, "invalid": 0}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return Imported(results, counts)

    async def delete(self, key_id: int) -> bool:
        deleted = await self.store.delete_key(key_id)
        if self.live is not None:
            self.live.forget_key(key_id)  # from this moment, whatever the store said
        return deleted

    # --- reads -------------------------------------------------------------------------------
    async def list(
        self,
        provider: str | None,
        status: str | None,
        search: str | None,
        limit: int,
        offset: int,
        now: float,
    ) -> tuple[list[KeyEntry | KeyRecord], int]:
        """Newest first. Health changes from traffic reach the store only at the next flush (or
        never with KV_FLUSH_INTERVAL_MS=0), so with a running gateway a status filter is
        answered from its memory."""
        if self.live is None or status is None:
            recs, total = await self.store.list_keys(provider, status, search, limit, offset)
            return [self.freshest(r) for r in recs], total
        found = await self._by_status(self.live, provider, status, search, now)
        found.sort(key=lambda item: item.id, reverse=True)
        return found[offset : offset + limit], len(found)

    async def _by_status(
        self, gw: Gateway, provider: str | None, status: str, search: str | None, now: float
    ) -> list[KeyEntry | KeyRecord]:
        needle = search.lower() if search else None
        out: list[KeyEntry | KeyRecord] = []
        for name in [provider] if provider else list(gw.providers):
            rt = gw.providers.get(name)
            if rt is None:
                continue
            for entry in rt.pool.entries.values():
                if effective_status(entry.status, entry.until, now) != status:
                    continue
                if needle and not (
                    needle in entry.label.lower()
                    or needle in entry.masked.lower()
                    or search == entry.secret
                ):
                    continue
                out.append(entry)
        # Keys of providers this gateway does not run exist only in the store.
        for name in await self.store.key_counts():
            if name in gw.providers or (provider and name != provider):
                continue
            recs, _ = await self.store.list_keys(name, status, search, ALL_MATCHES, 0)
            out.extend(recs)
        return out

    # --- tests -------------------------------------------------------------------------------
    async def test(
        self, session: aiohttp.ClientSession, cfg: ProviderConfig, key: KeyEntry | KeyRecord
    ) -> KeyTest:
        """Probe the upstream with the key and record what it proved: in the store, and at
        once in the running gateway's pool."""
        result = await run_key_test(session, self.store, cfg, key.id, key.secret, key.status)
        if result.health is not None and self.live is not None:
            rt = self.live.providers.get(key.provider)
            if rt is not None and key.id in rt.pool.entries:
                rt.pool.set_status(key.id, *result.health)
        return result
