"""In-process admission: token bucket + max-in-flight gate + bounded fair queue.

A request is admitted when the bucket has a token and the gate a free slot. Waiting requests
form one FIFO per client (SPEC §13: requests without a client key are one client of their own),
and the clients take turns, so one client's burst cannot starve another. The fast path (nobody
waiting, capacity free) allocates nothing but the slot handle. Waiters are futures granted by
`_pump`, which runs when a slot frees up or when the next token is due.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from keygate.control.base import Capacity, Limits, Rejected
from keygate.control.local.bucket import TokenBucket

T = TypeVar("T")


class FairQueue(Generic[T]):
    """A queue of queues: one FIFO per client, served round-robin (the client at the head of
    `turns` goes next, then moves to the back if it still waits). Entries that gave up (done
    futures) are dropped when they reach a head. Shared by the local and the Redis form."""

    __slots__ = ("_queues", "_turns")

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[asyncio.Future[T]]] = {}
        self._turns: deque[Hashable] = deque()

    def __bool__(self) -> bool:
        return bool(self._turns)

    def push(self, client: Hashable, fut: asyncio.Future[T]) -> None:
        q = self._queues.get(client)
        if q is None:
            q = self._queues[client] = deque()
            self._turns.append(client)
        q.append(fut)

    def head(self) -> asyncio.Future[T] | None:
        """The next waiter still waiting, or None; drops the ones that left."""
        turns, queues = self._turns, self._queues
        while turns:
            client = turns[0]
            q = queues[client]
            while q and q[0].done():
                q.popleft()
            if q:
                return q[0]
            turns.popleft()
            del queues[client]
        return None

    def pop(self) -> asyncio.Future[T]:
        """Take the head waiter (after `head`) and pass the turn to the next client."""
        client = self._turns.popleft()
        q = self._queues[client]
        fut = q.popleft()
        if q:
            self._turns.append(client)
        else:
            del self._queues[client]
        return fut

    def head_client(self) -> tuple[Hashable, int]:
        """The client whose turn it is (after `head`) and how many more of its waiters follow."""
        client = self._turns[0]
        return client, len(self._queues[client]) - 1

    def rotate(self) -> None:
        """Pass the turn on without serving (the fleet said another client goes first)."""
        if len(self._turns) > 1:
            self._turns.rotate(-1)

    def clients(self) -> int:
        return len(self._turns)

    def waiting(self, client: Hashable) -> int:
        """Waiters of `client` still queued (ones that left are counted until dropped)."""
        q = self._queues.get(client)
        return sum(1 for f in q if not f.done()) if q else 0

    def drain(self) -> Iterator[asyncio.Future[T]]:
        """Every waiter, emptying the queue (a switch of form hands them all on)."""
        queues, self._queues, self._turns = self._queues, {}, deque()
        for q in queues.values():
            yield from q


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
        self._waiters: FairQueue[None] = FairQueue()
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

    async def acquire(self, client: Hashable | None = None) -> LocalSlot:
        """A slot now, or after waiting in `client`'s FIFO for its turn among the clients."""
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
        self._waiters.push(client, fut)
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
        while waiters.head() is not None:
            now = self._clock()
            wait = self._wait_needed(now)
            if wait > 0.0:
                if wait != math.inf and self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(wait, self._pump)
                return
            self._grant(now)
            waiters.pop().set_result(None)

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
