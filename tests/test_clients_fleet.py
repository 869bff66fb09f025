"""Client limits shared by the fleet (SPEC §13): the script's windows against a real
redis-server with exact times passed in, two instances' memories deciding as one, the local
windows taking over when Redis goes away; and two keygate processes on one Redis letting a
client spend its rpd once, not once per instance."""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from harness import eventually, eventually_async
from keygate.clients.fleet import ClientLimits, Reservation
from keygate.clients.limits import Windows
from keygate.control.redis import SharedState
from keygate.testing.mock_upstream import MockUpstream
from servers import RedisServer, redis_bin, start_redis

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed"),
]

NOON = float(calendar.timegm((2026, 12, 15, 12, 0, 0)))  # 12 h before the day ends
LAST_MINUTE = float(calendar.timegm((2026, 12, 31, 23, 59, 0)))  # 60 s before the month ends


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeClient:
    """One instance's view of a client: its limits and its own windows."""

    def __init__(self, cid: int, rpm: int = 0, rpd: int = 0, tpd: int = 0, monthly: int = 0):
        self.id, self.rpm, self.rpd, self.tpd, self.monthly_tokens = cid, rpm, rpd, tpd, monthly
        self.windows = Windows()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
async def fleet(
    redis_server: RedisServer,
) -> AsyncIterator[tuple[Clock, ClientLimits, ClientLimits]]:
    """Two instances (each its own connection and memory) on one Redis, one fake clock."""
    clock = Clock(NOON)
    states = [
        SharedState(redis_server.url + "?timeout_s=0.3", fleet_size=2, clock=clock)
        for _ in range(2)
    ]
    for st in states:
        await st.start()
        assert st.up, st.reason
    yield clock, ClientLimits(states[0]), ClientLimits(states[1])
    for st in states:
        await st.close()


async def test_tpd_is_one_budget_for_both_instances_and_corrections_count(fleet: Any) -> None:
    clock, a, b = fleet
    ca, cb = FakeClient(1, tpd=100), FakeClient(1, tpd=100)
    first = await a.check(ca, 60)
    assert first == Reservation(60, True)
    assert await b.check(cb, 60) == ("tpd", pytest.approx(43200.0))  # 60 + 60 > 100
    a.settle(ca, first, 10)  # the answer used 10: written without waiting
    assert await a.check(ca, 60) == Reservation(60, True)  # same connection: after the fix
    assert await b.check(cb, 31) == ("tpd", pytest.approx(43200.0))  # 70 + 31 > 100
    assert await b.check(cb, 30) == Reservation(30, True)
    assert cb.windows.day_tokens == 100 and cb.windows.day_requests == 3  # mirrored locally
    clock.t = NOON + 43200.0  # the next UTC day
    assert await b.check(cb, 100) == Reservation(100, True)


async def test_monthly_tokens_span_days_and_reset_with_the_month(fleet: Any) -> None:
    clock, a, b = fleet
    ca, cb = FakeClient(2, monthly=100), FakeClient(2, monthly=100)
    clock.t = LAST_MINUTE - 86400.0  # Dec 30
    assert await a.check(ca, 50) == Reservation(50, True)
    clock.t = LAST_MINUTE  # Dec 31: a new day, the same month
    assert await b.check(cb, 50) == Reservation(50, True)
    assert await a.check(ca, 1) == ("monthly_tokens", pytest.approx(60.0))
    clock.t = LAST_MINUTE + 61.0  # 2027-01-01
    assert await a.check(ca, 100) == Reservation(100, True)


async def test_rpm_slides_across_instances(fleet: Any) -> None:
    clock, a, b = fleet
    ca, cb = FakeClient(3, rpm=2), FakeClient(3, rpm=2)
    assert await a.check(ca, 0) == Reservation(0, True)
    clock.t = NOON + 10
    assert await b.check(cb, 0) == Reservation(0, True)
    clock.t = NOON + 20
    assert await a.check(ca, 0) == ("rpm", pytest.approx(40.0))
    assert await b.check(cb, 0) == ("rpm", pytest.approx(40.0))
    clock.t = NOON + 60.5  # the first request slid out
    assert await b.check(cb, 0) == Reservation(0, True)
    assert await a.check(ca, 0) == ("rpm", pytest.approx(9.5))


async def test_keys_expire_after_their_window(fleet: Any, redis_server: RedisServer) -> None:
    _, a, _ = fleet
    assert await a.check(FakeClient(4, rpm=5, rpd=5), 7) == Reservation(7, True)
    r = aioredis.from_url(redis_server.url)
    try:
        keys = sorted(k.decode() for k in await r.keys("keygate:client:*"))
        assert keys == [
            "keygate:client:{4}:d:2026-12-15",
            "keygate:client:{4}:m:2026-12",
            "keygate:client:{4}:rpm",
        ]
        assert 0 < await r.ttl(keys[2]) <= 61
        assert 43200 < await r.ttl(keys[0]) <= 43200 + 60  # the day's end, plus a minute
        month_left = calendar.timegm((2027, 1, 1, 0, 0, 0)) - NOON
        assert month_left < await r.ttl(keys[1]) <= month_left + 60
        assert await r.hgetall(keys[0]) == {b"r": b"1", b"t": b"7"}
    finally:
        await r.aclose()


async def test_no_round_trip_without_limits(fleet: Any) -> None:
    """A client without limits is counted locally only: Redis is never asked."""
    _, a, _ = fleet

    async def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("no Redis call for a client without limits")

    a.shared.run = refuse
    assert await a.check(FakeClient(5), 10**9) == Reservation(10**9, False)


async def test_when_redis_goes_away_the_local_windows_go_on_from_the_fleets_counts(
    fleet: Any, redis_server: RedisServer
) -> None:
    _, a, b = fleet
    ca, cb = FakeClient(6, rpd=3), FakeClient(6, rpd=3)
    assert await a.check(ca, 0) == Reservation(0, True)
    assert await b.check(cb, 0) == Reservation(0, True)  # Redis says 2 today
    redis_server.stop()
    await eventually_async(lambda: not b.shared.up, 5, "the instance sees Redis gone")
    assert await b.check(cb, 0) == Reservation(0, False)  # 3 of 3, counted locally
    assert await b.check(cb, 0) == ("rpd", pytest.approx(43200.0))


# --- two keygate processes ------------------------------------------------------------------
KEY = "csk-cerebras-fleet0001"
NO_WAIT = {"providers": {"cerebras": {"rps": 0, "max_conn": 0}}}
MESSAGES: Any = [{"role": "user", "content": "hi"}]


def test_a_clients_rpd_is_spent_once_across_two_instances(
    gateway_factory: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    server: RedisServer = start_redis(tmp_path / "redis")
    try:
        env = {"CEREBRAS_API_KEYS": KEY, "KEYGATE_REDIS_URL": server.url}
        shared = tmp_path / "shared-data"
        gws = [gateway_factory(env=env, config=NO_WAIT, data_dir=shared) for _ in range(2)]
        r = gws[0].api("POST", "/api/clients", json={"name": "five", "rpd": 5})
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        eventually(
            lambda: gws[1].api("GET", "/healthz").json()["clients"] == 1,
            5,
            "the other instance knows the client",
        )
        outcomes = asyncio.run(burst([gw.url for gw in gws], key, 12))
        assert sorted(outcomes) == [200] * 5 + [429] * 7, outcomes
        assert mock.count() == 5
        until_midnight = 86400 - time.time() % 86400
        for gw in gws:  # refused on either, in the SDK's shape, with Retry-After
            client = openai.OpenAI(base_url=f"{gw.url}/cerebras/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.RateLimitError) as exc:
                client.chat.completions.create(model="m", messages=MESSAGES)
            assert exc.value.code == "client_quota_exceeded"
            assert abs(int(exc.value.response.headers["retry-after"]) - until_midnight) < 5
        assert mock.count() == 5
    finally:
        server.stop()


async def burst(urls: list[str], key: str, n: int) -> list[int]:
    """`n` requests at once, alternating between the instances; each one's status."""
    clients = [
        openai.AsyncOpenAI(base_url=f"{u}/cerebras/v1", api_key=key, max_retries=0, timeout=10)
        for u in urls
    ]

    async def one(i: int) -> int:
        try:
            await clients[i % len(clients)].chat.completions.create(model="m", messages=MESSAGES)
        except openai.RateLimitError as exc:
            assert exc.code == "client_quota_exceeded"
            return 429
        return 200

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for c in clients:
            await c.close()
