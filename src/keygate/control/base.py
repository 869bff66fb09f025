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
    from keygate.control.quota import QuotaView, Ticket
    from keygate.dialects.budget import Announced


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
    # said by an error rule (SPEC §15), never by the built-in judgement:
    COOLING = "cooling"  # cooling until the rule's time: no strikes, not the pool-wide guard's
    DISABLED = "disabled"  # disabled: only a person brings it back
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
    becomes usable by itself (all invalid or disabled: an admin or a re-check must act);
    `quota` says the wait is for a quota window's reset.
    A tuple: made on every request, so as cheap as Python makes an object."""

    entry: KeyEntry | None
    wait: float | None = 0.0
    quota: bool = False  # no key: their quota windows (not their health) hold them back


class Capacity(NamedTuple):
    """What a provider could take now, for `spread` routing: read, never reserved."""

    tokens: float  # tokens in the bucket (inf: no rate limit)
    free_slots: float  # max_conn minus in flight (inf: no concurrency limit)
    queued: int  # requests waiting here
    queue_room: int  # how many more may wait before the queue is full
    size: float  # the provider's scale (max_conn, else burst), to compare headroom fairly

    def score(self) -> tuple[float, float]:
        """Higher is freer: headroom relative to the provider's size, then absolute. A
        provider with a queue ranks by how long that queue is for its size."""
        free = min(self.tokens, self.free_slots)
        if free >= 1:
            return (free / self.size if self.size != float("inf") else free, free)
        return (-(self.queued + 1) / self.size, free)


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

    async def capacity(self) -> Capacity:
        """Free capacity now, without taking any (the shared form: one Redis read)."""


class KeyPool(Protocol):
    """The keys of one provider: tiered, weighted round-robin pick, per-key limits, health
    from each try."""

    entries: dict[int, KeyEntry]
    touched: set[int]  # keys used since the last counter flush
    changed: set[int]  # keys whose health changed since the last flush

    async def acquire(
        self, avoid: Iterable[int] = (), ticket: Ticket | None = None, prefer: int | None = None
    ) -> Pick:
        """The next usable key, one not in `avoid` if any is usable, else one of those; when
        none is usable, how long until one is. A key whose quota windows cannot take the
        `ticket` (one request, its estimated tokens) is not usable; the pick charges it.
        Keys of the lowest tier able to serve come first, by smooth weighted round-robin.
        `prefer` (a key id: affinity's pin) is taken when it can serve now and is of that
        lowest tier; else the normal pick (the caller compares `Pick.entry.id`).
        One decision (one Redis round trip)."""

    async def release(
        self,
        entry: KeyEntry,
        event: Event,
        until: float | None = None,
        error: str = "",
        ticket: Ticket | None = None,
        budget: list[Announced] | None = None,
    ) -> float | None:
        """Record how a try went: the ticket's usage corrects its estimate, `budget` (what the
        answer's headers announce) lowers the key's windows. A wall-clock time to pause the
        provider until when the pool-wide 429 guard fires."""

    async def ready_in(self, exclude: Iterable[int] = ()) -> float | None:
        """Seconds until a key not in `exclude` is usable (0: now), without taking one."""

    def usable_now(self) -> bool:
        """Whether some key is usable now, from memory (the shared form reads its mirror):
        the cheap test that passes a fallback target over at once."""

    def add(self, entry: KeyEntry) -> None: ...

    async def load_views(self, entries: Iterable[KeyEntry]) -> None:
        """Before `quota_view` of these keys from an admin view: the fleet's windows."""

    def quota_view(self, entry: KeyEntry, now: float) -> QuotaView:
        """The key's quota windows as SPEC §12 shows them."""

    def refresh(self) -> None:
        """The provider's settings changed (per-key quota defaults, the day's reset)."""

    def remove(self, key_id: int) -> KeyEntry | None: ...

    def set_status(
        self, key_id: int, status: str, until: float = 0.0, error: str | None = None
    ) -> KeyEntry | None:
        """Admin or store sync: put a key in a state directly."""

    def due_for_recheck(self) -> list[KeyEntry]: ...

    def counts(self) -> dict[str, int]: ...
