"""The Redis form of the key pool: round-robin cursor and key health in Redis; secrets, counters
and a mirror of the health in process (the admin page reads it, and the local pool it holds runs
on it while Redis is away). One PICK per pick, one RELEASE_KEY a verdict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from keygate.config.settings import ProviderConfig
from keygate.control.base import Event, Pick
from keygate.control.keypool import POOL_GUARD_WINDOW_S, KeyEntry, default_limits
from keygate.control.local.keypool import LocalKeyPool
from keygate.control.quota import QuotaView, Ticket, view_rows
from keygate.control.redis.connection import Callback, RedisDown
from keygate.control.redis.scripts import (
    PICK,
    QUOTA_VIEW,
    RELEASE_KEY,
    REMOVE,
    SEED,
    SET,
    SYNC,
)
from keygate.control.redis.state import EVENTS, SYNC_BATCH, SharedState, chunks
from keygate.dialects.budget import Announced, within

CODES = {"active": "a", "cooling": "c", "invalid": "i", "exhausted": "x", "disabled": "d"}
NAMES = {v: k for k, v in CODES.items()}
EVENT_CODES = {
    Event.OK: "ok",
    Event.RATE_LIMITED: "rl",
    Event.INVALID: "inv",
    Event.EXHAUSTED: "exh",
    Event.COOLING: "cool",
    Event.DISABLED: "dis",
}


class RedisCharge(NamedTuple):
    """What a Redis pick charged, for the release to correct: the pick's id (its members in
    the windows), its quota day, and the local mirror's own charge."""

    lease: str
    day: float
    end: float
    mine: object  # the local mirror's own charge handle (None: none)


def decode_state(raw: bytes) -> tuple[str, float]:
    """`b"c:1712.5"` -> ("cooling", 1712.5)."""
    text = raw.decode()
    return NAMES.get(text[:1], "active"), float(text[2:]) if len(text) > 2 else 0.0


class SharedKeyPool:
    """Round-robin cursor and key health in Redis; secrets, counters and a mirror of the health
    in `local`, the pool that serves while Redis is away."""

    def __init__(self, cfg: ProviderConfig, shared: SharedState) -> None:
        self.local = LocalKeyPool(cfg, shared.clock or time.time, share=shared.fleet_size)
        self.cfg = cfg
        self.clock = self.local.clock
        self.name = cfg.name
        self._shared = shared
        shared.pools[cfg.name] = self  # the supervisor resyncs it when Redis comes back
        self._prefix = prefix = f"keygate:{{{cfg.name}}}:"
        names = (
            *("st", "ring", "inring", "cool", "hold", "lim", "strikes", "g429", "guard", "adm"),
            *("qon", "tw", "sw"),
        )
        self._keys = [prefix + n for n in names]
        self.leases: dict[int, list[str]] = {}  # key id -> per-key connection leases we hold
        self._last_429 = -math.inf  # on `clock`; while recent, successes are written (guard)
        self._removed: set[int] = set()  # deleted here: a pick that names one deletes it there
        self._dl = "0:0:0:0:0:0"
        self._views: dict[int, dict[str, Any]] = {}  # the fleet's windows (load_views)
        self._views_day = 0.0
        self.refresh()

    # --- the mirror's views (the admin, the flusher and the re-checker read these) -------------
    @property
    def entries(self) -> dict[int, KeyEntry]:
        return self.local.entries

    @property
    def touched(self) -> set[int]:
        return self.local.touched

    @touched.setter
    def touched(self, value: set[int]) -> None:
        self.local.touched = value

    @property
    def changed(self) -> set[int]:
        return self.local.changed

    @changed.setter
    def changed(self, value: set[int]) -> None:
        self.local.changed = value

    def due_for_recheck(self) -> list[KeyEntry]:
        return self.local.due_for_recheck()

    def counts(self) -> dict[str, int]:
        return self.local.counts()

    def usable_now(self) -> bool:
        """From the mirror: health events from every instance reach it by pub/sub."""
        return self.local.ready_in_now() == 0.0

    def refresh(self) -> None:
        """Provider settings changed: the fleet-wide per-key quota defaults, the day."""
        self.local.refresh()
        self._dl = ":".join(str(x) for x in default_limits(self.cfg))

    async def load_views(self, entries: Iterable[KeyEntry]) -> None:
        """Read the fleet's windows of these keys from Redis (one call) for `quota_view`;
        the admin views call it first. Without Redis the local windows answer."""
        st = self._shared
        ids = [e.id for e in entries if e.quota is not None or self.local._q_on]
        self._views = {}
        if not st.up or not ids:
            return
        start, end = self.local.day(self.clock())
        self._views_day = end
        for batch in chunks(ids, SYNC_BATCH):
            try:
                res = await st.run(QUOTA_VIEW, self._keys, [st.now(), self._prefix, start, *batch])
            except RedisDown:
                self._views = {}
                return
            for key_id, raw in zip(batch, res, strict=False):
                self._views[key_id] = orjson.loads(raw)

    def quota_view(self, entry: KeyEntry, now: float) -> QuotaView:
        """The fleet's windows when `load_views` read them, else this instance's."""
        doc = self._views.get(entry.id)
        if doc is None:
            return self.local.quota_view(entry, now)
        used = (doc["m"], doc["h"], doc["rd"], round(doc["tms"]), round(doc["ths"]), doc["td"])
        om, oh = doc["om"], doc["oh"]
        resets = (om + 60.0 if om else None, oh + 3600.0 if oh else None, self._views_day)
        ann = doc["a"] if isinstance(doc["a"], dict) else {}  # cjson: an empty table is []
        return view_rows(self.local.limits_of(entry), used, resets, ann)

    def restore_day(self, entry: KeyEntry, day: float, requests: int, tokens: int) -> None:
        self.local.restore_day(entry, day, requests, tokens)
        st = self._shared
        if st.up:
            start, end = self.local.day(self.clock())
            if abs(day - start) <= 1.0:
                st.fire(
                    SEED, self._keys, [st.now(), self._prefix, entry.id, day, requests, tokens, end]
                )

    def conn_key(self, key_id: int) -> str:
        return f"{self._prefix}c:{key_id}"

    # --- the pick ---------------------------------------------------------------------------------
    async def acquire(
        self, avoid: Iterable[int] = (), ticket: Ticket | None = None, prefer: int | None = None
    ) -> Pick:
        st = self._shared
        if not st.up:
            return self.local.take(avoid, ticket, prefer)
        cfg = self.cfg
        avoid = tuple(avoid)
        cost = ticket.tokens if ticket is not None else 0
        start, end = self.local.day(self.clock())
        skip = [str(k) for k in avoid]  # keys Redis named that this instance does not know
        for _ in range(3):
            lease = st.lease_id()
            try:
                res = await st.run(
                    PICK,
                    self._keys,
                    [
                        st.now(),
                        self._prefix,
                        "pick",
                        self._dl,
                        cfg.key_max_conn,
                        lease,
                        st.lease_s,
                        cost,
                        start,
                        end,
                        "" if prefer is None else prefer,
                        *skip,
                    ],
                    self._orphan_pick(lease),
                )
            except RedisDown:
                return self.local.take(avoid, ticket, prefer)
            raw_id, leased = res[0], res[2] == b"1"
            if not raw_id:
                wait = float(res[1])
                return Pick(None, None if wait < 0 else wait, res[3] == b"1")
            key_id = int(raw_id)
            entry = self.local.entries.get(key_id)
            if entry is None:
                if leased:
                    self._fire_release(key_id, "none", lease)
                if key_id in self._removed:  # deleted while Redis was away
                    st.fire(REMOVE, self._keys, [st.now(), self._prefix, key_id])
                else:  # added by another instance, not loaded here yet
                    st._changed()
                skip.append(raw_id.decode())
                continue
            if leased:
                self.leases.setdefault(key_id, []).append(lease)
            if entry.status != "active":  # Redis let it out of cooling (or an admin did)
                self._mirror(entry, "active", 0.0)
            now = self.clock()
            self.local.quota(entry, now)  # the fallback's windows count Redis's picks too
            self.local.count_use(entry, now, ticket)
            if ticket is not None:
                mine = ticket.charge[2] if ticket.charge is not None else None
                ticket.charge = (float(res[4]), cost, RedisCharge(lease, start, end, mine))
            return Pick(entry)
        return Pick(None, 1.0)

    def _orphan_pick(self, lease: str) -> Callback:
        def orphan(res: Any) -> None:
            if res and res[0] and res[2] == b"1":
                self._fire_release(int(res[0]), "none", lease)

        return orphan

    async def ready_in(self, exclude: Iterable[int] = ()) -> float | None:
        st = self._shared
        if not st.up:
            return self.local.ready_in_now(exclude)
        cfg = self.cfg
        try:
            res = await st.run(
                PICK,
                self._keys,
                [
                    st.now(),
                    self._prefix,
                    "ready",
                    self._dl,
                    cfg.key_max_conn,
                    "",
                    st.lease_s,
                    0,
                    *self.local.day(self.clock()),
                    "",
                    *map(str, exclude),
                ],
            )
        except RedisDown:
            return self.local.ready_in_now(exclude)
        wait = float(res[1])
        return None if wait < 0 else wait

    # --- outcomes ---------------------------------------------------------------------------------
    async def release(
        self,
        entry: KeyEntry,
        event: Event,
        until: float | None = None,
        error: str = "",
        ticket: Ticket | None = None,
        budget: list[Announced] | None = None,
    ) -> float | None:
        st = self._shared
        self.local.touched.add(entry.id)  # counters are final: flushed next time (see record)
        held = self.leases.get(entry.id)
        lease = held.pop() if held else None
        if held is not None and not held:
            del self.leases[entry.id]
        quota = self._settle(entry, ticket, budget) if (budget or ticket) else None
        if not st.up:
            return self.local.record(entry, event, until, error)
        code = EVENT_CODES.get(event, "none")
        if code in ("ok", "none"):
            # Health does not change: no answer to wait for (and often nothing to write).
            if (
                lease is not None
                or quota
                or (
                    code == "ok"
                    and (entry.strikes or self.clock() - self._last_429 < POOL_GUARD_WINDOW_S)
                )
            ):
                self._fire_release(entry.id, code, lease or "", quota)
            return self.local.record(entry, event, until, error)
        if code == "rl":
            self._last_429 = self.clock()
        try:
            res = await st.run(
                RELEASE_KEY,
                self._keys,
                self._release_args(entry.id, code, lease or "", until, error) + (quota or []),
            )
        except RedisDown:
            return self.local.record(entry, event, until, error)
        if entry.inflight > 0:
            entry.inflight -= 1
        if error:
            entry.last_error = error
        kind = res[0]
        if kind == b"state":
            self._mirror(entry, res[1].decode(), float(res[2]), error, int(res[3]))
            self.local.changed.add(entry.id)
        elif kind == b"guard":
            self._restore(int(k) for k in res[3:])
            return float(res[1])
        return None

    def _release_args(
        self, key_id: int, code: str, lease: str, until: float | None, error: str
    ) -> list[Any]:
        cfg = self.cfg
        return [
            self._shared.now(),
            self._prefix,
            key_id,
            code,
            "" if until is None else until,
            lease,
            cfg.cooldown_s,
            cfg.exhausted_cooldown_s,
            cfg.recheck_interval_s,
            EVENTS,
            self.name,
            error[:300],
            POOL_GUARD_WINDOW_S,
        ]

    def _fire_release(
        self, key_id: int, code: str, lease: str, quota: list[Any] | None = None
    ) -> None:
        self._shared.fire(
            RELEASE_KEY,
            self._keys,
            self._release_args(key_id, code, lease, None, "") + (quota or []),
        )

    def _settle(
        self, entry: KeyEntry, ticket: Ticket | None, budget: list[Announced] | None
    ) -> list[Any] | None:
        """The quota's part of a release: corrected in the local mirror at once, and the
        RELEASE_KEY arguments that correct Redis (None: nothing to say)."""
        charge = ticket.charge if ticket is not None else None
        handle = charge[2] if charge is not None else None
        if not isinstance(handle, RedisCharge):  # picked locally (Redis was away)
            if charge is not None or budget:
                self.local.settle(entry, ticket, budget)
            return None
        assert ticket is not None and charge is not None
        at, cost = charge[0], charge[1]
        ticket.charge = (at, cost, handle.mine) if handle.mine is not None else None
        self.local.settle(entry, ticket, budget)  # the fallback's (and the view's) windows
        used = ticket.actual(cost)
        if used == cost and not budget:
            return None
        args: list[Any] = [
            at,
            handle.lease,
            cost,
            used,
            handle.day,
            handle.end,
            max(0, entry.inflight - 1),
        ]
        now = self.clock()
        for b in budget or ():
            if within(b.window, b.reset_at - now):  # as KeyQuota.announce judges it
                args += [b.window, b.remaining, b.reset_at, b.limit]
        return args

    # --- membership and admin (sync callers: written now, answers applied when they come) -------
    def add(self, entry: KeyEntry) -> None:
        self.local.add(entry)
        if self._shared.up:
            self._shared.fire(
                SYNC,
                self._keys,
                self._sync_args([entry]),
                lambda res: self._apply_sync([entry], res),
            )

    def remove(self, key_id: int) -> KeyEntry | None:
        entry = self.local.remove(key_id)
        if entry is not None:
            self.leases.pop(key_id, None)
            if len(self._removed) < 100_000:
                self._removed.add(key_id)
            self._shared.fire(REMOVE, self._keys, [self._shared.now(), self._prefix, key_id])
        return entry

    def set_status(
        self, key_id: int, status: str, until: float = 0.0, error: str | None = None
    ) -> KeyEntry | None:
        entry = self.local.set_status(key_id, status, until, error)
        if entry is not None:
            self._shared.fire(
                SET,
                self._keys,
                [
                    self._shared.now(),
                    key_id,
                    CODES.get(status, "a"),
                    until,
                    EVENTS,
                    self.name,
                    error or "",
                ],
            )
        return entry

    async def resync(self) -> None:
        """(Re)register every key; Redis's health comes back into the mirror."""
        entries = [e for e in self.local.entries.values() if e.status != "deleted"]
        removed = [k for k in self._removed if k not in self.entries]
        for batch in chunks(removed, SYNC_BATCH):
            await self._shared.run(
                REMOVE, self._keys, [self._shared.now(), self._prefix, *batch], force=True
            )
        for batch in chunks(entries, SYNC_BATCH):
            res = await self._shared.run(SYNC, self._keys, self._sync_args(batch), force=True)
            self._apply_sync(batch, res)

    def _sync_args(self, entries: Sequence[KeyEntry]) -> list[Any]:
        args: list[Any] = [self._shared.now(), EVENTS, self.name]
        for e in entries:
            own = e.own
            lim = (
                f"{e.rpm}:{e.max_conn}:{e.rph}:{e.rpd}:{e.tpm}:{e.tph}:{e.tpd}"
                if own is not None or e.max_conn
                else ""
            )
            tw = f"{e.tier}:{e.weight}" if e.tier or e.weight != 1 else ""
            args += [e.id, CODES.get(e.status, "a"), e.until, lim, 1 if own is not None else 0, tw]
        return args

    def _apply_sync(self, entries: Sequence[KeyEntry], res: list[bytes | None]) -> None:
        for entry, raw in zip(entries, res, strict=False):
            if (
                raw is None
                or entry.status == "deleted"
                or self.local.entries.get(entry.id) is not entry
            ):
                continue
            status, until = decode_state(raw)
            if status != entry.status or (status != "active" and until != entry.until):
                self._mirror(entry, status, until)

    # --- the mirror ---------------------------------------------------------------------------------
    def _mirror(
        self,
        entry: KeyEntry,
        status: str,
        until: float,
        error: str | None = None,
        strikes: int | None = None,
    ) -> None:
        entry.status = status
        entry.until = until
        if error:
            entry.last_error = error
        if strikes is not None:
            # Redis's count, kept as is: a key back from cooling still has its strikes until a
            # success is written, so that success must reach Redis (see release)
            entry.strikes = strikes
        self.local.place(entry)

    def on_health(self, msg: dict[str, Any]) -> None:
        entry = self.local.entries.get(int(msg["id"]))
        if entry is None or entry.status == "deleted":
            return
        status = msg.get("s", "active")
        if status == "cooling":
            self._last_429 = self.clock()
        strikes = msg.get("k", 0 if status == "active" else None)  # an admin's "active" resets
        self._mirror(entry, status, float(msg.get("u") or 0.0), msg.get("e"), strikes)

    def on_guard(self, msg: dict[str, Any]) -> None:
        self._last_429 = self.clock()
        ids = msg.get("ids") or ()
        self._restore(int(k) for k in (ids if isinstance(ids, list) else ()))

    def note_429(self) -> None:
        self._last_429 = self.clock()

    def _restore(self, ids: Iterable[int]) -> None:
        for key_id in ids:
            entry = self.local.entries.get(key_id)
            if entry is not None and entry.status == "cooling":
                self._mirror(entry, "active", 0.0)
                self.local.changed.add(key_id)
