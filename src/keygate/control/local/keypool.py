"""The in-process key pool: key health as a small state machine plus O(1) round-robin.

Usable keys sit in a ring; a pick rotates it and drops entries that are no longer active (lazy
deletion), so each pick is O(1) amortised however many keys the provider has. Cooling keys wait
in a heap ordered by their return time; once a key has a tier or weight, `tiers.py` picks.
The Redis form's Lua scripts implement the same machine; tests/control holds both to it.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable

from keygate.config.quotaday import day_window
from keygate.control.base import Event, Pick
from keygate.control.keypool import POOL_GUARD_WINDOW_S, KeyEntry, PoolSettings, default_limits
from keygate.control.local.tiers import TieredPick
from keygate.control.quota import (
    LOOKAHEAD,
    WINDOWS,
    KeyQuota,
    QuotaView,
    Ticket,
    empty_view,
)
from keygate.dialects.budget import Announced


class LocalKeyPool(TieredPick):
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
        self._dflt: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)
        self._q_on = False
        self._day = (0.0, 0.0)
        self._tiered: set[int] = set()  # keys with a tier or a weight of their own
        self._tiers: list[list[KeyEntry]] | None = None  # by tier, lowest first (lazily built)
        self.refresh()
        self.touched: set[int] = set()  # keys used since the last counter flush
        self.changed: set[int] = set()  # keys whose health changed since the last flush

    # --- membership ----------------------------------------------------------------------
    def add(self, entry: KeyEntry) -> None:
        old = self.entries.get(entry.id)
        if old is not None and old is not entry:
            old.status = "deleted"  # the ring drops it lazily
        self.entries[entry.id] = entry
        if entry.tier or entry.weight != 1:
            self._tiered.add(entry.id)
        else:
            self._tiered.discard(entry.id)
        self._tiers = None
        self.place(entry)

    def remove(self, key_id: int) -> KeyEntry | None:
        entry = self.entries.pop(key_id, None)
        if entry is not None:
            entry.status = "deleted"
            self._tiered.discard(key_id)
            self._tiers = None
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

    def _share_all(
        self, limits: tuple[int, int, int, int, int, int]
    ) -> tuple[int, int, int, int, int, int]:
        s = self._share
        return (s(limits[0]), s(limits[1]), s(limits[2]), s(limits[3]), s(limits[4]), s(limits[5]))

    def refresh(self) -> None:
        """The provider's settings changed: per-key defaults and the day boundary again."""
        dflt = default_limits(self.cfg)
        if self.share > 1:
            dflt = self._share_all(dflt)
        self._dflt = dflt
        self._q_on = any(dflt)
        self._day = (0.0, 0.0)

    def limits_of(self, entry: KeyEntry) -> tuple[int, int, int, int, int, int]:
        """The key's effective quota limits: its own, else the provider's (1/share of each)."""
        own = entry.own
        if own is None:
            return self._dflt
        d = self._dflt
        if self.share > 1:
            own = self._share_all(own)
        return (
            own[0] or d[0],
            own[1] or d[1],
            own[2] or d[2],
            own[3] or d[3],
            own[4] or d[4],
            own[5] or d[5],
        )

    def day(self, now: float) -> tuple[float, float]:
        """(start, end) of the quota day, recomputed only when a day ends."""
        start, end = self._day
        if not start <= now < end:
            start, end = self._day = day_window(now, self.cfg.quota_day_reset)
        return start, end

    def quota(self, entry: KeyEntry, now: float) -> KeyQuota | None:
        """The key's windows, aged to `now`; None when no quota applies to it."""
        q = entry.quota
        if q is None:
            if not self._q_on:
                return None
            q = entry.quota = KeyQuota()
        q.trim(now)
        q.roll(self.day(now)[0])
        return q

    def restore_day(self, entry: KeyEntry, day: float, requests: int, tokens: int) -> None:
        """What the store says the key spent today (a restart mid-day)."""
        now = self.clock()
        if abs(day - self.day(now)[0]) > 1.0 or not (requests or tokens):
            return
        q = self.quota(entry, now)
        if q is not None:
            q.restore(day, requests, tokens)

    async def load_views(self, entries: Iterable[KeyEntry]) -> None:
        """Nothing to load: the windows are here (the Redis form reads the fleet's)."""

    def quota_view(self, entry: KeyEntry, now: float) -> QuotaView:
        """The key's windows as SPEC §12 shows them (used, limit, reset_at; null: unknown)."""
        q = entry.quota
        if q is None:
            view = empty_view()
            for window, limit in zip(WINDOWS, self.limits_of(entry), strict=True):
                view[window]["limit"] = limit or None
            return view
        self.quota(entry, now)
        return q.rows(self.limits_of(entry), now, self.day(now)[1])

    def _limit_wait(self, entry: KeyEntry, now: float, ticket: Ticket | None = None) -> float:
        """0 when the key's own limits allow one more request (`ticket`'s tokens) now."""
        max_conn = self._share(entry.max_conn or self.cfg.key_max_conn)
        if max_conn and entry.inflight >= max_conn:
            return 1.0
        q = entry.quota
        if q is None:
            if not self._q_on:
                return 0.0
            q = entry.quota = KeyQuota()
        q.trim(now)
        start, end = self._day
        if not start <= now < end:
            start, end = self.day(now)
        if q.day != start:
            q.roll(start)
        cost = ticket.tokens if ticket is not None else 0
        return q.wait(self.limits_of(entry), now, cost, end)

    def quota_wait(self, entry: KeyEntry, now: float, cost: int) -> float:
        """Seconds until the key's quota windows take a request of `cost` tokens (0: now)."""
        q = self.quota(entry, now)
        return 0.0 if q is None else q.wait(self.limits_of(entry), now, cost, self._day[1])

    async def acquire(
        self, avoid: Iterable[int] = (), ticket: Ticket | None = None, prefer: int | None = None
    ) -> Pick:
        return self.take(avoid, ticket, prefer)

    async def release(
        self,
        entry: KeyEntry,
        event: Event,
        until: float | None = None,
        error: str = "",
        ticket: Ticket | None = None,
        budget: list[Announced] | None = None,
    ) -> float | None:
        return self.record(entry, event, until, error, ticket, budget)

    def take(
        self, avoid: Iterable[int] = (), ticket: Ticket | None = None, prefer: int | None = None
    ) -> Pick:
        """The pick the request path makes: `prefer` when the normal rule allows it now (see
        `_pinned`), else a key not in `avoid` if one is usable, else one of those (the same
        order either way), else how long until one is."""
        now = self.clock()
        if self._cooling and self._cooling[0][0] <= now:
            self._promote(now)
        if prefer is not None:
            pinned = self._pinned(prefer, now, avoid, ticket)
            if pinned is not None:
                self.count_use(pinned, now, ticket)
                return Pick(pinned)
        scan = self._tier_scan if self._tiered else self._scan
        entry, avoided = scan(now, avoid, ticket)
        if entry is None and avoided:
            entry, _ = scan(now, (), ticket)
        if entry is not None:
            return Pick(entry)
        return self._no_key(now, ticket)

    def _no_key(self, now: float, ticket: Ticket | None) -> Pick:
        wait = self.ready_in_now((), ticket, now)
        if wait is None or not (self._q_on or any(e.quota for e in self._ring)):
            return Pick(None, wait)
        # Is it the quota windows that hold every usable key back (not health, not max_conn)?
        cost = ticket.tokens if ticket is not None else 0
        quota = [
            self.quota_wait(e, now, cost)
            for e in self._ring
            if e.status == "active"
            and not ((mc := self._share(e.max_conn or self.cfg.key_max_conn)) and e.inflight >= mc)
        ]
        if quota and min(quota) > 0 and min(quota) <= wait + 1e-9:
            return Pick(None, min(quota), True)
        return Pick(None, wait)

    def pick(self, exclude: Iterable[int] = ()) -> KeyEntry | None:
        """The next usable key not in `exclude`, in round-robin order, or None."""
        now = self.clock()
        if self._cooling and self._cooling[0][0] <= now:
            self._promote(now)
        return (self._tier_scan if self._tiered else self._scan)(now, exclude)[0]

    def _scan(
        self, now: float, exclude: Iterable[int], ticket: Ticket | None = None
    ) -> tuple[KeyEntry | None, bool]:
        """(the key taken, whether a usable key was passed over for being in `exclude`)."""
        ring = self._ring
        passed = False
        for _ in range(len(ring)):
            entry = ring.popleft()
            if entry.status != "active":
                entry.in_ring = False
                continue
            ring.append(entry)
            if self._limit_wait(entry, now, ticket):
                continue
            if entry.id in exclude:
                passed = True
                continue
            if entry.quota is not None and entry.quota.snug:
                entry = self._prefer(entry, now, ticket, exclude)
            self.count_use(entry, now, ticket)
            return entry, passed
        return None, passed

    def _prefer(
        self, first: KeyEntry, now: float, ticket: Ticket | None, exclude: Iterable[int]
    ) -> KeyEntry:
        """When `first` is nearly spent: among it and the next few usable keys that are too,
        the one whose window resets soonest (quota unused at a reset is lost); else `first`."""
        q = first.quota
        assert q is not None
        soonest = q.nearly_spent(self.limits_of(first), now, self._day[1])
        if soonest is None:
            return first
        ring = self._ring
        best, at = first, -1
        for i in range(min(LOOKAHEAD, len(ring) - 1)):
            peer = ring[i]
            pq = peer.quota
            if pq is None or peer.status != "active" or peer.id in exclude:
                continue
            self.quota(peer, now)
            reset = pq.nearly_spent(self.limits_of(peer), now, self._day[1])
            if reset is None or reset >= soonest:
                continue
            if self._limit_wait(peer, now, ticket):
                continue
            best, soonest, at = peer, reset, i
        if at >= 0:
            # the peer takes this turn; `first` keeps its place at the front
            del ring[at]
            ring.pop()
            ring.appendleft(first)
            ring.append(best)
        return best

    def count_use(self, entry: KeyEntry, now: float, ticket: Ticket | None = None) -> None:
        entry.inflight += 1
        entry.use_count += 1
        entry.last_used = now
        self.touched.add(entry.id)
        q = entry.quota
        if q is not None:
            cost = ticket.tokens if ticket is not None else 0
            item = q.charge(now, cost)
            if ticket is not None:
                ticket.charge = (now, cost, item)

    async def ready_in(self, exclude: Iterable[int] = ()) -> float | None:
        return self.ready_in_now(exclude)

    def usable_now(self) -> bool:
        return self.ready_in_now() == 0.0

    def ready_in_now(
        self, exclude: Iterable[int] = (), ticket: Ticket | None = None, at: float = 0.0
    ) -> float | None:
        """Seconds until some key is usable (0: now); None when none will be without an admin or a re-check."""
        now = at or self.clock()
        self._promote(now)
        best: float | None = None
        for entry in self._ring:
            if entry.status != "active" or entry.id in exclude:
                continue
            wait = self._limit_wait(entry, now, ticket)
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
        self,
        entry: KeyEntry,
        event: Event,
        until: float | None = None,
        error: str = "",
        ticket: Ticket | None = None,
        budget: list[Announced] | None = None,
    ) -> float | None:
        """Record how a try went; returns a wall-clock time to pause the provider until, when
        the pool-wide 429 guard fires. The try's counters are final by now: the key is marked
        for the next flush (one may have run since the pick took it off the list)."""
        self.touched.add(entry.id)
        if budget or (ticket is not None and ticket.charge is not None):
            self.settle(entry, ticket, budget)
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
        elif event is Event.COOLING:
            self._cool(entry, until, error)
        elif event is Event.DISABLED:
            self._condemn(entry, "disabled", 0.0, error)
            entry.until = 0.0
        return None

    def settle(
        self, entry: KeyEntry, ticket: Ticket | None, budget: list[Announced] | None
    ) -> None:
        """The answer's usage corrects the pick's estimate; its budget headers lower what
        the key is known to have left (before this try leaves the in-flight count)."""
        now = self.clock()
        charge = ticket.charge if ticket is not None else None
        cost = 0
        q = entry.quota
        if charge is not None:
            assert ticket is not None
            ticket.charge = None
            cost = charge[1]
            if q is not None and isinstance(charge[2], list):
                q.correct(charge[2], ticket.actual(cost), now)
        if budget:
            if q is None:
                q = entry.quota = KeyQuota()
            self.quota(entry, now)
            q.announce(budget, now, entry.inflight - 1, cost)

    def _condemn(self, entry: KeyEntry, status: str, hold_s: float, error: str) -> None:
        if entry.status == "disabled" or entry.status == "deleted":
            return
        entry.status = status
        entry.until = self.clock() + hold_s
        entry.last_error = error
        self.changed.add(entry.id)

    def _cool(self, entry: KeyEntry, until: float | None, error: str) -> None:
        """An error rule's cooldown: until its time, without a strike and outside the 429
        guard (the rule said what the error means; no heuristic second-guesses it)."""
        if entry.status != "active" and entry.status != "cooling":
            return
        now = self.clock()
        entry.status = "cooling"
        entry.until = until if until and until > now else now + self.cfg.cooldown_s
        entry.last_error = error
        self.changed.add(entry.id)
        self.place(entry)

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
