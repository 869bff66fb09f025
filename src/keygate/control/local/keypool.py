"""The in-process key pool: key health as a small state machine plus O(1) round-robin.

Usable keys sit in a ring; a pick rotates it and drops entries that are no longer active (lazy
deletion), so each pick is O(1) amortised however many keys the provider has. Cooling keys wait
in a heap ordered by their return time. The Lua scripts of the Redis form implement the same
machine; tests/control holds the two to the same answers.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable

from keygate.control.base import Event, Pick
from keygate.control.keypool import POOL_GUARD_WINDOW_S, KeyEntry, PoolSettings


class LocalKeyPool:
    """`share` divides the per-key limits: the Redis form's fallback serves 1/fleet of each."""

    def __init__(
        self, cfg: PoolSettings, clock: Callable[[], float] = time.time, share: int = 1
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.share = max(1, share)
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
        self.place(entry)

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
        self.place(entry)
        return entry

    def place(self, entry: KeyEntry) -> None:
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
                self.place(entry)

    def _share(self, limit: int) -> int:
        return max(1, limit // self.share) if limit else 0

    def window(self, entry: KeyEntry) -> deque[float] | None:
        """The key's recent pick times, sized to its rpm (None: no rpm limit)."""
        rpm = self._share(entry.rpm or self.cfg.key_rpm)
        if not rpm:
            return None
        recent = entry.recent
        if recent is None or recent.maxlen != rpm:
            recent = entry.recent = deque(recent or (), maxlen=rpm)
        return recent

    def _limit_wait(self, entry: KeyEntry, now: float) -> float:
        """0 when the key's own limits allow one more request now."""
        max_conn = self._share(entry.max_conn or self.cfg.key_max_conn)
        if max_conn and entry.inflight >= max_conn:
            return 1.0
        recent = self.window(entry)
        if recent is not None and len(recent) >= (recent.maxlen or 0) and now - recent[0] < 60.0:
            return 60.0 - (now - recent[0])
        return 0.0

    async def acquire(self, avoid: Iterable[int] = ()) -> Pick:
        return self.take(avoid)

    async def release(
        self, entry: KeyEntry, event: Event, until: float | None = None, error: str = ""
    ) -> float | None:
        return self.record(entry, event, until, error)

    def take(self, avoid: Iterable[int] = ()) -> Pick:
        """The pick the request path makes: a key not in `avoid` if one is usable, else one
        of those (round-robin order either way), else how long until one is."""
        now = self.clock()
        if self._cooling and self._cooling[0][0] <= now:
            self._promote(now)
        entry, avoided = self._scan(now, avoid)
        if entry is None and avoided:
            entry, _ = self._scan(now, ())
        if entry is not None:
            return Pick(entry)
        return Pick(None, self.ready_in_now())

    def pick(self, exclude: Iterable[int] = ()) -> KeyEntry | None:
        """The next usable key not in `exclude`, in round-robin order, or None."""
        now = self.clock()
        if self._cooling and self._cooling[0][0] <= now:
            self._promote(now)
        return self._scan(now, exclude)[0]

    def _scan(self, now: float, exclude: Iterable[int]) -> tuple[KeyEntry | None, bool]:
        """(the key taken, whether a usable key was passed over for being in `exclude`)."""
        ring = self._ring
        passed = False
        for _ in range(len(ring)):
            entry = ring.popleft()
            if entry.status != "active":
                entry.in_ring = False
                continue
            ring.append(entry)
            if self._limit_wait(entry, now):
                continue
            if entry.id in exclude:
                passed = True
                continue
            self.count_use(entry, now)
            return entry, passed
        return None, passed

    def count_use(self, entry: KeyEntry, now: float) -> None:
        entry.inflight += 1
        entry.use_count += 1
        entry.last_used = now
        self.touched.add(entry.id)
        if entry.recent is not None:  # sized by the limit check (or `window`) before the pick
            entry.recent.append(now)

    async def ready_in(self, exclude: Iterable[int] = ()) -> float | None:
        return self.ready_in_now(exclude)

    def usable_now(self) -> bool:
        return self.ready_in_now() == 0.0

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
        heap = self._cooling
        while heap and not self._live(*heap[0]):
            heapq.heappop(heap)  # a key cooled again (or let out) left its old time behind
        for until, key_id in heap:
            if key_id not in exclude and self._live(until, key_id):
                wait = max(0.0, until - now)
                best = wait if best is None else min(best, wait)
                break  # the heap top is the earliest live one
        for entry in self.entries.values() if best is None else ():
            if entry.status == "exhausted":
                wait = max(0.0, entry.until - now)
                best = wait if best is None else min(best, wait)
        return best

    def _live(self, until: float, key_id: int) -> bool:
        entry = self.entries.get(key_id)
        return entry is not None and entry.status == "cooling" and entry.until == until

    # --- outcomes ----------------------------------------------------------------------------
    def record(
        self, entry: KeyEntry, event: Event, until: float | None = None, error: str = ""
    ) -> float | None:
        """Record how a try went; returns a wall-clock time to pause the provider until, when
        the pool-wide 429 guard fires. The try's counters are final by now: the key is marked
        for the next flush (one may have run since the pick took it off the list)."""
        self.touched.add(entry.id)
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
                    self.place(other)
            return until if until and until > now else now + min(self.cfg.cooldown_s, 5.0)
        if entry.status != "active":
            return None
        entry.strikes += 1
        if not until or until <= now:
            until = now + self.cfg.cooldown_s * (2 ** min(entry.strikes - 1, 4))
        entry.status = "cooling"
        entry.until = until
        self.changed.add(entry.id)
        self.place(entry)
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
