"""The traffic-control interface: what the request path asks of admission and of a key pool.

The request path sees only these shapes. `control.local` implements them in process memory;
`control.redis` implements the same on Redis, so many instances share one set of limits and key
health, and holds a local form as its fallback. The form is picked once at start-up.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from keygate.control.keypool import KeyEntry


class Rejected(Exception):
    """Admission refused: the client gets 429 with Retry-After."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Event(enum.Enum):
    """What one upstream try says about the key that made it."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"  # cooling until a time
    INVALID = "invalid"  # 401/403, "API key not valid"
    EXHAUSTED = "exhausted"  # quota or billing
    PROVIDER_ERROR = "provider_error"  # 5xx, 529, network: not the key's fault
    CLIENT_ERROR = "client_error"  # other 4xx: not the key's fault either
    CANCELLED = "cancelled"  # client left: no judgement


@dataclass(frozen=True, slots=True)
class Limits:
    rps: float
    burst: int
    max_conn: int
    queue: int
    queue_timeout_s: float


class Pick(NamedTuple):
    """A key pool's answer: a key to use now, or how long until one is usable.

    `wait` is seconds when `entry` is None (0 never: then there is a key); None means no key
    becomes usable by itself (all invalid or disabled: an admin or a re-check must act).
    A tuple: made on every request, so as cheap as Python makes an object."""

    entry: KeyEntry | None
    wait: float | None = 0.0


class Slot(Protocol):
    queued: bool  # it waited in the queue (its client may have left meanwhile)

    async def release(self) -> None:
        """Give the slot back; idempotent, called on every exit path."""


class Admission(Protocol):
    """Token bucket + max-in-flight gate + bounded fair queue for one provider."""

    async def acquire(self, client: Hashable | None = None) -> Slot:
        """Wait for a token and a free slot; raises `Rejected` on full or timeout. Waiters
        queue in one FIFO per `client` (None: requests without a client key), and the
        clients take turns (SPEC §13 fair share)."""

    def configure(self, limits: Limits) -> None: ...

    def pause_until(self, until: float) -> None:
        """Hold every admission until wall-clock `until` (the pool-wide 429 guard)."""

    def snapshot(self) -> dict[str, float]: ...


class KeyPool(Protocol):
    """The keys of one provider: round-robin pick, per-key limits, health from each try."""

    entries: dict[int, KeyEntry]
    touched: set[int]  # keys used since the last counter flush
    changed: set[int]  # keys whose health changed since the last flush

    async def acquire(self, avoid: Iterable[int] = ()) -> Pick:
        """The next usable key, one not in `avoid` if any is usable, else one of those; when
        none is usable, how long until one is. One decision (one Redis round trip)."""

    async def release(
        self, entry: KeyEntry, event: Event, until: float | None = None, error: str = ""
    ) -> float | None:
        """Record how a try went; a wall-clock time to pause the provider until when the
        pool-wide 429 guard fires."""

    async def ready_in(self, exclude: Iterable[int] = ()) -> float | None:
        """Seconds until a key not in `exclude` is usable (0: now), without taking one."""

    def add(self, entry: KeyEntry) -> None: ...

    def remove(self, key_id: int) -> KeyEntry | None: ...

    def set_status(
        self, key_id: int, status: str, until: float = 0.0, error: str | None = None
    ) -> KeyEntry | None:
        """Admin or store sync: put a key in a state directly."""

    def due_for_recheck(self) -> list[KeyEntry]: ...

    def counts(self) -> dict[str, int]: ...
