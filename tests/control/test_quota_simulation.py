"""A day of traffic on a fake clock (no sleeping), against keys with mixed limits, through each
control form: the pool must spend at least 95% of the total quota without the simulated
provider ever answering 429.

The provider enforces each key's real limits (sliding minute and hour windows, its own day) and,
for some keys, announces what is left the way Cerebras does; keygate knows some limits from its
config, some only from the announcements, and one key's configured day limit is higher than the
provider's real one (the announcement wins). Requests arrive at random, a little more than the
day's quota; one that finds every key spent waits for the earliest reset within the queue
timeout, as the request path does, else is refused by keygate (never sent upstream).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from keygate.config.quotaday import day_window
from keygate.control.base import Event
from keygate.control.quota import Announced, Ticket

from .conftest import Form

PROMPT, COMPLETION = 25, 150  # tokens each request really uses (the estimate is higher)
LATENCY_S = 1.5
QUEUE_TIMEOUT_S = 30.0
BODY = b'{"model": "m", "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}]}'


@dataclass
class RealKey:
    """What the provider enforces on one key, and whether it tells."""

    rpm: int = 0
    rph: int = 0
    rpd: int = 0
    tpm: int = 0
    tpd: int = 0
    announces: bool = False
    minute: deque[tuple[float, int]] = field(default_factory=deque)
    hour: deque[float] = field(default_factory=deque)
    day_requests: int = 0
    day_tokens: int = 0

    def capacity(self) -> int:
        """Requests this key can serve in one day, whatever binds first."""
        per = PROMPT + COMPLETION
        caps = [self.rpd or 10**9, self.rph * 24 or 10**9, self.rpm * 1440 or 10**9]
        caps += [self.tpd // per if self.tpd else 10**9, self.tpm * 1440 // per or 10**9]
        return min(caps)

    def admit(self, now: float) -> bool:
        while self.minute and self.minute[0][0] <= now - 60:
            self.minute.popleft()
        while self.hour and self.hour[0] <= now - 3600:
            self.hour.popleft()
        used = PROMPT + COMPLETION
        if (
            (self.rpm and len(self.minute) >= self.rpm)
            or (self.rph and len(self.hour) >= self.rph)
            or (self.rpd and self.day_requests >= self.rpd)
            or (self.tpm and sum(n for _, n in self.minute) + used > self.tpm)
            or (self.tpd and self.day_tokens + used > self.tpd)
        ):
            return False
        self.minute.append((now, used))
        self.hour.append(now)
        self.day_requests += 1
        self.day_tokens += used
        return True


def keys() -> dict[int, tuple[tuple[int, int, int, int, int, int], RealKey]]:
    """key id -> (keygate's config (rpm, rph, rpd, tpm, tph, tpd), the provider's limits)."""
    return {
        1: ((10, 0, 900, 0, 0, 0), RealKey(rpm=10, rpd=900)),
        2: ((30, 0, 600, 20_000, 0, 0), RealKey(rpm=30, rpd=600, tpm=20_000)),
        3: ((0, 120, 0, 0, 0, 150_000), RealKey(rph=120, tpd=150_000)),
        4: ((0, 0, 0, 0, 0, 0), RealKey(rpd=700, announces=True)),  # known from its answers
        5: ((0, 0, 500, 0, 0, 0), RealKey(rpd=400, announces=True)),  # the provider's is lower
    }


async def test_a_day_of_traffic_spends_the_quota_without_a_429(form: Form) -> None:
    rng = random.Random(14)
    KEYS = keys()
    pool = await form.pool(len(KEYS))
    for key_id, (limits, _) in KEYS.items():
        entry = pool.entries[key_id]
        entry.set_limits(limits)
        pool.add(entry)
    await form.settle()
    start, end = day_window(form.clock(), "00:00 UTC")
    form.clock.t = start
    capacity = sum(real.capacity() for _, real in KEYS.values())
    # arrivals: a little more than the day's quota, at random, busy by day and quiet by night
    n = int(capacity * 1.1)
    events: list[tuple[float, int, str, Any]] = []
    seq = 0
    arrivals: list[float] = []
    while len(arrivals) < n:
        x = rng.random()
        if rng.random() * 1.8 <= 1 + 0.8 * math.sin(2 * math.pi * (x - 0.25)):
            arrivals.append(start + x * (end - start - 120))
    for t in sorted(arrivals):
        seq += 1
        events.append((t, seq, "arrive", None))
    heapq.heapify(events)
    served = refused = upstream_429 = 0
    while events:
        t, _, kind, data = heapq.heappop(events)
        form.clock.t = t
        if kind == "done":
            entry, ticket, ok, budget = data
            if ok:
                ticket.usage[:] = [PROMPT, COMPLETION]
            event = Event.OK if ok else Event.RATE_LIMITED
            await pool.release(entry, event, None, "", ticket, budget)
            continue
        ticket = data or Ticket(BODY, 0, [0, 0])
        pick = await pool.acquire((), ticket)
        if pick.entry is None:
            wait = pick.wait
            if pick.quota and wait is not None and ticket.waited + wait <= QUEUE_TIMEOUT_S:
                ticket.waited += wait + 0.005
                seq += 1
                heapq.heappush(events, (t + wait + 0.005, seq, "arrive", ticket))
                continue
            refused += 1
            continue
        real = KEYS[pick.entry.id][1]
        ok = real.admit(t)
        served += ok
        upstream_429 += not ok
        budget = None
        if real.announces:
            budget = [Announced("rpd", real.rpd - real.day_requests, end, real.rpd)]
        seq += 1
        heapq.heappush(events, (t + LATENCY_S, seq, "done", (pick.entry, ticket, ok, budget)))
    utilisation = served / capacity
    print(
        f"\n[{form.name}] simulated day: {served} of {capacity} requests' quota served "
        f"(utilisation {utilisation:.1%}), {refused} refused by keygate, "
        f"{upstream_429} upstream 429s"
    )
    assert upstream_429 == 0
    assert utilisation >= 0.95
    assert served <= capacity
