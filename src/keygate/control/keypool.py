"""A pool's keys as every form of traffic control sees them: the entry, its masked view.

Health states: active → cooling (until T, back by itself) | invalid (re-checked) | exhausted
(long cooldown, re-checked) | disabled (admin). The local form (`control.local.keypool`) and the
Redis form (`control.redis.keypool`) run the same state machine on these entries.
"""

from __future__ import annotations

import time
from typing import Protocol

from keygate.config.quotaday import DEFAULT_DAY_RESET
from keygate.control.quota import KeyQuota
from keygate.masking import mask

POOL_GUARD_WINDOW_S = 10.0


class KeyEntry:
    """One key as the running gateway knows it: secret, health, per-key limits, counters."""

    __slots__ = (
        "created_at",
        "cw",
        "err_4xx",
        "err_5xx",
        "flushed",
        "id",
        "in_ring",
        "inflight",
        "label",
        "last_error",
        "last_used",
        "masked",
        "max_conn",
        "ok",
        "own",
        "provider",
        "quota",
        "rpd",
        "rph",
        "rpm",
        "secret",
        "source",
        "status",
        "strikes",
        "tier",
        "tokens_in",
        "tokens_out",
        "tpd",
        "tph",
        "tpm",
        "until",
        "use_count",
        "weight",
    )

    def __init__(
        self,
        id: int,
        provider: str,
        secret: str,
        *,
        label: str = "",
        status: str = "active",
        until: float = 0.0,
        last_error: str = "",
        source: str = "api",
        created_at: float = 0.0,
        rpm: int = 0,
        max_conn: int = 0,
        use_count: int = 0,
        last_used: float = 0.0,
        tier: int = 0,
        weight: int = 1,
    ) -> None:
        self.id = id
        self.provider = provider
        self.secret = secret
        self.masked = mask(secret)
        self.label = label
        self.status = status
        self.until = until
        self.last_error = last_error
        self.source = source
        self.created_at = created_at or time.time()
        self.max_conn = max_conn
        self.tier = tier  # lower tiers are spent first (SPEC §15)
        self.weight = weight  # its share inside its tier
        self.cw = 0  # smooth weighted round-robin: the key's current weight
        self.quota: KeyQuota | None = None  # windows, once a limit applies or is announced
        self.set_limits((rpm, 0, 0, 0, 0, 0))
        self.strikes = 0
        self.inflight = 0
        self.in_ring = False
        self.use_count = use_count
        self.last_used = last_used
        self.ok = 0
        self.err_4xx = 0
        self.err_5xx = 0
        self.tokens_in = 0
        self.tokens_out = 0
        # counter values at the last flush, so the flusher writes deltas
        self.flushed: tuple[int, int, int, int, int, int] = (use_count, 0, 0, 0, 0, 0)

    def set_limits(self, limits: tuple[int, int, int, int, int, int]) -> None:
        """The key's own quota limits (rpm, rph, rpd, tpm, tph, tpd; 0 = the provider's)."""
        self.rpm, self.rph, self.rpd, self.tpm, self.tph, self.tpd = limits
        self.own = limits if any(limits) else None
        if self.own is not None and self.quota is None:
            self.quota = KeyQuota()

    def limits(self) -> tuple[int, int, int, int, int, int]:
        return (self.rpm, self.rph, self.rpd, self.tpm, self.tph, self.tpd)

    def counters(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.use_count,
            self.ok,
            self.err_4xx,
            self.err_5xx,
            self.tokens_in,
            self.tokens_out,
        )


class PoolSettings(Protocol):
    """The slice of provider settings the pool reads (live object, changed at run time)."""

    cooldown_s: float
    exhausted_cooldown_s: float
    recheck_interval_s: float
    key_rpm: int
    key_rph: int
    key_rpd: int
    key_tpm: int
    key_tph: int
    key_tpd: int
    key_max_conn: int
    quota_day_reset: str = DEFAULT_DAY_RESET


def default_limits(cfg: PoolSettings) -> tuple[int, int, int, int, int, int]:
    """A provider's per-key quota defaults, in the order of `quota.WINDOWS`."""
    return (cfg.key_rpm, cfg.key_rph, cfg.key_rpd, cfg.key_tpm, cfg.key_tph, cfg.key_tpd)
