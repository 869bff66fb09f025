"""Per-provider counters with a per-second series for the dashboard, and the recent-requests
record. All in memory; the flusher copies counters to the store in the background."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, NamedTuple

SERIES_SECONDS = 300
_LATENCY_SAMPLES = 64  # per second; enough for p50/p95 on a chart


class RequestRecord(NamedTuple):
    ts: float
    provider: str
    method: str
    path: str
    model: str
    key_id: int | None
    key: str  # masked
    status: int
    latency_ms: float
    retries: int
    error: str
    route: str = ""  # a routed request's targets as tried: "groq/x (429) → cerebras/y"
    translated: str = ""  # `anthropic→openai` when the request changed API family
    client_name: str = ""  # the client key's name (SPEC §13); "" for the password or open

    def public(self) -> dict[str, Any]:
        doc = self._asdict()
        doc["latency_ms"] = round(self.latency_ms, 2)  # here, not per request: round() is slow
        return doc


class Second:
    __slots__ = ("count", "errors", "latencies", "t")

    def __init__(self, t: int) -> None:
        self.t = t
        self.count = 0
        self.errors = 0
        self.latencies: list[float] = []


class ProviderStats:
    """Counters for one provider since start (the store holds the all-time totals)."""

    __slots__ = (
        "affinity",
        "err_4xx",
        "err_5xx",
        "flushed",
        "ok",
        "requests",
        "series",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.err_4xx = 0
        self.err_5xx = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.flushed = (0, 0, 0, 0, 0, 0)
        # answers by what their pick made of the conversation's pin (SPEC §15)
        self.affinity = {"hit": 0, "new": 0, "moved": 0}
        self.series: deque[Second] = deque(maxlen=SERIES_SECONDS)

    def counters(self) -> tuple[int, int, int, int, int, int]:
        return (self.requests, self.ok, self.err_4xx, self.err_5xx, self.tokens_in, self.tokens_out)

    def record(self, status: int, latency_ms: float, now: float) -> None:
        self.requests += 1
        if status < 400:
            self.ok += 1
        elif status < 500:
            self.err_4xx += 1
        else:
            self.err_5xx += 1
        t = int(now)
        series = self.series
        if not series or series[-1].t != t:
            series.append(Second(t))
        sec = series[-1]
        sec.count += 1
        if status >= 400:
            sec.errors += 1
        if len(sec.latencies) < _LATENCY_SAMPLES:
            sec.latencies.append(latency_ms)

    def timeline(self, seconds: int = 120) -> list[dict[str, Any]]:
        """One point per second for the last `seconds`, zeros where nothing happened."""
        now = int(time.time())
        by_t = {s.t: s for s in self.series}
        out: list[dict[str, float | None]] = []
        for t in range(now - seconds + 1, now + 1):
            s = by_t.get(t)
            if s is None:
                out.append({"t": t, "rps": 0, "errors": 0, "p50": None, "p95": None})
                continue
            lat = sorted(s.latencies)
            out.append(
                {
                    "t": t,
                    "rps": s.count,
                    "errors": s.errors,
                    "p50": round(lat[len(lat) // 2], 2) if lat else None,
                    "p95": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 2) if lat else None,
                }
            )
        return out
