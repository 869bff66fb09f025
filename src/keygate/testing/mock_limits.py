"""Per-key rate limits the mock enforces and announces the way providers do (SPEC §12).

Each limited key has a fixed window (starting with its first request) of at most `requests`
requests and `tokens` tokens (the usage the mock reports: body bytes / 4 + answer text / 4). Over
either, the answer is a 429 with `retry-after`; every answer carries the budget headers of its
`style`: OpenAI/Groq `x-ratelimit-*-{requests,tokens}`, Cerebras `-requests-day` and
`-tokens-minute`, Anthropic `anthropic-ratelimit-*`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

STYLES = ("openai", "cerebras", "anthropic")


@dataclass
class KeyLimit:
    requests: int = 0  # 0: no limit
    tokens: int = 0
    window_s: float = 60.0
    style: str = "openai"
    announce: bool = True
    # the window's state
    start: float = 0.0
    used_requests: int = 0
    used_tokens: int = 0
    refused: int = field(default=0)  # 429s answered for this key

    def roll(self, now: float) -> None:
        if now >= self.start + self.window_s:
            self.start = now
            self.used_requests = self.used_tokens = 0

    def admit(self, tokens: int, now: float) -> bool:
        """Count the request if it fits the window (as providers do, on arrival)."""
        self.roll(now)
        if self.requests and self.used_requests >= self.requests:
            return False
        if self.tokens and self.used_tokens + tokens > self.tokens:
            return False
        self.used_requests += 1
        self.used_tokens += tokens
        return True

    def headers(self, now: float) -> dict[str, str]:
        if not self.announce:
            return {}
        reset_in = max(0.0, self.start + self.window_s - now)
        left_r = max(0, self.requests - self.used_requests)
        left_t = max(0, self.tokens - self.used_tokens)
        out: dict[str, str] = {}
        if self.style == "anthropic":
            at = datetime.fromtimestamp(self.start + self.window_s, UTC).isoformat()
            at = at.replace("+00:00", "Z")
            if self.requests:
                out["anthropic-ratelimit-requests-limit"] = str(self.requests)
                out["anthropic-ratelimit-requests-remaining"] = str(left_r)
                out["anthropic-ratelimit-requests-reset"] = at
            if self.tokens:
                out["anthropic-ratelimit-tokens-limit"] = str(self.tokens)
                out["anthropic-ratelimit-tokens-remaining"] = str(left_t)
                out["anthropic-ratelimit-tokens-reset"] = at
            return out
        r_suffix, t_suffix = ("requests-day", "tokens-minute")
        if self.style == "openai":
            r_suffix, t_suffix = ("requests", "tokens")
        reset = f"{reset_in:.3f}" if self.style == "cerebras" else f"{reset_in:.3f}s"
        if self.requests:
            out[f"x-ratelimit-limit-{r_suffix}"] = str(self.requests)
            out[f"x-ratelimit-remaining-{r_suffix}"] = str(left_r)
            out[f"x-ratelimit-reset-{r_suffix}"] = reset
        if self.tokens:
            out[f"x-ratelimit-limit-{t_suffix}"] = str(self.tokens)
            out[f"x-ratelimit-remaining-{t_suffix}"] = str(left_t)
            out[f"x-ratelimit-reset-{t_suffix}"] = reset
        return out

    def retry_after(self, now: float) -> str:
        return f"{max(0.001, self.start + self.window_s - now):.3f}"


def tokens_of(body: bytes, text: str) -> int:
    """The usage the mock's answers report (see mock_wire._tokens)."""
    return max(1, len(body) // 4) + max(1, len(text.encode()) // 4)


def now() -> float:
    return time.time()
