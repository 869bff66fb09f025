"""Whether one provider gets another try after a failed one, and how long to wait first.

Two allowances (SPEC §5): a dead key (invalid, out of quota) is swapped for another at once, on
a small allowance of its own, so a few dead keys never fail a client; a 429, 5xx, 529, timeout
or refused connection spends the retry budget, with exponential backoff and jitter unless
another key is ready now, and never waking before the upstream's own reset hint.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from keygate.control.base import Event
from keygate.control.classify import Verdict

if TYPE_CHECKING:
    from keygate.config.settings import ProviderConfig
    from keygate.control.base import KeyPool

sleep = asyncio.sleep  # the wait between tries (a test puts a fake clock's here)


def backoff(base: float, n: int) -> float:
    """Exponential with jitter: base·2ⁿ scaled by a random factor in [0.5, 1.0]."""
    return base * 2.0**n * (0.5 + random.random() / 2)


class Retries:
    """One provider's tries for one request: the keys tried, what each allowance has left."""

    __slots__ = ("budget", "cfg", "key_swaps", "spent", "tried")

    def __init__(self, cfg: ProviderConfig, budget: int) -> None:
        self.cfg = cfg
        self.budget = budget
        self.tried: list[int] = []
        self.spent = 0
        self.key_swaps = 0

    async def after(self, verdict: Verdict, key_id: int, pool: KeyPool) -> float | None:
        """Seconds to wait before the next try after a retryable `verdict` on key `key_id`;
        None: no more tries here (the caller answers, or moves on to the next target)."""
        cfg = self.cfg
        if cfg.retries == 0:
            return None
        delay = 0.0
        if verdict.key_fault and verdict.event is not Event.RATE_LIMITED:
            if self.key_swaps >= cfg.retries + 2:
                return None
            self.key_swaps += 1
        else:
            if self.spent >= self.budget:
                return None
            self.spent += 1
            if verdict.key_fault and await pool.ready_in([*self.tried, key_id]) == 0.0:
                delay = 0.0  # a rate-limited key: another key is ready now
            else:
                # a hint is a wall-clock moment: wake just after it, never just before
                until = verdict.until
                hinted = (until - time.time() + 0.02) if until else 0.0
                delay = max(backoff(cfg.backoff_base_s, self.spent - 1), hinted)
        if delay > cfg.retry_after_max_s:
            return None
        self.tried.append(key_id)
        return delay
