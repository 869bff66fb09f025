"""In-process admission: token bucket + max-in-flight gate + bounded FIFO queue.

A request is admitted when the bucket has a token and the gate a free slot, in arrival order.
The fast path (nobody waiting, capacity free) allocates nothing but the slot handle. Waiters are
futures granted by `_pump`, which runs when a slot frees up or when the next token is due.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

from keygate.control.base import Capacity, Limits, Rejected
from keygate.control.local.bucket import TokenBucket


class LocalSlot:
    __slots__ = ("_owner", "queued")

    def __init__(self, owner: LocalAdmission, queued: bool = False) -> None:
        self._owner: LocalAdmission | None = owner
        self.queued = queued  # it waited in the queue (its client may have left meanwhile)

    async def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release()


class LocalAdmission:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limits = limits
        self._bucket = TokenBucket(limits.rps, limits.burst, clock())
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waiting = 0
        self._timer: asyncio.TimerHandle | None = None
        self._paused_until = 0.0  # on `clock`'s scale
        self.admitted = 0
        self.rejected = 0

    # --- configuration -------------------------------------------------------------------
    def configure(self, limits: Limits) -> None:
        self._limits = limits
        self._bucket.reconfigure(limits.rps, limits.burst, self._clock())
        self._reschedule()

    def pause_until(self, until: float) -> None:
        """`until` is wall-clock time; converted to our clock's scale."""
        local = self._clock() + max(0.0, until - time.time())
        if local > self._paused_until:
            self._paused_until = local
            self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiters:
            self._pump()

    # --- the decision --------------------------------------------------------------------
    def _wait_needed(self, now: float) -> float:
        """0 when a request may go now, else seconds to wait (inf: until a slot frees)."""
        if now < self._paused_until:
            return self._paused_until - now
        if self._limits.max_conn and self._in_flight >= self._limits.max_conn:
            return math.inf
        return self._bucket.peek(now)

    def _grant(self, now: float) -> None:
        self._bucket.take(now)
        self._in_flight += 1
        self.admitted += 1

    async def acquire(self) -> LocalSlot:
        if not self._waiting:
            now = self._clock()
            if self._wait_needed(now) == 0.0:
                self._grant(now)
                return LocalSlot(self)
        limits = self._limits
        if self._waiting >= limits.queue:
            self.rejected += 1
            raise Rejected("queue full", self._estimate_wait())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._waiting += 1
        try:
            self._pump()
            if not fut.done():
                async with asyncio.timeout(
                    limits.queue_timeout_s if limits.queue_timeout_s > 0 else None
                ):
                    await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return LocalSlot(self, queued=True)  # granted in the same instant: keep it
            self.rejected += 1
            raise Rejected("queue timeout", self._estimate_wait()) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release()  # granted but nobody will use it
            else:
                fut.cancel()
            raise
        finally:
            self._waiting -= 1
        return LocalSlot(self, queued=True)

    def _pump(self) -> None:
        self._timer = None
        waiters = self._waiters
        while waiters:
            fut = waiters[0]
            if fut.done():
                waiters.popleft()
                continue
            now = self._clock()
            wait = self._wait_needed(now)
            if wait > 0.0:
                if wait != math.inf and self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(wait, self._pump)
                return
            self._grant(now)
            waiters.popleft()
            fut.set_result(None)

    def _release(self) -> None:
        self._in_flight -= 1
        if self._waiters:
            self._pump()

    # --- a holder's view (the Redis form counts its grants here too) ----------------------
    def count_in(self) -> None:
        """A slot granted elsewhere (by Redis) that this process holds."""
        self._in_flight += 1
        self.admitted += 1

    def count_out(self) -> None:
        """That slot given back; local waiters (in fallback) may go."""
        self._release()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def limits(self) -> Limits:
        return self._limits

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def estimate_wait(self, waiting: int, rps: float) -> float:
        """Retry-After for a rejection with `waiting` ahead, at `rps`."""
        return max(1.0, (waiting + 1) / rps) if rps > 0 else 1.0

    def _estimate_wait(self) -> float:
        return self.estimate_wait(self._waiting, self._limits.rps)

    async def capacity(self) -> Capacity:
        return self.capacity_now()

    def capacity_now(self, in_flight: int | None = None, max_conn: int | None = None) -> Capacity:
        """`in_flight`/`max_conn`: the fleet's, when the shared form read them from Redis."""
        limits = self._limits
        now = self._clock()
        held = self._in_flight if in_flight is None else in_flight
        cap = limits.max_conn if max_conn is None else max_conn
        if now < self._paused_until:
            tokens = 0.0
        elif limits.rps > 0:
            self._bucket.peek(now)
            tokens = self._bucket.tokens
        else:
            tokens = math.inf
        free = float(max(0, cap - held)) if cap else math.inf
        return Capacity(
            tokens,
            free,
            self._waiting,
            max(0, limits.queue - self._waiting),
            float(cap or limits.burst or math.inf),
        )

    def snapshot(self) -> dict[str, float]:
        now = self._clock()
        self._bucket.peek(now)  # refill up to now, so an idle provider shows a full bucket
        return {
            "in_flight": self._in_flight,
            "max_conn": self._limits.max_conn,
            "queued": self._waiting,
            "queue": self._limits.queue,
            "tokens": round(self._bucket.tokens if self._limits.rps > 0 else self._limits.burst, 3),
            "paused_for_s": round(max(0.0, self._paused_until - now), 3),
            "admitted": self.admitted,
            "rejected": self.rejected,
        }
