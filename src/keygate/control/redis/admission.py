"""The Redis form of admission: token bucket and gate in Redis, the fair queue in process.

One ADMIT script per decision. Fair share reaches across the fleet: each instance queues its
waiters in one FIFO per client and asks for its head client's turn; ADMIT registers the
clients waiting anywhere and gives a free slot to the one served longest ago, refusing the
others (-2: "not your turn", and a release notice wakes the instances so the right one asks). It holds a local admission as its fallback, with the fleet's
share of the limits; every slot is counted there too, so a switch to local mid-flight knows what
this instance holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Hashable
from typing import Any

from keygate.config.settings import ProviderConfig
from keygate.control.base import Capacity, Limits, Rejected
from keygate.control.local.gate import FairQueue, LocalAdmission
from keygate.control.redis.connection import Callback, RedisDown
from keygate.control.redis.scripts import ADMIT, CAPACITY, PAUSE, RELEASE_SLOT, UNREGISTER
from keygate.control.redis.state import RELEASES, SharedState
from keygate.observe.logs import log

FULL_POLL_S = 1.0  # a head waiter at a full gate re-asks at least this often (lost notices)
TURN_POLL_S = 0.2  # every local client was told "not your turn": ask again after this at most
TURN_BACKOFF_S = 0.02
NOT_YOUR_TURN = -1.0  # what `_try` answers when another waiting client goes first


class SharedSlot:
    __slots__ = ("_owner", "lease", "queued")

    def __init__(self, owner: SharedAdmission, lease: str | None) -> None:
        self._owner: SharedAdmission | None = owner
        self.lease = lease
        self.queued = False  # it waited in the queue (its client may have left meanwhile)

    async def release(self) -> None:
        self.give_back()

    def give_back(self) -> None:
        """Sync form of `release`: from callbacks and the queue server, where nobody awaits."""
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._give_back(self)


class SharedAdmission:
    """Token bucket + gate in Redis (one ADMIT script per decision), FIFO queue in process.

    `local` is the fallback: its limits are the fleet's share. Every slot is also counted there,
    so a switch to local mid-flight knows what this instance holds."""

    def __init__(self, limits: Limits, cfg: ProviderConfig, shared: SharedState) -> None:
        self.local = LocalAdmission(limits)
        self.name = cfg.name
        self._cfg = cfg  # live: the fleet's limits, changed at run time by the admin
        self._shared = shared
        shared.admissions[cfg.name] = self  # the supervisor hands leases back after outages
        prefix = f"keygate:{{{cfg.name}}}:"
        self.leases_key = prefix + "leases"
        self._keys = [prefix + "adm", self.leases_key, prefix + "fair", prefix + "waiting"]
        self.held: dict[str, SharedSlot] = {}  # leased slots, for renewal
        self._unleased: set[SharedSlot] = set()  # taken while Redis was away
        self._queue: FairQueue[SharedSlot | None] = FairQueue()  # one FIFO per client
        self._queued = 0
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None

    # --- the decision ---------------------------------------------------------------------------
    async def _try(self, client: Hashable | None, more: int) -> SharedSlot | float | None:
        """A slot, or seconds to wait before asking again (NOT_YOUR_TURN: another client's
        turn), or None: Redis is away. `more`: this client's waiters here after this one."""
        cfg, st = self._cfg, self._shared
        self._wake.clear()
        if cfg.rps <= 0 and cfg.max_conn <= 0:  # nothing to share but the guard's pause
            wait = self.local.paused_for()
            return wait if wait > 0 else self._granted(None)
        lease = st.lease_id() if cfg.max_conn > 0 else ""
        try:
            res = await st.run(
                ADMIT,
                self._keys,
                [
                    "",
                    cfg.rps,
                    max(1, cfg.burst),
                    cfg.max_conn,
                    lease,
                    st.lease_s,
                    _token(client),
                    more,
                    RELEASES,
                    self.name,
                ],
                self._orphan_admit(lease),
            )
        except RedisDown:
            return None
        if res[0] == 1:
            return self._granted(lease or None)
        wait = float(res[1])
        if wait == -2:
            return NOT_YOUR_TURN
        if wait < 0:  # full: a release notice wakes us; the earliest lease expiry at the latest
            return max(0.001, min(float(res[2]), FULL_POLL_S))
        return max(wait, 0.0005)

    def _orphan_admit(self, lease: str) -> Callback:
        def orphan(res: Any) -> None:  # granted to a caller who left: hand it straight back
            if res and res[0] == 1 and lease:
                self._shared.fire(
                    RELEASE_SLOT,
                    [self.leases_key],
                    ["", lease, self._cfg.max_conn, RELEASES, self.name],
                )

        return orphan

    def _granted(self, lease: str | None) -> SharedSlot:
        slot = SharedSlot(self, lease)
        if lease is not None:
            self.held[lease] = slot
        self.local.count_in()
        return slot

    def _give_back(self, slot: SharedSlot) -> None:
        lease = slot.lease
        if lease is not None:
            self.held.pop(lease, None)
            self._shared.fire(
                RELEASE_SLOT,
                [self.leases_key],
                ["", lease, self._cfg.max_conn, RELEASES, self.name],
            )
        else:
            self._unleased.discard(slot)
        self.local.count_out()  # local count (and local waiters, in fallback)
        if self._queue:
            self._wake.set()

    async def acquire(self, client: Hashable | None = None) -> SharedSlot:
        if not self._shared.up:
            return await self._acquire_local(client)
        wait = 0.0
        if not self._queue:
            got = await self._try(client, 0)
            if got is None:
                return await self._acquire_local(client)
            if isinstance(got, SharedSlot):
                return got
            wait = max(got, 0.0)
        limits = self.local.limits
        if self.local.waiting + self._queued >= limits.queue:
            self.local.rejected += 1
            raise Rejected("queue full", self._estimate_wait())
        fut: asyncio.Future[SharedSlot | None] = asyncio.get_running_loop().create_future()
        self._queue.push(client, fut)
        self._queued += 1
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._serve_queue(wait))
        try:
            async with asyncio.timeout(
                limits.queue_timeout_s if limits.queue_timeout_s > 0 else None
            ):
                slot = await fut
        except TimeoutError:
            if not (fut.done() and not fut.cancelled()):
                self.local.rejected += 1
                self._left(client)
                raise Rejected("queue timeout", self._estimate_wait()) from None
            slot = fut.result()  # granted in the same instant: keep it
        except BaseException:
            if fut.done() and not fut.cancelled():
                got_slot = fut.result()
                if got_slot is not None:
                    got_slot.give_back()  # granted but nobody will use it
            else:
                fut.cancel()
                self._left(client)
            raise
        finally:
            self._queued -= 1
        if slot is None:  # Redis went away while we waited: carry on in the local queue
            return await self._acquire_local(client)
        slot.queued = True
        return slot

    async def _serve_queue(self, wait: float) -> None:
        try:
            await self._serve(wait)
        except Exception as exc:  # never strand the waiters: they carry on locally
            log.error("shared state: admission queue failed: %r", exc)
            self._spill()

    async def _serve(self, wait: float) -> None:
        """The head waiter asks Redis; after the wait Redis named, or at a release notice."""
        q = self._queue
        refused = 0  # local clients told "not your turn" in a row
        while True:
            if q.head() is None:
                return
            if not self._shared.up:
                self._spill()
                return
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                wait = 0.0
                continue
            client, more = q.head_client()
            got = await self._try(client, more)
            if got is None:
                self._spill()
                return
            if isinstance(got, SharedSlot):
                refused = 0
                if q.head() is not None:
                    q.pop().set_result(got)  # the next client in turn
                else:
                    got.give_back()
            elif got == NOT_YOUR_TURN:
                # A client waiting elsewhere (or behind ours here) goes first: offer the turn
                # to our next client; once all were refused, wait for a notice.
                refused += 1
                q.rotate()
                if refused >= q.clients():
                    # At most one ask per TURN_BACKOFF_S meanwhile: the refusal's own notice
                    # (or a client whose instance died, until its registration expires) must
                    # not set the instances asking each other in a tight loop.
                    refused = 0
                    await asyncio.sleep(TURN_BACKOFF_S)
                    wait = TURN_POLL_S
            else:
                refused = 0
                wait = got

    def _left(self, client: Hashable | None) -> None:
        """A waiter left without a slot: if it was its client's last one here, the fleet's
        turn is not kept for that client."""
        if not self._queue.waiting(client) and self._shared.up:
            self._shared.fire(UNREGISTER, self._keys[2:], ["", _token(client)])

    def _spill(self) -> None:
        for fut in self._queue.drain():
            if not fut.done():
                fut.set_result(None)

    async def _acquire_local(self, client: Hashable | None = None) -> SharedSlot:
        # The local grant is counted there; `_give_back` counts it out (count_out), so the
        # local slot object itself is not kept.
        local = await self.local.acquire(client)
        slot = SharedSlot(self, None)
        slot.queued = local.queued
        self._unleased.add(slot)
        return slot

    def lease_local_slots(self) -> None:
        """Redis is back: slots taken locally meanwhile get leases, so the fleet counts them."""
        unleased, self._unleased = self._unleased, set()
        if self._cfg.max_conn <= 0:
            return
        for slot in unleased:
            slot.lease = self._shared.lease_id()
            self.held[slot.lease] = slot

    def wake(self) -> None:
        self._wake.set()

    def on_pause(self, until: float) -> None:
        """Another instance's guard fired: hold here too (Redis already holds the fleet)."""
        self.local.pause_until(until)
        self.wake()

    # --- configuration ----------------------------------------------------------------------------
    def configure(self, limits: Limits) -> None:
        self.local.configure(limits)
        self.wake()

    def pause_until(self, until: float) -> None:
        self.local.pause_until(until)
        self._shared.fire(PAUSE, [self._keys[0]], ["", until])
        self.wake()

    def _estimate_wait(self) -> float:
        rps = self._cfg.rps if self._shared.up else self.local.limits.rps
        return self.local.estimate_wait(self.local.waiting + self._queued, rps)

    async def capacity(self) -> Capacity:
        """The fleet's bucket and gate as Redis holds them (one read), the queue as here."""
        cfg, st = self._cfg, self._shared
        local = self.local
        if not st.up or (cfg.rps <= 0 and cfg.max_conn <= 0):
            return local.capacity_now()
        try:
            res = await st.run(CAPACITY, self._keys, ["", cfg.rps, max(1, cfg.burst)])
        except RedisDown:
            return local.capacity_now()
        tokens = float(res[0]) if cfg.rps > 0 else math.inf
        cap = local.capacity_now(int(res[1]), cfg.max_conn)
        queued = local.waiting + self._queued
        return Capacity(
            min(tokens, cap.tokens),
            cap.free_slots,
            queued,
            max(0, local.limits.queue - queued),
            float(cfg.max_conn or cfg.burst or math.inf),
        )

    def snapshot(self) -> dict[str, float]:
        snap = self.local.snapshot()
        snap["queued"] = self.local.waiting + self._queued
        if self._shared.up:
            snap["max_conn"] = self._cfg.max_conn  # the fleet's gate; in_flight is ours
        return snap


def _token(client: Hashable | None) -> str:
    """A client's name in Redis ('-' for requests without a client key)."""
    return "-" if client is None else str(client)
