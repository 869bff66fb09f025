"""The pick of a pool whose keys have tiers or weights of their own (SPEC §15): the lowest tier
with a key able to serve takes the request, by smooth weighted round-robin inside it, and a
pinned key (affinity) is taken only where that rule would allow it. `LocalKeyPool` uses these
only once some key has a tier or a weight; a pool without them keeps its O(1) ring."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from keygate.control.keypool import KeyEntry

if TYPE_CHECKING:
    from keygate.control.quota import Ticket


class TieredPick:
    """Mixin of `LocalKeyPool`: the tiered pick and the pinned key's check."""

    entries: dict[int, KeyEntry]
    _tiers: list[list[KeyEntry]] | None  # by tier, lowest first (built lazily, reset on change)
    _day: tuple[float, float]

    if TYPE_CHECKING:

        def _limit_wait(
            self, entry: KeyEntry, now: float, ticket: Ticket | None = None
        ) -> float: ...

        def count_use(self, entry: KeyEntry, now: float, ticket: Ticket | None = None) -> None: ...

        def limits_of(self, entry: KeyEntry) -> tuple[int, int, int, int, int, int]: ...

    def _pinned(
        self, key_id: int, now: float, avoid: Iterable[int], ticket: Ticket | None
    ) -> KeyEntry | None:
        """The key `prefer` names when it can serve now (active, not avoided, its limits take
        `ticket`) and no key of a lower tier can; else None (the normal pick decides)."""
        entry = self.entries.get(key_id)
        if (
            entry is None
            or entry.status != "active"
            or key_id in avoid
            or self._limit_wait(entry, now, ticket)
        ):
            return None
        if entry.tier:
            for group in self._groups():
                if group[0].tier >= entry.tier:
                    break
                for peer in group:
                    if (
                        peer.status == "active"
                        and peer.id not in avoid
                        and not self._limit_wait(peer, now, ticket)
                    ):
                        return None
        return entry

    def _groups(self) -> list[list[KeyEntry]]:
        """The keys grouped by tier, lowest first, each group in id order."""
        groups = self._tiers
        if groups is None:
            by_tier: dict[int, list[KeyEntry]] = {}
            for key_id in sorted(self.entries):
                entry = self.entries[key_id]
                by_tier.setdefault(entry.tier, []).append(entry)
            groups = self._tiers = [by_tier[t] for t in sorted(by_tier)]
        return groups

    def _tier_scan(
        self, now: float, exclude: Iterable[int], ticket: Ticket | None = None
    ) -> tuple[KeyEntry | None, bool]:
        """`_scan` for a pool with tiers or weights: the lowest tier with a usable key not in
        `exclude`, and in it smooth weighted round-robin (nginx's: every usable key gains its
        weight, the highest is taken and gives back the sum). O(keys) per pick."""
        passed = False
        for group in self._groups():
            best: KeyEntry | None = None
            usable: list[KeyEntry] = []
            total = 0
            for entry in group:
                if entry.status != "active" or self._limit_wait(entry, now, ticket):
                    continue
                if entry.id in exclude:
                    passed = True
                    continue
                entry.cw += entry.weight
                total += entry.weight
                usable.append(entry)
                if best is None or entry.cw > best.cw:
                    best = entry
            if best is not None:
                if best.quota is not None and best.quota.snug:
                    best = self._soonest(best, usable, now)
                best.cw -= total
                self.count_use(best, now, ticket)
                return best, passed
        return None, passed

    def _soonest(self, first: KeyEntry, usable: list[KeyEntry], now: float) -> KeyEntry:
        """`_prefer` inside a tier: when `first` is nearly spent, the usable key of its tier
        that is too and whose window resets soonest takes the turn (`first` keeps its weight)."""
        q = first.quota
        assert q is not None
        day_end = self._day[1]
        soonest = q.nearly_spent(self.limits_of(first), now, day_end)
        if soonest is None:
            return first
        best = first
        for peer in usable:
            pq = peer.quota
            if peer is first or pq is None:
                continue
            reset = pq.nearly_spent(self.limits_of(peer), now, day_end)
            if reset is not None and reset < soonest:
                best, soonest = peer, reset
        return best
