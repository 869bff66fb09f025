"""Keys of one provider and their health: a small state machine plus O(1) round-robin.

States: active → cooling (until T, back by itself) | invalid (re-checked) | exhausted (long
cooldown, re-checked) | disabled (admin). Usable keys sit in a ring; a pick rotates it and drops
entries that are no longer active (lazy deletion), so each pick is O(1) amortised however many
keys the provider has. Cooling keys wait in a heap ordered by their return time.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from keygate.control.base import Event

POOL_GUARD_WINDOW_S = 10.0


def mask(secret: str) -> str:
    """First 4 and last 4 characters; short secrets show less so they are never whole."""
    n = len(secret)
    if n >= 12:
        return f"{secret[:4]}…{secret[-4:]}"
    if n >= 6:
        return f"{secret[:2]}…{secret[-2:]}"
    return "…"


class KeyEntry:
    """One key as the running gateway knows it: secret, health, per-key limits, counters."""

    __slots__ = (
        "created_at",
        "err_4xx",
        "err_5xx",
        "flushed",
        "id",
        "in_ring",
        "inflight",
        "label",
        "last_error",
        "last_used",
        "masked",
        "max_conn",
        "ok",
        "provider",
        "recent",
        "rpm",
        "secret",
        "source",
        "status",
        "strikes",
        "tokens_in",
        "tokens_out",
        "until",
        "use_count",
    )

    def __init__(
        self,
        id: int,
        provider: str,
        secret: str,
        *,
        label: str = "",
        status: str = "active",
        until: float = 0.0,
        last_error: str = "",
        source: str = "api",
        created_at: float = 0.0,
        rpm: int = 0,
        max_conn: int = 0,
        use_count: int = 0,
        last_used: float = 0.0,
    ) -> None:
        self.id = id
        self.provider = provider
        self.secret = secret
        self.masked = mask(secret)
        self.label = label
        self.status = status
        self.until = until
        self.last_error = last_error
        self.source = source
        self.created_at = created_at or time.time()
        self.rpm = rpm
        self.max_conn = max_conn
        self.strikes = 0
        self.inflight = 0
        self.recent: deque[float] | None = None
        self.in_ring = False
        self.use_count = use_count
        self.last_used = last_used
        self.ok = 0
        self.err_4xx = 0
        self.err_5xx = 0
        self.tokens_in = 0
        self.tokens_out = 0
        # counter values at the last flush, so the flusher writes deltas
        self.flushed: tuple[int, int, int, int, int, int] = (use_count, 0, 0, 0, 0, 0)

    def counters(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.use_count,
            self.ok,
            self.err_4xx,
            self.err_5xx,
            self.tokens_in,
            self.tokens_out,
        )

    def public(self, now: float | None = None) -> dict[str, Any]:
        """The shape of SPEC §7; never the secret."""
        return {
            "id": self.id,
            "provider": self.provider,
            "masked": self.masked,
            "label": self.label,
            "status": self.status,
            "use_count": self.use_count,
            "last_used": self.last_used or None,
            "created_at": self.created_at,
            "last_error": self.last_error or None,
            "cooldown_until": self.until
            if self.status in ("cooling", "exhausted", "invalid")
            else None,
            "source": self.source,
            "inflight": self.inflight,
            "ok": self.ok,
            "err_4xx": self.err_4xx,
            "err_5xx": self.err_5xx,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "rpm": self.rpm,
            "max_conn": self.max_conn,
        }


class PoolSettings:
    """The slice of provider settings the pool reads (live object, changed at run time)."""

    cooldown_s: float
    exhausted_cooldown_s: float
    recheck_interval_s: float
    key_rpm: int
    key_max_conn: int


class LocalKeyPool:
    def __init__(self, cfg: PoolSettings, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.entries: dict[int, KeyEntry] = {}
        self._ring: deque[KeyEntry] = deque()
        self._cooling: list[tuple[float, int]] = []
        self._recent_429: deque[tuple[float, int]] = deque()
        self._last_ok = 0.0
        self.touched: set[int] = set()  # keys used since the last counter flush
        self.changed: set[int] = set()  # keys whose health changed since the last flush

    # --- membership ----------------------------------------------------------------------
    def add(self, entry: KeyEntry) -> None:
        old = self.entries.get(entry.id)
        if old is not None and old is not entry:
            old.status = "deleted"  # the ring drops it lazily
        self.entries[entry.id] = entry
        self._place(entry)

    def remove(self, key_id: int) -> KeyEntry | None:
        entry = self.entries.pop(key_id, None)
        if entry is not None:
            entry.status = "deleted"
        return entry

    def set_status(
        self, key_id: int, status: str, until: float = 0.0, error: str | None = None
    ) -> KeyEntry | None:
        """Admin or sync from the store: put a key in a state directly."""
        entry = self.entries.get(key_id)
        if entry is None:
            return None
        entry.status = status
        entry.until = until
        if error is not None:
            entry.last_error = error
        if status == "active":
            entry.strikes = 0
        self.changed.add(key_id)
        self._place(entry)
        return entry

    def _place(self, entry: KeyEntry) -> None:
        if entry.status == "active":
            if not entry.in_ring:
                entry.in_ring = True
                self._ring.append(entry)
        elif entry.status == "cooling":
            heapq.heappush(self._cooling, (entry.until, entry.id))

    # --- the pick --------------------------------------------------------------------------
    def _promote(self, now: float) -> None:
        heap = self._cooling
        while heap and heap[0][0] <= now:
            _, key_id = heapq.heappop(heap)
            entry = self.entries.get(key_id)
            if entry is not None and entry.status == "cooling" and entry.until <= now:
                entry.status = "active"
                entry.until = 0.0
                self.changed.add(key_id)
                self._place(entry)

    def _limit_wait(self, entry: KeyEntry, now: float) -> float:
        """0 when the key's own limits allow one more request now."""
        max_conn = entry.max_conn or self.cfg.key_max_conn
        if max_conn and entry.inflight >= max_conn:
            return 1.0
        rpm = entry.rpm or self.cfg.key_rpm
        if rpm:
            recent = entry.recent
            if recent is None or recent.maxlen != rpm:
                recent = entry.recent = deque(recent or (), maxlen=rpm)
            if len(recent) >= rpm and now - recent[0] < 60.0:
                return 60.0 - (now - recent[0])
        return 0.0

    async def acquire(self, exclude: Iterable[int] = ()) -> KeyEntry | None:
        return self.pick(exclude)

    async def release(
        self, entry: KeyEntry, event: Event, until: float | None = None, error: str = ""
    ) -> float | None:
        return self.record(entry, event, until, error)

    def pick(self, exclude: Iterable[int] = ()) -> KeyEntry | None:
        """The next usable key in round-robin order, or None."""
        now = self.clock()
        if self._cooling and self._cooling[0][0] <= now:
            self._promote(now)
        ring = self._ring
        for _ in range(len(ring)):
            entry = ring.popleft()
            if entry.status != "active":
                entry.in_ring = False
                continue
            ring.append(entry)
            if entry.id in exclude or self._limit_wait(entry, now):
                continue
            entry.inflight += 1
            entry.use_count += 1
            entry.last_used = now
            self.touched.add(entry.id)
            if entry.recent is not None:
                entry.recent.append(now)
            return entry
        return None

    async def ready_in(self, exclude: Iterable[int] = ()) -> float | None:
        return self.ready_in_now(exclude)

    def ready_in_now(self, exclude: Iterable[int] = ()) -> float | None:
        """Seconds until some key is usable (0: now); None when none will be without an admin or a re-check."""
        now = self.clock()
        self._promote(now)
        best: float | None = None
        for entry in self._ring:
            if entry.status != "active" or entry.id in exclude:
                continue
            wait = self._limit_wait(entry, now)
            if wait == 0.0:
                return 0.0
            best = wait if best is None else min(best, wait)
        for until, key_id in self._cooling:
            entry = self.entries.get(key_id)
            if entry is not None and entry.status == "cooling" and key_id not in exclude:
                wait = max(0.0, until - now)
                best = wait if best is None else min(best, wait)
                break  # heap top is the earliest live one in practice
        for entry in self.entries.values() if best is None else ():
            if entry.status == "exhausted":
                wait = max(0.0, entry.until - now)
                best = wait if best is None else min(best, wait)
        return best

    # --- outcomes ----------------------------------------------------------------------------
    def record(
        self, entry: KeyEntry, event: Event, until: float | None = None, error: str = ""
    ) -> float | None:
        """Record how a try went; returns a wall-clock time to pause the provider until, when
        the pool-wide 429 guard fires."""
        if entry.inflight > 0:
            entry.inflight -= 1
        if event is Event.OK:
            entry.strikes = 0
            self._last_ok = self.clock()
            return None
        if event is Event.RATE_LIMITED:
            return self._rate_limited(entry, until, error)
        if event is Event.INVALID:
            self._condemn(entry, "invalid", self.cfg.recheck_interval_s, error)
        elif event is Event.EXHAUSTED:
            self._condemn(entry, "exhausted", self.cfg.exhausted_cooldown_s, error)
        return None

    def _condemn(self, entry: KeyEntry, status: str, hold_s: float, error: str) -> None:
        if entry.status == "disabled" or entry.status == "deleted":
            return
        entry.status = status
        entry.until = self.clock() + hold_s
        entry.last_error = error
        self.changed.add(entry.id)

    def _rate_limited(self, entry: KeyEntry, until: float | None, error: str) -> float | None:
        now = self.clock()
        recent = self._recent_429
        recent.append((now, entry.id))
        horizon = max(now - POOL_GUARD_WINDOW_S, self._last_ok)
        while recent and recent[0][0] < horizon:
            recent.popleft()
        entry.last_error = error
        eligible = len(self.entries)
        distinct = {key_id for _, key_id in recent}
        if eligible >= 2 and len(distinct) >= min(3, eligible):
            # Every recent try across several keys was refused: the provider (or our IP) is
            # saturated, not these keys. Pause the provider; keep the keys active.
            recent.clear()
            for key_id in distinct:
                other = self.entries.get(key_id)
                if other is not None and other.status == "cooling":
                    other.status = "active"
                    other.until = 0.0
                    self.changed.add(key_id)
                    self._place(other)
            return until if until and until > now else now + min(self.cfg.cooldown_s, 5.0)
        if entry.status != "active":
            return None
        entry.strikes += 1
        if not until or until <= now:
            until = now + self.cfg.cooldown_s * (2 ** min(entry.strikes - 1, 4))
        entry.status = "cooling"
        entry.until = until
        self.changed.add(entry.id)
        self._place(entry)
        return None

    def due_for_recheck(self) -> list[KeyEntry]:
        now = self.clock()
        return [
            e
            for e in self.entries.values()
            if e.status in ("invalid", "exhausted") and e.until <= now
        ]

    def counts(self) -> dict[str, int]:
        self._promote(self.clock())
        out = {"active": 0, "cooling": 0, "invalid": 0, "exhausted": 0, "disabled": 0}
        for entry in self.entries.values():
            out[entry.status] = out.get(entry.status, 0) + 1
        return out
