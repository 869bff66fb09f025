"""The running gateway: per-provider runtime (limits, key pool, counters), the pooled upstream
client, the store, and their life cycle (start, stop, the background tasks).

Nothing here is on the request path except attribute reads; store I/O happens at start-up, in
admin calls and in background tasks (sync.py keeps memory and store in step, recheck.py tries
set-aside keys again, overrides.py checks and applies run-time provider settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import aiohttp

from keygate.clients.fleet import ClientLimits
from keygate.clients.registry import ClientRegistry
from keygate.config.overrides import apply_fields, clean_fields
from keygate.config.routing import (
    ModelTable,
    RouteError,
    build_table,
    check_spec,
    merged_specs,
    split_target,
)
from keygate.config.settings import ProviderConfig, Settings, key_sources
from keygate.control.keypool import KeyEntry
from keygate.control.pins import Pins
from keygate.control.redis import SharedState
from keygate.observe.access import access_log
from keygate.observe.logs import log
from keygate.observe.stats import RequestRecord
from keygate.runtime.cache import ResponseCache
from keygate.runtime.egress import Egress, EgressSessions, effective_proxies, needs_egress
from keygate.runtime.keyops import apply_key_options
from keygate.runtime.modellist import ModelLists
from keygate.runtime.probe import probe
from keygate.runtime.provider import ProviderRuntime
from keygate.runtime.recheck import recheck_loop
from keygate.runtime.sync import StoreSync
from keygate.runtime.throttle import FailureThrottle
from keygate.runtime.upstream import create_session
from keygate.store import create_store
from keygate.store.base import KeyRecord, Store

GC_YOUNG_THRESHOLD = 20_000


class Gateway:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.default_provider = settings.default_provider
        self.passwords = [p.encode() for p in settings.access_passwords]
        self.throttle = FailureThrottle.from_settings(settings)  # wrong passwords, proxy and admin
        self.shared = (
            SharedState(settings.redis_url, settings.fleet_size) if settings.redis_url else None
        )
        self.pins = Pins(self.shared)  # conversation → key (SPEC §15 affinity)
        self.cache = ResponseCache()  # exact answers of providers with `cache:` (SPEC §19)
        self.providers: dict[str, ProviderRuntime] = {
            name: ProviderRuntime(cfg, settings.fleet_size, self.shared)
            for name, cfg in settings.providers.items()
        }
        self.store: Store = store or create_store(settings.db_location, settings.secret_key)
        # the unified endpoint's table: the config's `models:`, the admin's over it (at start)
        self.stored_models: dict[str, Any] = {}
        self.models = ModelTable(build_table(settings.models, self.providers), self.providers)
        self.model_lists = ModelLists(self)
        self.clients = ClientRegistry()  # client keys by hash (SPEC §13), kept by self.sync
        self.client_limits = ClientLimits(self.shared)  # their limits, fleet-wide on Redis
        self.sync = StoreSync(
            self.store, self.providers, settings, on_models=self.load_models, clients=self.clients
        )
        self.session: aiohttp.ClientSession | None = None
        self.egress_sessions = EgressSessions()  # one pooled session per egress proxy
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, set by `start`
        self.recent: deque[RequestRecord] = deque(maxlen=settings.recent_requests)
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.store.open()
        self.sync.apply_overrides(await self.store.get_provider_overrides())
        await self.load_models()
        for name, rt in self.providers.items():
            for source, keys in key_sources(rt.cfg, rt.cfg.keys):
                results = await self.store.add_keys(name, keys, source=source)
                for result in results:
                    if result.status == "invalid":
                        log.warning(
                            "ignored a %s key from the environment/config: %s (%s)",
                            name,
                            result.input,
                            result.message,
                        )
                if rt.cfg.key_options:  # `secret|tier=1|weight=3`
                    await apply_key_options(self.store, rt.cfg.key_options, keys, results)
        await self.sync.load_all()
        # The key objects live as long as the process: keep the collector from walking them.
        gc.collect()
        gc.freeze()
        # A request's objects are freed by reference counting as it ends; at the default
        # threshold (700) a young-generation pass ran every few requests for nothing. Measured
        # on the prefix path at c=50: about 3% less CPU per request, memory unchanged.
        gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)
        if self.shared is not None:
            await self.shared.start(self.sync.poll)
        self.session = create_session()
        self.start_egress()
        self._spawn(self.sync.poll_loop(), recheck_loop(self.providers, self.probe_key))
        self._spawn(self.sync.flush_loop())

    async def stop(self) -> None:
        self.model_lists.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.sync.flush()
        access_log.flush()
        if self.session is not None:
            await self.session.close()
        await self.egress_sessions.close()
        if self.shared is not None:
            await self.shared.close()
        await self.store.close()

    def _spawn(self, *coros: Any) -> None:
        for coro in coros:
            self._tasks.append(asyncio.get_running_loop().create_task(coro))

    # --- keys --------------------------------------------------------------------------------
    def find_key(self, key_id: int) -> KeyEntry | None:
        for rt in self.providers.values():
            entry = rt.pool.entries.get(key_id)
            if entry is not None:
                return entry
        return None

    def forget_key(self, key_id: int) -> None:
        """A key deleted by this process: gone from the pool now, and the others hear of it."""
        if self.shared is not None:
            self.shared.announce("keys")
        self.sync.remove(key_id)

    def adopt_key(self, rec: KeyRecord) -> KeyEntry | None:
        """A key written to the store by this process: usable by the very next request."""
        if self.shared is not None:
            self.shared.announce("keys")
        return self.sync.load(rec)

    # --- client keys ---------------------------------------------------------------------------
    async def clients_changed(self) -> None:
        """A client written or deleted by this process: applied here now (the next request
        sees it), and the other instances hear of it at once (or at their next poll)."""
        if self.shared is not None:
            self.shared.announce("clients")
        await self.sync.reload_clients()

    def state_info(self) -> dict[str, Any]:
        """Which form of the traffic-control state is live (for /healthz and the admin page)."""
        return self.shared.info() if self.shared is not None else {"state": "local"}

    # --- provider settings -------------------------------------------------------------------
    async def update_provider(self, name: str, fields: dict[str, Any]) -> ProviderConfig:
        """Validate, persist, apply at once. Raises ValueError naming the field."""
        rt = self.providers[name]
        private_ok = self.settings.allow_private_upstreams
        clean = clean_fields(fields, private_ok)
        await self.store.set_provider_override(name, clean)
        apply_fields(rt.cfg, clean, private_ok)
        rt.reconfigure(self.settings.fleet_size)
        self.model_lists.invalidate()
        if self.shared is not None:
            self.shared.announce("provider")
        return rt.cfg

    # --- the model table -----------------------------------------------------------------------
    def model_specs(self) -> dict[str, Any]:
        """The table as written: the config's entries with the admin's over them."""
        return merged_specs(self.settings.models, self.stored_models)

    def _use_models(self, stored: dict[str, Any]) -> None:
        """Adopt `stored` over the config; raises RouteError (naming the field) if invalid."""
        table = build_table(merged_specs(self.settings.models, stored), self.providers)
        self.stored_models = stored
        self.models = ModelTable(table, self.providers)
        self.model_lists.invalidate()

    async def load_models(self) -> None:
        """The store's entries applied (at start, on the change feed)."""
        self.adopt_models(await self.store.get_model_routes())

    def adopt_models(self, stored: dict[str, Any]) -> None:
        """Apply `stored` over the config (also after a reload). An entry the current
        providers cannot serve is skipped with a warning, so an old store never stops a start."""
        try:
            self._use_models(stored)
            return
        except RouteError as exc:
            log.warning("stored model table not applied whole: %s", exc)
        good: dict[str, Any] = {}
        for name, spec in stored.items():
            try:
                build_table(
                    merged_specs(self.settings.models, {**good, name: spec}), self.providers
                )
            except RouteError:
                continue
            good[name] = spec
        self._use_models(good)

    async def set_model(self, name: str, spec: Any) -> None:
        """Validate (RouteError naming the field), persist, apply at once, tell the others."""
        spec = check_spec(f"models.{name}", spec)
        self._check_name(name)
        stored = {**self.stored_models, name: spec}
        build_table(merged_specs(self.settings.models, stored), self.providers)
        await self.store.set_model_route(name, spec)
        self._use_models(stored)
        if self.shared is not None:
            self.shared.announce("models")

    async def delete_model(self, name: str) -> bool:
        """Remove a run-time entry; one from the config file is hidden instead. False: none."""
        if name not in self.model_specs():
            return False
        stored = {k: v for k, v in self.stored_models.items() if k != name}
        if name in self.settings.models:
            stored[name] = None
        build_table(merged_specs(self.settings.models, stored), self.providers)
        if name in self.settings.models:
            await self.store.set_model_route(name, None)
        else:
            await self.store.delete_model_route(name)
        self._use_models(stored)
        if self.shared is not None:
            self.shared.announce("models")
        return True

    def _check_name(self, name: str) -> None:
        field = f"models.{name}"
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise RouteError("name", "must be 1 to 200 characters")
        if split_target(name, self.providers) is not None:
            raise RouteError(field, "a name of the form provider/model is already that model")

    async def probe_key(self, entry: KeyEntry) -> tuple[int, float, str]:
        rt = self.providers[entry.provider]
        assert self.session is not None
        return await probe(self.key_session(rt, entry), rt.cfg, entry.secret)

    # --- egress proxies (SPEC §16) ---------------------------------------------------------
    def start_egress(self, names: Iterable[str] | None = None) -> None:
        """An `Egress` for each provider (of `names`, default all) that goes through proxies;
        the rest stay direct. A rebuilt one starts with fresh health."""
        default = self.settings.proxy
        for name in self.providers if names is None else names:
            rt = self.providers[name]
            cfg = rt.cfg
            urls = effective_proxies(cfg, default)
            needed = needs_egress(cfg, default)
            rt.egress = Egress(cfg, urls, self.egress_sessions) if needed else None

    def key_session(
        self, rt: ProviderRuntime, entry: KeyEntry | KeyRecord
    ) -> aiohttp.ClientSession:
        """The session a key's model lists, tests and re-checks go through: its proxy's."""
        assert self.session is not None
        if rt.egress is None:
            return self.session
        via = rt.egress.pick(entry.id, entry.secret, [])
        return self.session if via is None else rt.egress.session(via)
