"""Following the master under Redis Sentinel (SPEC §21): every (re)connect asks the sentinels
where the master is, and while connected they are asked once a second whether it moved (a
demoted master still answers PING), so an idle instance follows a switch too."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from keygate.control.redis.connection import RedisTarget

PROBE_S = 1.0  # how often the sentinels are asked while connected


class SentinelFollow:
    """Mixin of `SharedState`: where to connect, and the watch for a moved master."""

    target: RedisTarget
    timeout_s: float
    up: bool
    master: str
    _sentinels: Any
    _ps_client: Any
    _ps_address: str
    _moved: bool

    if TYPE_CHECKING:

        def fail(self, reason: str) -> None: ...

    async def _locate(self) -> RedisTarget:
        """The target to connect to: under Sentinel, the master the sentinels name now (the
        pub/sub client moves with it)."""
        spec = self.target.sentinel
        if spec is None or self._sentinels is None:
            return self.target
        host, port = await self._sentinels.discover_master(spec.master)
        address = f"{host}:{port}"
        if self._ps_client is None or address != self._ps_address:
            old, self._ps_client = self._ps_client, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.aclose()
            self._ps_client = self.target.at(host, int(port)).client()
            self._ps_address = address
        return self.target.at(host, int(port))

    async def _follow(self) -> None:
        """Under Sentinel, while connected: ask once a second where the master is, so an idle
        instance follows a switch too (a demoted master keeps its connections open)."""
        spec = self.target.sentinel
        assert spec is not None and self._sentinels is not None
        while True:
            await asyncio.sleep(PROBE_S)
            if not self.up:
                continue  # the probe asks the sentinels itself
            try:
                async with asyncio.timeout(self.timeout_s * 2):
                    host, port = await self._sentinels.discover_master(spec.master)
            except asyncio.CancelledError:
                raise
            except Exception:
                continue  # mid-failover, or a sentinel away: the connection tells
            address = f"{host}:{port}"
            if self.up and address != self.master:
                self._moved = True
                self.fail(f"Sentinel: the master moved from {self.master} to {address}")
