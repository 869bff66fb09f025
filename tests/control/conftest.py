"""Control-form fixtures, parametrized so every contract test runs against each form.

`local` is the in-process form; `redis` is the Redis form (its Lua scripts) against a real
redis-server, one per session, flushed before each test. Key-pool tests drive both with one fake
wall clock (the Redis form passes it to its scripts as "now"); admission tests run in real time.
To add a form: write a `Form` subclass and name it in CONTROL_FORMS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from keygate.config.settings import ProviderConfig
from keygate.control.base import Limits
from keygate.control.keypool import KeyEntry
from keygate.control.local import LocalAdmission, LocalKeyPool
from keygate.control.redis import SharedAdmission, SharedKeyPool, SharedState
from servers import RedisServer, redis_bin, start_redis

T0 = 1_000_000.0


class Clock:
    """A wall clock that moves only when told."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def provider(name: str = "t", **cfg: Any) -> ProviderConfig:
    return ProviderConfig(name=name, base_url="http://127.0.0.1:9", **cfg)


def limits_of(cfg: ProviderConfig) -> Limits:
    return Limits(cfg.rps, cfg.burst, cfg.max_conn, cfg.queue, cfg.queue_timeout_s)


class Form:
    name = ""

    def __init__(self) -> None:
        self.clock = Clock()

    async def start(self) -> None:
        pass

    async def settle(self) -> None:
        """Every event announced so far has been heard (the Redis form's pub/sub)."""

    async def close(self) -> None:
        pass

    def make_pool(self, cfg: ProviderConfig) -> Any:
        raise NotImplementedError

    def admission(self, **cfg: Any) -> Any:
        raise NotImplementedError

    async def pool(self, n: int = 3, name: str = "t", **cfg: Any) -> Any:
        """A provider's pool with keys 1..n, all active."""
        pool = self.make_pool(provider(name, **cfg))
        for i in range(1, n + 1):
            pool.add(KeyEntry(i, name, f"sk-contract-{i:04d}-secret"))
        return pool


class LocalForm(Form):
    name = "local"

    def make_pool(self, cfg: ProviderConfig) -> Any:
        return LocalKeyPool(cfg, self.clock)

    def admission(self, **cfg: Any) -> Any:
        return LocalAdmission(limits_of(provider("a", **cfg)))


class RedisForm(Form):
    name = "redis"

    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server = server
        self.state = SharedState(server.url + "?timeout_s=2", clock=self.clock)

    async def start(self) -> None:
        self.client = redis.Redis(port=self.server.port)
        self.client.flushall()
        heard = self._heard = asyncio.Event()
        dispatch = self.state._dispatch

        def spy(channel: bytes, data: bytes) -> None:
            if data == b'{"t":"settle"}':
                heard.set()
            else:
                dispatch(channel, data)

        self.state._dispatch = spy  # type: ignore[method-assign]
        await self.state.start()
        assert self.state.up, self.state.reason

    async def settle(self) -> None:
        self._heard.clear()
        self.client.publish("keygate:events", b'{"t":"settle"}')
        async with asyncio.timeout(5):
            await self._heard.wait()

    async def close(self) -> None:
        await self.state.close()

    def make_pool(self, cfg: ProviderConfig) -> Any:
        return SharedKeyPool(cfg, self.state)

    def admission(self, **cfg: Any) -> Any:
        pcfg = provider(f"a{len(self.state.admissions)}", **cfg)
        return SharedAdmission(limits_of(pcfg), pcfg, self.state)


CONTROL_FORMS = [
    "local",
    pytest.param(
        "redis",
        marks=[
            pytest.mark.redis,
            pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed"),
        ],
    ),
]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=CONTROL_FORMS)
async def form(request: pytest.FixtureRequest) -> AsyncIterator[Form]:
    f: Form = (
        RedisForm(request.getfixturevalue("redis_server"))
        if request.param == "redis"
        else LocalForm()
    )
    await f.start()
    try:
        yield f
    finally:
        await f.close()


def wall() -> float:
    return time.time()
