"""Token bucket arithmetic, kept pure so tests drive it with a fake clock."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second into a bucket of `burst`; rate 0 means unlimited."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = now

    def reconfigure(self, rate: float, burst: int, now: float) -> None:
        self._refill(now)
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = min(self.tokens, float(self.burst))

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token if there is one and return 0; else return seconds until there is one."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def peek(self, now: float) -> float:
        """Seconds until a token is available, without taking it."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate
