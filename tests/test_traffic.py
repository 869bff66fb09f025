"""Traffic control end to end, in real time: a real keygate, the mock upstream recording what
reached it. These prove the wiring; the exact arithmetic is in test_control_units.py."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import httpx
import pytest

from harness import CHAT, admission, eventually, eventually_async, fire, idle

KEYS = ["sk-traffic-aaaa0001", "sk-traffic-bbbb0002", "sk-traffic-cccc0003"]


def cfg(**cerebras: Any) -> dict[str, Any]:
    return {"providers": {"cerebras": {"retries": 2, "backoff_base_s": 0.05, **cerebras}}}


def keys_env(keys: list[str] = KEYS) -> dict[str, str]:
    return {"CEREBRAS_API_KEYS": ",".join(keys)}


def post(gw: Any, body: dict[str, Any] | None = None, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/cerebras/v1/chat/completions",
        json=body or CHAT,
        headers=gw.auth(),
        timeout=timeout,
    )


def keys_state(gw: Any) -> dict[str, str]:
    r = gw.api("GET", "/api/keys", params={"provider": "cerebras"})
    assert r.status_code == 200, r.text
    return {k["masked"]: k["status"] for k in r.json()["keys"]}


@pytest.mark.slow
async def test_rate_never_exceeds_burst_plus_rate_and_burst_goes_at_once(
    gateway_factory: Any, mock: Any
) -> None:
    rps, burst, n = 10.0, 5, 40
    gw = gateway_factory(
        env=keys_env(), config=cfg(rps=rps, burst=burst, max_conn=0, queue=500, queue_timeout_s=30)
    )
    statuses = await fire(gw, n)
    assert statuses == [200] * n
    arrivals = sorted(r.started for r in mock.records())
    assert len(arrivals) == n
    t0 = arrivals[0]
    assert arrivals[burst - 1] - t0 < 0.15, "the first `burst` requests go out at once"
    for i, t in enumerate(arrivals, start=1):
        allowed = burst + rps * (t - t0)
        assert i <= allowed + 0.5, f"request {i} at +{t - t0:.3f}s exceeds {allowed:.2f}"
    elapsed = arrivals[-1] - t0
    # and the limiter does not starve: close to (n - burst) / rps
    assert elapsed < (n - burst) / rps * 1.25 + 0.2
    print(f"{n} requests, rps={rps} burst={burst}: {elapsed:.3f}s (ideal {(n - burst) / rps:.3f}s)")


@pytest.mark.slow
async def test_max_conn_holds_with_long_streams_disconnects_and_failures(
    gateway_factory: Any, mock: Any
) -> None:
    max_conn = 3
    gw = gateway_factory(
        env=keys_env(),
        config=cfg(
            rps=0, max_conn=max_conn, queue=100, retries=0, timeout_first_byte_s=1, timeout_idle_s=1
        ),
    )
    mock.set_behavior(None, chunks=8, chunk_interval_s=0.15)
    mock.reset_peak()

    async def stream(disconnect_after: int | None) -> str:
        async with aiohttp.ClientSession() as s:
            body = {**CHAT, "stream": True}
            async with s.post(
                f"{gw.url}/cerebras/v1/chat/completions", json=body, headers=gw.auth()
            ) as r:
                if r.status != 200:
                    return str(r.status)
                n = 0
                async for _ in r.content.iter_any():
                    n += 1
                    if disconnect_after is not None and n >= disconnect_after:
                        return "left"
                return "done"

    results = await asyncio.gather(*(stream(2 if i % 3 == 0 else None) for i in range(12)))
    assert results.count("done") == 8 and results.count("left") == 4
    assert 1 <= mock.peak_inflight <= max_conn, mock.peak_inflight

    # a storm: upstream errors, hangs past the timeout, clients that give up while queued
    mock.push(None, times=4, status=500)
    mock.push(None, times=3, hang=True)

    async def impatient() -> None:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.post(
                    f"{gw.url}/cerebras/v1/chat/completions",
                    json=CHAT,
                    headers=gw.auth(),
                    timeout=aiohttp.ClientTimeout(total=0.3),
                ) as r:
                    await r.read()
            except (TimeoutError, aiohttp.ClientError):
                pass

    await asyncio.gather(fire(gw, 10), *(impatient() for _ in range(6)))
    # the impatient clients' requests finish (or time out upstream) after they left
    eventually(lambda: idle(gw, "cerebras"), 10, "every slot and queue place came back")
    eventually(lambda: mock.inflight == 0, 5, "the upstream has no request left in flight")
    assert mock.peak_inflight <= max_conn
    mock.set_behavior(None)
    assert await fire(gw, max_conn * 2) == [200] * (max_conn * 2), "every slot came back"


async def test_401_key_is_never_used_again_and_client_gets_200(
    gateway_factory: Any, mock: Any
) -> None:
    bad = KEYS[0]
    mock.set_behavior(bad, status=401)
    gw = gateway_factory(env=keys_env(), config=cfg(rps=0, max_conn=0))
    assert await fire(gw, 12) == [200] * 12
    first_401 = min(r.ended for r in mock.records() if r.key == bad)
    later = [r for r in mock.records() if r.started > first_401 + 0.05]
    assert all(r.key != bad for r in later), "a key that answered 401 was used again"
    assert [post(gw).status_code for _ in range(6)] == [200] * 6
    assert mock.records()[-1].key != bad and all(r.key != bad for r in mock.records()[-6:])
    assert (
        keys_state(gw)[
            next(k for k in keys_state(gw) if k.startswith(bad[:4]) and k.endswith(bad[-4:]))
        ]
        == "invalid"
    )


async def test_quota_exhausted_key_is_set_aside(gateway_factory: Any, mock: Any) -> None:
    broke = KEYS[1]
    mock.set_behavior(
        broke,
        status=429,
        body={
            "error": {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            }
        },
    )
    # round-robin over the same request: no key affinity (SPEC §15) to keep it on one key
    gw = gateway_factory(env=keys_env(), config=cfg(rps=0, max_conn=0, affinity="off"))
    assert [post(gw).status_code for _ in range(9)] == [200] * 9
    assert mock.count(broke) == 1
    states = keys_state(gw)
    assert sorted(states.values()) == ["active", "active", "exhausted"]


@pytest.mark.slow
async def test_429_with_retry_after_cools_key_for_that_long(
    gateway_factory: Any, mock: Any
) -> None:
    hot = KEYS[0]
    gw = gateway_factory(env=keys_env(KEYS[:2]), config=cfg(rps=0, max_conn=0, affinity="off"))
    mock.push(hot, status=429, headers={"Retry-After": "1"})
    start = time.time()
    used: list[tuple[float, str]] = []
    while time.time() - start < 2.0:
        assert post(gw).status_code == 200
        used.append((time.time() - start, mock.records()[-1].key))
        await asyncio.sleep(0.05)  # paces the probes over the 2 s the test watches
    hot_uses = [t for t, k in used if k == hot]
    assert all(t > 0.9 for t in hot_uses), f"cooling key used too early: {hot_uses}"
    assert any(t > 1.0 for t in hot_uses), "the key came back after its Retry-After"


async def test_retries_switch_keys_and_stop_at_the_limit(gateway_factory: Any, mock: Any) -> None:
    gw = gateway_factory(env=keys_env(), config=cfg(rps=0, max_conn=0, retries=2))
    mock.set_behavior(None, status=503)
    r = post(gw)
    assert r.status_code == 503
    assert r.headers.get("x-should-retry") == "false"
    tries = mock.records()
    assert len(tries) == 3, "1 try + 2 retries"
    assert len({t.key for t in tries}) == 3, "each retry on a different key"


@pytest.mark.slow
async def test_retry_respects_retry_after_on_the_only_key(gateway_factory: Any, mock: Any) -> None:
    only = KEYS[0]
    gw = gateway_factory(env=keys_env([only]), config=cfg(rps=0, max_conn=0))
    mock.push(only, status=429, headers={"Retry-After": "1"})
    r = post(gw)
    assert r.status_code == 200
    first, second = mock.records()
    assert second.started - first.started >= 0.95


async def test_no_retry_after_streaming_began(gateway_factory: Any, mock: Any) -> None:
    gw = gateway_factory(env=keys_env(), config=cfg(rps=0, max_conn=0))
    mock.push(None, chunks=6, reset_after_chunks=2)
    got = b""
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream(
            "POST",
            f"{gw.url}/cerebras/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=gw.auth(),
            timeout=10,
        ) as r,
    ):
        for chunk in r.iter_raw():
            got += chunk
    assert got.startswith(b"data: "), "the stream had begun when the upstream broke it"
    # once the gateway is done with the request, any retry would already have been sent
    eventually(lambda: idle(gw, "cerebras"), 5, "the gateway finished the broken stream")
    assert mock.count() == 1, "a stream that already started is never retried"
    assert post(gw).status_code == 200


async def test_full_queue_answers_429_at_once_and_cancelled_waiter_never_goes_upstream(
    gateway_factory: Any, mock: Any
) -> None:
    gw = gateway_factory(env=keys_env(), config=cfg(rps=0, max_conn=1, queue=1, queue_timeout_s=10))
    mock.set_behavior(None, delay_s=1.5)
    holder = threading.Thread(target=post, args=(gw,))
    holder.start()
    await eventually_async(lambda: mock.count() == 1, 5, "the first request holds the only slot")

    async with aiohttp.ClientSession() as s:
        queued = asyncio.create_task(
            s.post(
                f"{gw.url}/cerebras/v1/chat/completions",
                json={**CHAT, "model": "queued"},
                headers=gw.auth(),
            )
        )
        await eventually_async(
            lambda: admission(gw, "cerebras")["queued"] == 1, 5, "the second request is queued"
        )
        started = time.monotonic()
        r = post(gw)
        assert time.monotonic() - started < 0.5
        assert r.status_code == 429
        assert r.headers["content-type"].startswith("application/json")
        assert int(r.headers["retry-after"]) >= 1 and "retry-after-ms" in r.headers
        assert r.json()["error"]["type"] == "rate_limit_error"
        queued.cancel()
    holder.join()
    # A waiter still queued would take the freed slot ahead of this request (first come,
    # first served) and so reach the upstream before it.
    mock.set_behavior(None)
    assert post(gw).status_code == 200
    eventually(lambda: idle(gw, "cerebras"), 5, "every slot and queue place came back")
    assert [b'"queued"' in rec.body for rec in mock.records()] == [False] * 2, (
        "a request cancelled while queued reached the upstream"
    )


async def test_pool_wide_429_guard_keeps_keys_active(gateway_factory: Any, mock: Any) -> None:
    gw = gateway_factory(env=keys_env(), config=cfg(rps=0, max_conn=0, retries=2, cooldown_s=30))
    mock.set_behavior(None, status=429)
    r = post(gw)
    assert r.status_code == 429
    assert mock.count() == 3
    assert set(keys_state(gw).values()) == {"active"}, keys_state(gw)
    mock.set_behavior(None)
    # the guard pauses the provider, briefly; the next request waits it out on the same keys
    paused_for = admission(gw, "cerebras")["paused_for_s"]
    assert 0 < paused_for <= 5, paused_for
    started = time.monotonic()
    r = post(gw, timeout=15)
    assert r.status_code == 200
    assert time.monotonic() - started >= paused_for - 0.2, "sent during the pause"
    assert mock.records()[-1].key in KEYS


async def test_no_usable_key_answers_429_with_retry_after(gateway_factory: Any, mock: Any) -> None:
    only = KEYS[0]
    gw = gateway_factory(env=keys_env([only]), config=cfg(rps=0, max_conn=0, retries=0))
    mock.push(only, status=429, headers={"Retry-After": "20"})
    assert post(gw).status_code == 429  # the upstream's own 429, relayed
    r = post(gw)
    assert r.status_code == 429
    assert 15 <= int(r.headers["retry-after"]) <= 21
    assert mock.count() == 1


async def test_clients_leaving_the_queue_early_never_leak_a_slot(
    gateway_factory: Any, mock: Any
) -> None:
    """Clients that give up within the first tens of milliseconds, while queued behind a gate
    that turns over fast: every slot must come back (a leaked slot would shrink max_conn)."""
    gw = gateway_factory(
        env=keys_env(), config=cfg(rps=0, max_conn=1, queue=500, queue_timeout_s=10, retries=0)
    )
    mock.set_behavior(None, delay_s=0.01)

    async def leaver(s: aiohttp.ClientSession, after: float) -> None:
        try:
            async with s.post(
                f"{gw.url}/cerebras/v1/chat/completions",
                json=CHAT,
                headers=gw.auth(),
                timeout=aiohttp.ClientTimeout(total=after),
            ) as r:
                await r.read()
        except (TimeoutError, aiohttp.ClientError):
            pass

    async with aiohttp.ClientSession() as s:
        for _ in range(4):
            await asyncio.gather(*(leaver(s, 0.005 + 0.003 * (i % 12)) for i in range(60)))
    # the gateway notices each leaver on its own time; a leaked slot never comes back
    eventually(lambda: idle(gw, "cerebras"), 10, "every slot and queue place came back")
    mock.set_behavior(None)
    assert await fire(gw, 3) == [200] * 3
