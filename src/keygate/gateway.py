"""The running gateway: per-provider runtime (limits, key pool, counters), the pooled upstream
client, the store, and the background tasks that keep memory and store in step.

Nothing here is on the request path except attribute reads; store I/O happens at start-up, in
admin calls and in background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import hmac
import secrets
import time
from collections import deque
from typing import Any

import aiohttp

from keygate.control.base import Admission, KeyPool, Limits
from keygate.control.keypool import KeyEntry
from keygate.control.local import LocalAdmission, LocalKeyPool
from keygate.control.redis import SharedState
from keygate.dialects import Dialect, dialect_for
from keygate.observe import ProviderStats, RequestRecord, access_log, log
from keygate.probe import probe
from keygate.settings import TUNABLE, ProviderConfig, Settings, coerce_field
from keygate.store import create_store
from keygate.store.base import KeyRecord, Store
from keygate.upstream import create_session

CHANGE_POLL_S = 1.0
# Settings a reload leaves alone: they come from the environment or the command line, which a
# running process cannot re-read, or they shape what was built at start.
RESTART_ONLY = frozenset(
    {
        "host",
        "port",
        "workers",
        "data_dir",
        "config_path",
        "access_passwords",
        "admin_password",
        "admin_path",
        "disguise",
        "redis_url",
        "db_url",
        "secret_key",
        "flush_interval_ms",
        "recent_requests",
        "fleet_size",
        "log_level",
        "log_format",
        "drain_s",
        "providers",
    }
)
RECHECK_POLL_S = 5.0


class ProviderRuntime:
    """Everything the request path needs about one provider, prepared once."""

    __slots__ = ("admission", "cfg", "dialect", "pool", "stats", "timeout")

    def __init__(
        self, cfg: ProviderConfig, fleet_size: int = 1, shared: SharedState | None = None
    ) -> None:
        self.cfg = cfg
        self.dialect: Dialect = dialect_for(cfg.key_style)  # resolved once, again on reload
        # The form is chosen once: shared (Redis) when configured, its local fallback underneath.
        if shared is None:
            self.admission: Admission = LocalAdmission(self.limits(fleet_size))
            self.pool: KeyPool = LocalKeyPool(cfg)
        else:
            self.admission = shared.admission(self.limits(fleet_size), cfg)
            self.pool = shared.pool(cfg)
        self.stats = ProviderStats()
        self.timeout = self._timeout()

    def limits(self, fleet_size: int = 1) -> Limits:
        cfg = self.cfg
        share = max(1, fleet_size)
        return Limits(
            rps=cfg.rps / share,
            burst=max(1, cfg.burst // share) if cfg.burst else 0,
            max_conn=max(1, cfg.max_conn // share) if cfg.max_conn else 0,
            queue=cfg.queue,
            queue_timeout_s=cfg.queue_timeout_s,
        )

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=self.cfg.timeout_connect_s, sock_read=None
        )

    def reconfigure(self, fleet_size: int = 1) -> None:
        self.admission.configure(self.limits(fleet_size))
        self.timeout = self._timeout()
        self.dialect = dialect_for(self.cfg.key_style)


def hash_token(token: str, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), bytes.fromhex(salt), 100_000).hex()
    return f"pbkdf2${salt}${digest}"


def verify_token(token: str, stored: str) -> bool:
    try:
        _, salt, _ = stored.split("$")
    except ValueError:
        return False
    return hmac.compare_digest(hash_token(token, salt), stored)


def _store_health_wins(mine: str, stored: str, until: float) -> bool:
    """Whether a status read back from the store should replace the one in memory.

    Memory sees this instance's traffic first, and the store learns of it only at the next
    flush, so a read-back can be stale. Admin decisions (disable/enable) always apply; another
    instance's condemnation of a key we think active applies; a recovery is left to our own
    clock and re-checks.
    """
    if mine == stored:
        return False
    if "disabled" in (mine, stored):
        return True
    return mine == "active" and (stored == "invalid" or until > time.time())


class Gateway:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.default_provider = settings.default_provider
        self.passwords = [p.encode() for p in settings.access_passwords]
        self.shared = (
            SharedState(settings.redis_url, settings.fleet_size) if settings.redis_url else None
        )
        self.providers: dict[str, ProviderRuntime] = {
            name: ProviderRuntime(cfg, settings.fleet_size, self.shared)
            for name, cfg in settings.providers.items()
        }
        self._poll_lock = asyncio.Lock()
        self.store: Store = store or create_store(settings.db_location, settings.secret_key)
        self.session: aiohttp.ClientSession | None = None
        self.recent: deque[RequestRecord] = deque(maxlen=settings.recent_requests)
        self.started_at = time.time()
        self.admin_token_hash = ""
        self.new_admin_token = ""  # shown once in the banner, then forgotten
        self._seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._verified: dict[bytes, float] = {}

    # --- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        await self._apply_overrides(await self.store.get_provider_overrides())
        for name, rt in self.providers.items():
            if rt.cfg.keys:
                for result in await self.store.add_keys(name, rt.cfg.keys, source="env"):
                    if result.status == "invalid":
                        log.warning(
                            "ignored a %s key from the environment/config: %s (%s)",
                            name,
                            result.input,
                            result.message,
                        )
        self._seq = await self.store.current_seq()
        for rec in await self.store.load_keys():
            self._load_key(rec)
        # The key objects live as long as the process: keep the collector from walking them.
        gc.collect()
        gc.freeze()
        await self._init_admin()
        if self.shared is not None:
            await self.shared.start(self.poll_changes)
        self.session = create_session()
        self._spawn(self._poll_changes(), self._recheck_loop())
        self._spawn(self._flush_loop())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.flush()
        access_log.flush()
        if self.session is not None:
            await self.session.close()
        if self.shared is not None:
            await self.shared.close()
        await self.store.close()

    def _spawn(self, *coros: Any) -> None:
        for coro in coros:
            self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def _init_admin(self) -> None:
        if self.settings.admin_password:
            return
        stored = await self.store.get_meta("admin_token_hash")
        if stored:
            self.admin_token_hash = stored
            return
        token = "kg-admin-" + secrets.token_urlsafe(24)
        self.admin_token_hash = hash_token(token)
        await self.store.set_meta("admin_token_hash", self.admin_token_hash)
        self.new_admin_token = token

    def admin_ok(self, candidate: bytes | None) -> bool:
        """Constant-time; remembered briefly so the admin page's polling doesn't pay PBKDF2."""
        if not candidate:
            return False
        if self.settings.admin_password:
            return hmac.compare_digest(candidate, self.settings.admin_password.encode())
        now = time.monotonic()
        seen = self._verified.get(candidate)
        if seen is not None and now - seen < 60:
            return True
        if verify_token(candidate.decode("latin-1"), self.admin_token_hash):
            if len(self._verified) > 64:
                self._verified.clear()
            self._verified[candidate] = now
            return True
        return False

    # --- keys --------------------------------------------------------------------------------
    def _load_key(self, rec: KeyRecord, from_feed: bool = False) -> KeyEntry | None:
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
        limits = (entry.rpm, entry.max_conn) if entry is not None else None
        if entry is None:
            entry = KeyEntry(
                rec.id, rec.provider, rec.secret, source=rec.source, created_at=rec.created_at
            )
            unflushed = (0, 0, 0, 0, 0, 0)
        else:
            # The store holds what every instance flushed; add what this one counted since.
            unflushed = tuple(a - b for a, b in zip(entry.counters(), entry.flushed, strict=True))
        (
            entry.use_count,
            entry.ok,
            entry.err_4xx,
            entry.err_5xx,
            entry.tokens_in,
            entry.tokens_out,
        ) = (a + b for a, b in zip(stored, unflushed, strict=True))
        entry.flushed = stored
        entry.last_used = max(entry.last_used, rec.last_used)
        entry.label = rec.label
        entry.rpm = rec.rpm
        entry.max_conn = rec.max_conn
        entry.last_error = rec.last_error
        known = rec.id in rt.pool.entries
        if known and limits != (rec.rpm, rec.max_conn):
            # per-key limits changed: the pool (and the shared state, if any) hears of it
            rt.pool.add(entry)
        if known and from_feed and not _store_health_wins(entry.status, status, rec.until):
            return entry
        if entry.status != status or entry.until != rec.until or not known:
            entry.status = status
            entry.until = rec.until
            rt.pool.add(entry)
        return entry

    def find_key(self, key_id: int) -> KeyEntry | None:
        for rt in self.providers.values():
            entry = rt.pool.entries.get(key_id)
            if entry is not None:
                return entry
        return None

    def forget_key(self, key_id: int, announce: bool = True) -> None:
        if self.shared is not None and announce:
            self.shared.announce("keys")
        for rt in self.providers.values():
            if rt.pool.remove(key_id) is not None:
                return

    def adopt_key(self, rec: KeyRecord) -> KeyEntry | None:
        """A key written to the store by this process: usable by the very next request."""
        if self.shared is not None:
            self.shared.announce("keys")
        return self._load_key(rec)

    @property
    def _private_ok(self) -> bool:
        """Whether admin-set upstreams may be link-local or metadata addresses."""
        return self.settings.allow_private_upstreams

    def state_info(self) -> dict[str, Any]:
        """Which form of the traffic-control state is live (for /healthz and the admin page)."""
        return self.shared.info() if self.shared is not None else {"state": "local"}

    # --- provider settings -------------------------------------------------------------------
    async def _apply_overrides(self, overrides: dict[str, dict[str, Any]]) -> None:
        for name, fields in overrides.items():
            rt = self.providers.get(name)
            if rt is None:
                continue
            for key, value in fields.items():
                if key in TUNABLE:
                    with contextlib.suppress(ValueError):
                        setattr(rt.cfg, key, coerce_field(key, value, self._private_ok))
            rt.reconfigure(self.settings.fleet_size)

    async def update_provider(self, name: str, fields: dict[str, Any]) -> ProviderConfig:
        """Validate, persist, apply at once. Raises ValueError naming the field."""
        rt = self.providers[name]
        clean: dict[str, Any] = {}
        for key, value in fields.items():
            try:
                clean[key] = coerce_field(key, value, self._private_ok)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        await self.store.set_provider_override(name, clean)
        for key, value in clean.items():
            setattr(rt.cfg, key, value)
        rt.reconfigure(self.settings.fleet_size)
        if self.shared is not None:
            self.shared.announce("provider")
        return rt.cfg

    # --- reload ------------------------------------------------------------------------------
    async def reload(self, new: Settings) -> list[str]:
        """Apply re-read settings to the running gateway, the way a restart would set it up;
        one line per changed field.

        Provider limits, timeouts, bases and styles change in place (requests in flight keep
        the slots they hold; the next ones see the new limits). A provider new in the file
        starts at once; a custom one gone from it stops taking requests (its keys stay in the
        store). Keys new in the file are imported; keys no longer listed stay in the store, as
        after a restart: deleting is left to the admin API/CLI. Settings changed at run time
        from the admin API win over the file, as they do at start. Listen address, store,
        Redis and other environment settings need a restart.
        """
        changes: list[str] = []
        fleet = self.settings.fleet_size
        overrides = await self.store.get_provider_overrides()
        for name, ncfg in new.providers.items():
            for key, value in overrides.get(name, {}).items():
                if key in TUNABLE:
                    with contextlib.suppress(ValueError):
                        setattr(ncfg, key, coerce_field(key, value))
            rt = self.providers.get(name)
            if rt is None:
                rt = ProviderRuntime(ncfg, fleet, self.shared)
                self.providers[name] = rt
                changes.append(f"providers.{name}: added ({ncfg.base_url})")
            else:
                cfg, changed = rt.cfg, False
                for key in (*TUNABLE, "key_style"):
                    before, after = getattr(cfg, key), getattr(ncfg, key)
                    if before != after:
                        setattr(cfg, key, after)
                        changes.append(f"providers.{name}.{key}: {before!r} -> {after!r}")
                        changed = True
                if changed:
                    rt.reconfigure(fleet)
            changes += await self._reload_keys(rt, ncfg.keys)
        for name in [n for n in self.providers if n not in new.providers]:
            del self.providers[name]
            changes.append(f"providers.{name}: removed (its keys stay in the store)")
        for f in dataclasses.fields(new):
            if f.name in RESTART_ONLY:
                continue
            before, after = getattr(self.settings, f.name), getattr(new, f.name)
            if before != after:
                setattr(self.settings, f.name, after)
                changes.append(f"{f.name}: {before!r} -> {after!r}")
        self.default_provider = self.settings.default_provider
        if self.shared is not None and changes:
            self.shared.announce("provider")
        return changes

    async def _reload_keys(self, rt: ProviderRuntime, listed: list[str]) -> list[str]:
        cfg = rt.cfg
        added = [k for k in listed if k not in cfg.keys]
        dropped = [k for k in cfg.keys if k not in listed]
        cfg.keys = list(listed)
        lines = []
        if added:
            results = await self.store.add_keys(cfg.name, added, source="env")
            ids = [r.id for r in results if r.status == "added" and r.id is not None]
            for rec in await self.store.get_keys(ids):
                self.adopt_key(rec)
            for r in results:
                if r.status != "added":
                    lines.append(f"providers.{cfg.name}.keys: {r.input} not added ({r.status})")
            if ids:
                lines.append(f"providers.{cfg.name}.keys: {len(ids)} key(s) added")
        if dropped:
            lines.append(
                f"providers.{cfg.name}.keys: {len(dropped)} key(s) no longer listed; they stay "
                "in the store (delete them with `keygate keys rm` or the admin API)"
            )
        return lines

    # --- background ---------------------------------------------------------------------------
    async def _poll_changes(self) -> None:
        """Pick up writes made by the CLI or another instance (admin writes here apply at once)."""
        while True:
            await asyncio.sleep(CHANGE_POLL_S)
            await self.poll_changes()

    async def poll_changes(self) -> None:
        """One pass of the change poll; also run at once when another instance announces one."""
        async with self._poll_lock:
            try:
                changes = await self.store.changes_since(self._seq)
                self._seq = changes.seq
                if changes.full:  # the feed no longer reaches back: drop what the store lacks
                    present = set(changes.key_ids)
                    for rt in self.providers.values():
                        for key_id in [k for k in rt.pool.entries if k not in present]:
                            rt.pool.remove(key_id)
                for key_id in changes.deleted_ids:
                    self.forget_key(key_id, announce=False)
                ids = changes.key_ids
                for start in range(
                    0, len(ids), 2000
                ):  # big imports: let requests run between chunks
                    for rec in await self.store.get_keys(ids[start : start + 2000]):
                        self._load_key(rec, from_feed=True)
                    await asyncio.sleep(0)
                if changes.providers_changed:
                    await self._apply_overrides(await self.store.get_provider_overrides())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store change poll failed: %s", exc)

    async def _flush_loop(self) -> None:
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
        """Write counter deltas (additive) and health changes in one batch each."""
        key_deltas: list[tuple[int, int, int, int, int, int, int, float]] = []
        health: list[tuple[int, str, float, str]] = []
        marks: list[tuple[Any, tuple[int, ...]]] = []
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
                now_c, old = entry.counters(), entry.flushed
                if now_c != old:  # plain arithmetic: this runs for every key used in the interval
                    u, ok, e4, e5, ti, to = now_c
                    fu, fok, fe4, fe5, fti, fto = old
                    key_deltas.append(
                        (
                            key_id,
                            u - fu,
                            ok - fok,
                            e4 - fe4,
                            e5 - fe5,
                            ti - fti,
                            to - fto,
                            entry.last_used,
                        )
                    )
                    marks.append((entry, now_c))
            for key_id in changed:
                entry = pool.entries.get(key_id)
                if entry is not None and entry.status != "disabled":
                    health.append((key_id, entry.status, entry.until, entry.last_error))
            now_p = rt.stats.counters()
            if now_p != rt.stats.flushed:
                provider_deltas[name] = tuple(
                    a - b for a, b in zip(now_p, rt.stats.flushed, strict=True)
                )  # type: ignore[assignment]
                marks.append((rt.stats, now_p))
        try:
            if health:
                await self.store.save_health(health)
            if (key_deltas or provider_deltas) and self.settings.flush_interval_ms > 0:
                await self.store.add_counters(key_deltas, provider_deltas)
        except BaseException:
            # nothing was marked flushed: put the dirty sets back so the next flush retries
            for pool, touched, changed in taken:
                pool.touched |= touched
                pool.changed |= changed
            raise
        for obj, value in marks:
            obj.flushed = value

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_POLL_S)
            for rt in self.providers.values():
                for entry in rt.pool.due_for_recheck()[:20]:
                    status, _, error = await self.probe_key(entry)
                    if 200 <= status < 300:
                        rt.pool.set_status(entry.id, "active", error="")
                        log.info(
                            "key %s#%d passed its re-check: active again", entry.masked, entry.id
                        )
                    else:
                        entry.until = time.time() + rt.cfg.recheck_interval_s
                        entry.last_error = error or entry.last_error

    async def probe_key(self, entry: KeyEntry) -> tuple[int, float, str]:
        rt = self.providers[entry.provider]
        assert self.session is not None
        return await probe(self.session, rt.cfg, entry.secret)
