"""One provider as the request path sees it: its config, dialect, limits, key pool and counters,
prepared once (and again on reload). Below the gateway so that the parts that keep it in step
(store sync, re-checks, the admin views) need not import the gateway."""

from __future__ import annotations

import aiohttp

from keygate.config.settings import ProviderConfig
from keygate.control.base import Admission, KeyPool, Limits
from keygate.control.local import LocalAdmission, LocalKeyPool
from keygate.control.redis import SharedAdmission, SharedKeyPool, SharedState
from keygate.dialects import Dialect, dialect_for
from keygate.observe.stats import ProviderStats
from keygate.runtime.egress import Egress


class ProviderRuntime:
    """Everything the request path needs about one provider, prepared once."""

    __slots__ = ("admission", "cfg", "dialect", "egress", "pool", "stats", "timeout")

    def __init__(
        self, cfg: ProviderConfig, fleet_size: int = 1, shared: SharedState | None = None
    ) -> None:
        self.cfg = cfg
        self.egress: Egress | None = None  # SPEC §16 proxies; None: the gateway's session
        self.dialect: Dialect = dialect_for(cfg.key_style)  # resolved once, again on reload
        # The form is chosen once: shared (Redis) when configured, its local fallback underneath.
        if shared is None:
            self.admission: Admission = LocalAdmission(self.limits(fleet_size))
            self.pool: KeyPool = LocalKeyPool(cfg)
        else:
            self.admission = SharedAdmission(self.limits(fleet_size), cfg, shared)
            self.pool = SharedKeyPool(cfg, shared)
        self.stats = ProviderStats()
        self.timeout = self._timeout()

    def limits(self, fleet_size: int = 1) -> Limits:
        cfg = self.cfg
        share = max(1, fleet_size)
        return Limits(
            rps=cfg.rps / share,
            burst=max(1, cfg.burst // share) if cfg.burst else 0,
            max_conn=max(1, cfg.max_conn // share) if cfg.max_conn else 0,
            queue=cfg.queue,
            queue_timeout_s=cfg.queue_timeout_s,
        )

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=self.cfg.timeout_connect_s, sock_read=None
        )

    def reconfigure(self, fleet_size: int = 1) -> None:
        self.admission.configure(self.limits(fleet_size))
        self.pool.refresh()
        self.timeout = self._timeout()
        self.dialect = dialect_for(self.cfg.key_style)
