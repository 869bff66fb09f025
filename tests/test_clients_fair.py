"""Fair share (SPEC §13) end to end: with `max_conn: 1` and slow answers, client A queues 20
requests and then client B queues 3; B's 3 finish before A's last 10. In one process, and on
two instances sharing Redis (A on one, B on the other: fleet-wide turns)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from harness import eventually
from keygate.testing.mock_upstream import MockUpstream
from servers import RedisServer, redis_bin, start_redis

KEY = "csk-cerebras-fair0001"
SLOW = {"providers": {"cerebras": {"rps": 0, "max_conn": 1, "queue": 100, "queue_timeout_s": 60}}}
MESSAGES: Any = [{"role": "user", "content": "hi"}]


def new_client(gw: Any, name: str) -> str:
    r = gw.api("POST", "/api/clients", json={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def queued(gw: Any) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/healthz", headers=gw.admin()) as r:
        return int((await r.json())["providers"]["cerebras"]["queued"])


async def burst(
    client: openai.AsyncOpenAI, label: str, n: int, done: list[str]
) -> list[asyncio.Task[None]]:
    async def one(i: int) -> None:
        await client.chat.completions.create(model="m", messages=MESSAGES)
        done.append(f"{label}{i}")

    return [asyncio.create_task(one(i)) for i in range(n)]


async def race(gw_a: Any, gw_b: Any, key_a: str, key_b: str) -> list[str]:
    """A's 20 through `gw_a`, then (once they all wait) B's 3 through `gw_b`; completion order."""
    a = openai.AsyncOpenAI(
        base_url=f"{gw_a.url}/cerebras/v1", api_key=key_a, max_retries=0, timeout=60
    )
    b = openai.AsyncOpenAI(
        base_url=f"{gw_b.url}/cerebras/v1", api_key=key_b, max_retries=0, timeout=60
    )
    done: list[str] = []
    tasks = await burst(a, "A", 20, done)
    await until(gw_a, 19, "A's 20: one in flight, 19 waiting")
    tasks += await burst(b, "B", 3, done)
    await until(gw_b, 22 if gw_b is gw_a else 3, "B's 3 waiting too")
    async with asyncio.timeout(60):
        await asyncio.gather(*tasks)
    await a.close()
    await b.close()
    return done


async def until(gw: Any, n: int, what: str) -> None:
    """Poll the gateway's queue length (an async read, so the requests keep going)."""
    seen = [0]

    async def poll() -> None:
        while seen[0] < n:
            seen[0] = await queued(gw)

    try:
        async with asyncio.timeout(10):
            await poll()
    except TimeoutError:
        raise AssertionError(f"not within 10 s: {what} (queued: {seen[0]})") from None


def assert_fair(done: list[str]) -> None:
    assert sorted(done) == sorted([f"A{i}" for i in range(20)] + ["B0", "B1", "B2"])
    print("completion order:", " ".join(done))
    last_b = max(done.index(f"B{i}") for i in range(3))
    a_before = sum(1 for x in done[:last_b] if x.startswith("A"))
    assert a_before <= 10, f"B's last finished after {a_before} of A's: {done}"


def test_fair_share_in_process(gateway_factory: Any, mock: MockUpstream) -> None:
    mock.set_behavior(delay_s=0.08)
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": KEY}, config=SLOW)
    key_a, key_b = new_client(gw, "A"), new_client(gw, "B")
    done = asyncio.run(race(gw, gw, key_a, key_b))
    assert_fair(done)
    assert mock.count() == 23 and mock.peak_inflight <= 1


@pytest.mark.redis
@pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed")
def test_fair_share_across_two_instances_sharing_redis(
    gateway_factory: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    server: RedisServer = start_redis(tmp_path / "redis")
    try:
        mock.set_behavior(delay_s=0.08)
        env = {"CEREBRAS_API_KEYS": KEY, "KEYGATE_REDIS_URL": server.url}
        shared = tmp_path / "shared-data"
        gw1 = gateway_factory(env=env, config=SLOW, data_dir=shared)
        gw2 = gateway_factory(env=env, config=SLOW, data_dir=shared)
        key_a, key_b = new_client(gw1, "A"), new_client(gw1, "B")
        done = asyncio.run(race(gw1, gw2, key_a, key_b))
        assert_fair(done)
    finally:
        server.stop()


@pytest.mark.redis
@pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed")
def test_with_redis_a_change_reaches_the_other_instance_at_once(
    gateway_factory: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    """Through Redis pub/sub, not the once-a-second store poll: well within that second."""
    server: RedisServer = start_redis(tmp_path / "redis")
    try:
        env = {"CEREBRAS_API_KEYS": KEY, "KEYGATE_REDIS_URL": server.url}
        shared = tmp_path / "shared-data"
        gw1 = gateway_factory(env=env, data_dir=shared)
        gw2 = gateway_factory(env=env, data_dir=shared)
        r = gw1.api("POST", "/api/clients", json={"name": "quick"})
        cid, key = r.json()["id"], r.json()["key"]
        other = openai.OpenAI(base_url=f"{gw2.url}/cerebras/v1", api_key=key, max_retries=0)
        added = time.monotonic()
        eventually(lambda: known(gw2) == 1, 5, "the new client reaches the other instance")
        took = time.monotonic() - added
        assert took < 0.5, took
        other.chat.completions.create(model="m", messages=MESSAGES)
        assert gw1.api("PATCH", f"/api/clients/{cid}", json={"enabled": False}).status_code == 200

        def refused() -> bool:
            try:
                other.chat.completions.create(model="m", messages=MESSAGES)
            except openai.AuthenticationError:
                return True
            return False

        disabled = time.monotonic()
        eventually(refused, 5, "disabled on the other instance")
        took = time.monotonic() - disabled
        assert took < 0.5, took
    finally:
        server.stop()


def known(gw: Any) -> int:
    return int(gw.api("GET", "/healthz").json()["clients"])
