"""The state interface: what the request path asks of traffic control, in local or shared form.

The request path sees only these shapes. `control.local` implements them in process memory;
`control.shared` (Redis) implements the same so many instances share one set of limits. The
form is picked once at start-up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


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


KEY_STATES = ("active", "cooling", "invalid", "exhausted", "disabled")


@dataclass(frozen=True, slots=True)
class Limits:
    rps: float
    burst: int
    max_conn: int
    queue: int
    queue_timeout_s: float


class Slot(Protocol):
    async def release(self) -> None:
        """Give the slot back; idempotent, called on every exit path."""


class Admission(Protocol):
    """Token bucket + max-in-flight gate + bounded FIFO queue for one provider."""

    async def acquire(self) -> Slot:
        """Wait in FIFO order for a token and a free slot; raises `Rejected` on full or timeout."""

    def configure(self, limits: Limits) -> None: ...

    def pause_until(self, until: float) -> None:
        """Hold every admission until wall-clock `until` (the pool-wide 429 guard)."""

    def snapshot(self) -> dict[str, float]: ...
