"""Shared state on Redis: the Lua scripts against a real redis-server (exact times passed in),
the fallback when Redis goes away, and keygate processes sharing one Redis: one set of limits,
key health seen by all, slots of a crashed instance coming back, and Redis outages survived."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis

from harness import CHAT, eventually, eventually_async, fire
from keygate.config.quotaday import day_window
from keygate.config.settings import ProviderConfig
from keygate.control.base import Event, Limits
from keygate.control.keypool import KeyEntry, mask
from keygate.control.local import LocalAdmission, LocalKeyPool
from keygate.control.redis import SharedAdmission, SharedKeyPool, SharedState
from keygate.control.redis.scripts import ADMIT, PICK, RELEASE_KEY, RELEASE_SLOT, RENEW, SYNC
from keygate.control.redis.state import EVENTS
from servers import RedisServer, free_port, redis_bin, start_redis

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed"),
]

KEYS = ["sk-shared-aaaa0001", "sk-shared-bbbb0002", "sk-shared-cccc0003"]
T0 = 1_000_000.0  # scripts take "now" from ARGV when given: exact arithmetic


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
async def state(redis_server: RedisServer) -> AsyncIterator[SharedState]:
    st = SharedState(redis_server.url + "?lease_s=2&timeout_s=0.3", fleet_size=2)
    await st.start()
    assert st.up, st.reason
    yield st
    await st.close()


def adm_keys(p: str = "t") -> list[str]:
    return [f"keygate:{{{p}}}:adm", f"keygate:{{{p}}}:leases"]


def admit_args(
    now: float, rps: float, burst: int, max_conn: int, lease: str = "", ttl: float = 15
) -> list[Any]:
    return [repr(now), rps, burst, max_conn, lease, ttl]


def pool_of(st: SharedState, name: str = "t", n: int = 4, **cfg: Any) -> SharedKeyPool:
    pool = SharedKeyPool(ProviderConfig(name=name, base_url="http://x", **cfg), st)
    for i in range(1, n + 1):
        pool.add(KeyEntry(i, name, f"sk-secret-{i:04d}-xxxx"))
    return pool


# --- the scripts ------------------------------------------------------------------------------


async def test_bucket_is_exact_in_redis(state: SharedState) -> None:
    async def admit(now: float) -> list[Any]:
        return await state.run(ADMIT, adm_keys(), admit_args(now, rps=4, burst=8, max_conn=0))

    assert [(await admit(T0))[0] for _ in range(8)] == [1] * 8, "a full burst at once"
    refused = await admit(T0)
    assert refused[0] == 0 and float(refused[1]) == pytest.approx(0.25, abs=1e-9)
    assert (await admit(T0 + 0.25))[0] == 1
    assert float((await admit(T0 + 0.25))[1]) == pytest.approx(0.25, abs=1e-9)
    # 0.1 s later the bucket holds 0.4 tokens: 0.15 s to the next
    assert float((await admit(T0 + 0.35))[1]) == pytest.approx(0.15, abs=1e-9)
    # a long pause refills to the burst, never beyond
    assert [(await admit(T0 + 100))[0] for _ in range(9)] == [1] * 8 + [0]


async def test_gate_leases_expire_renew_and_release(state: SharedState) -> None:
    keys = adm_keys()

    async def admit(now: float, lease: str) -> list[Any]:
        return await state.run(
            ADMIT, keys, admit_args(now, rps=0, burst=1, max_conn=2, lease=lease, ttl=1.0)
        )

    assert (await admit(T0, "a"))[0] == 1 and (await admit(T0 + 0.5, "b"))[0] == 1
    full = await admit(T0 + 0.6, "c")
    assert full[0] == 0 and full[1] == b"-1", "full: wait for a release"
    assert float(full[2]) == pytest.approx(0.4), "and at the latest for the earliest expiry"
    assert (await admit(T0 + 0.999, "c"))[0] == 0
    assert (await admit(T0 + 1.0, "c"))[0] == 1, "lease a expired by itself"
    # renewing b (at T0 + 1.2, ttl 2) keeps it; c expires at T0 + 2.0
    await state.run(RENEW, [keys[1]], [repr(T0 + 1.2), 2.0, "b"])
    assert (await admit(T0 + 2.5, "d"))[0] == 1, "c expired, b did not"
    assert (await admit(T0 + 2.5, "e"))[0] == 0
    # a release frees the slot at once and says so on the release channel
    assert await state.run(RELEASE_SLOT, [keys[1]], ["", "d", 2, "test:release", "t"]) == 1
    assert await state.run(RELEASE_SLOT, [keys[1]], ["", "d", 2, "test:release", "t"]) == 0
    assert (await admit(T0 + 2.5, "e"))[0] == 1


async def test_pick_round_robin_over_usable_keys(state: SharedState) -> None:
    pool = pool_of(state, n=5)
    pool.set_status(4, "disabled")
    pool.set_status(5, "invalid", time.time() + 300)
    picks = []
    for _ in range(6):
        entry = (await pool.acquire()).entry
        assert entry is not None
        picks.append(entry.id)
        await pool.release(entry, Event.OK)
    assert picks == [1, 2, 3, 1, 2, 3], picks
    assert (await pool.acquire([1, 2])).entry.id == 3, "tried keys are avoided"  # type: ignore[union-attr]
    assert (await pool.acquire([1, 2, 3])).entry.id == 1, "unless only they are left"  # type: ignore[union-attr]
    assert await pool.ready_in([1, 2, 3]) is None, "only disabled and invalid keys left"

    # cooling until a time (exact: now passed in), back by itself
    keys = pool._keys
    prefix = pool._prefix

    def rel(key_id: int, event: str, now: float, until: float | str = "") -> list[Any]:
        return [repr(now), prefix, key_id, event, until, "", 30, 3600, 300, EVENTS, "t", "", 10]

    res = await state.run(RELEASE_KEY, keys, rel(1, "rl", T0, T0 + 0.5))
    assert res[:3] == [b"state", b"cooling", b"1000000.5"]

    day = day_window(T0, "00:00 UTC")
    leases = iter(range(1_000_000))

    def pick(now: float, *exclude: int, lease: str = "") -> list[Any]:
        lease = lease or f"L{next(leases)}"  # unique per pick, as in production
        avoid = map(str, exclude)
        return [repr(now), prefix, "pick", "0:0:0:0:0:0", 0, lease, 15, 0, *day, "", *avoid]

    seen = [(await state.run(PICK, keys, pick(T0 + 0.1)))[0] for _ in range(4)]
    assert b"1" not in seen and set(seen) == {b"2", b"3"}
    ready = await state.run(
        PICK,
        keys,
        [repr(T0 + 0.1), prefix, "ready", "0:0:0:0:0:0", 0, "", 15, 0, *day, "", "2", "3"],
    )
    assert float(ready[1]) == pytest.approx(0.4), "ready in: when the cooling key returns"
    seen = [(await state.run(PICK, keys, pick(T0 + 0.5)))[0] for _ in range(3)]
    assert set(seen) == {b"1", b"2", b"3"}, "key 1 is back after its cooldown"

    # per-key rpm (2 a minute) and max_conn (1, as a lease), in Redis
    await state.run(
        SYNC,
        keys,
        ["", EVENTS, "t", 2, "a", 0, "2:0:0:0:0:0:0", 1, "", 3, "a", 0, "0:1:0:0:0:0:0", 0, ""],
    )
    t = T0 + 10
    firsts = []
    for i in range(4):
        res = await state.run(PICK, keys, pick(t, 1, lease=f"F{i}"))
        firsts.append(res[0])
        if res[0] == b"3":
            held = f"F{i}"
    assert firsts.count(b"2") == 2 and firsts.count(b"3") == 1, firsts  # 3 holds its one lease
    assert (await state.run(PICK, keys, pick(t, 1)))[0] == b"1", "both at their limits: 1 it is"
    await state.run(RELEASE_KEY, keys, [*rel(3, "ok", t)[:5], held, *rel(3, "ok", t)[6:]])
    assert (await state.run(PICK, keys, pick(t, 1)))[0] == b"3", "lease released: 3 usable again"
    assert (await state.run(PICK, keys, pick(t + 60, 1, 3)))[0] == b"2", "the rpm window moved on"


async def test_pool_wide_429_guard_pauses_the_provider_and_keeps_keys(state: SharedState) -> None:
    pool = pool_of(state, n=3, cooldown_s=30)
    entries = [(await pool.acquire()).entry for _ in range(3)]
    pauses = [await pool.release(e, Event.RATE_LIMITED, None, "429") for e in entries if e]
    assert pauses[:2] == [None, None] and pauses[2] is not None
    assert 4 < pauses[2] - time.time() <= 5.01, "a provider cooldown, not the keys' fault"
    assert [e.status for e in pool.entries.values()] == ["active"] * 3
    res = await state.run(ADMIT, adm_keys("t"), ["", 1, 1, 0, "", 15])
    assert res[0] == 0 and 4 < float(res[1]) <= 5.01, "every instance's admission waits"


# --- TLS: rediss:// with a private CA --------------------------------------------------------


def _tls_files(out: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1: (ca, cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keygate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "ca.pem", out / "server.pem", out / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """redis-server on a TLS port only, its certificate signed by a private CA: (port, ca)."""
    ca, cert, key = _tls_files(tmp_path / "tls")
    port = free_port()
    log_path = tmp_path / "redis-tls.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(redis_bin()),
                *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
                *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
                *("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"),
                *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(
            lambda: proc.poll() is not None or "Ready to accept" in log_path.read_text(),
            10,
            "redis-server ready (or gone)",
            context=log_path.read_text,
        )
        assert proc.poll() is None, f"redis-server without TLS support? {log_path.read_text()}"
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(10)


async def test_rediss_with_a_private_ca_for_pipeline_and_pubsub(
    tls_redis: tuple[int, Path],
) -> None:
    """One URL parse for both connections: the pipelined one (every decision) and pub/sub."""
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&timeout_s=2"
    heard = asyncio.Event()

    async def on_change() -> None:
        heard.set()

    a, b = SharedState(url), SharedState(url)
    cfg = ProviderConfig(name="tls", base_url="http://x", rps=1, burst=2, max_conn=0)
    adm = SharedAdmission(Limits(1, 2, 0, 10, 5), cfg, a)
    try:
        await a.start(on_change)
        await b.start()
        assert a.up and b.up, (a.reason, b.reason)
        for _ in range(2):
            await (await adm.acquire()).release()
        assert a.up, a.reason
        refused = await b.run(ADMIT, adm_keys("tls"), ["", 1, 2, 0, "", 15])
        assert refused[0] == 0, "both tokens were taken in Redis, over TLS"
        b.announce("keys")  # an admin change made through the other instance
        async with asyncio.timeout(5):
            await heard.wait()
    finally:
        await a.close()
        await b.close()


# --- the fallback ---------------------------------------------------------------------------


async def test_redis_that_hangs_or_dies_never_blocks_a_request(redis_server: RedisServer) -> None:
    st = SharedState(redis_server.url + "?timeout_s=0.3", fleet_size=2)
    cfg = ProviderConfig(name="f", base_url="http://x", rps=100, burst=10, max_conn=4)
    adm = SharedAdmission(Limits(50, 5, 2, 100, 5), cfg, st)
    pool = pool_of(st, "f", n=2)
    await st.start()
    try:
        os.kill(redis_server.proc.pid, signal.SIGSTOP)  # Redis stops answering
        t = time.perf_counter()
        slot = await adm.acquire()
        entry = (await pool.acquire()).entry
        took = time.perf_counter() - t
        assert entry is not None and took < 0.6, f"served locally after the timeout ({took:.3f}s)"
        assert st.info()["state"] == "local-fallback" and "0.3" in st.info()["state_reason"]
        t = time.perf_counter()
        await pool.release(entry, Event.OK)
        await slot.release()
        slots = [await adm.acquire() for _ in range(2)]  # the local share: 4 / 2
        assert time.perf_counter() - t < 0.05, "while down, no Redis call is even tried"
        assert adm.snapshot()["max_conn"] == 2
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await adm.acquire()
        for s in slots:
            await s.release()
        os.kill(redis_server.proc.pid, signal.SIGCONT)
        await eventually_async(lambda: st.up, 4, "back on Redis once it answers", interval=0.1)
        assert st.info() == {"state": "redis", "redis": redis_server.url}
        slots = [await adm.acquire() for _ in range(4)]
        assert adm.snapshot()["max_conn"] == 4, "the fleet's gate again"
        for s in slots:
            await s.release()
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
        await st.close()


async def test_added_latency_per_decision_local_vs_redis(redis_server: RedisServer) -> None:
    """acquire + pick + release (key) + release (slot), one request's decisions, in a loop."""
    cfg = ProviderConfig(name="bench", base_url="http://x", rps=1e6, burst=10**6, max_conn=10**5)
    local_adm = LocalAdmission(Limits(cfg.rps, cfg.burst, cfg.max_conn, 1000, 5))
    local_pool = LocalKeyPool(cfg)
    for i in range(1, 11):
        local_pool.add(KeyEntry(i, "bench", f"sk-bench-{i:04d}-xxxx"))
    st = SharedState(redis_server.url)
    shared_adm = SharedAdmission(Limits(cfg.rps, cfg.burst, cfg.max_conn, 1000, 5), cfg, st)
    shared_pool = pool_of(st, "bench", n=10)
    await st.start()

    async def one(adm: Any, pool: Any) -> None:
        slot = await adm.acquire()
        entry = (await pool.acquire(())).entry
        await pool.release(entry, Event.OK)
        await slot.release()

    async def per_request_us(adm: Any, pool: Any, n: int, concurrency: int = 1) -> float:
        async def worker(k: int) -> None:
            for _ in range(k):
                await one(adm, pool)

        t = time.perf_counter()
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
        return (time.perf_counter() - t) / n * 1e6

    try:
        await per_request_us(shared_adm, shared_pool, 500)  # warm up
        local = statistics.median(
            [await per_request_us(local_adm, local_pool, 5000) for _ in range(3)]
        )
        shared = statistics.median(
            [await per_request_us(shared_adm, shared_pool, 2000) for _ in range(3)]
        )
        shared_64 = await per_request_us(shared_adm, shared_pool, 6400, concurrency=64)
        print(
            f"\nper request (acquire + pick + release + release): local {local:.1f} µs, "
            f"redis {shared:.1f} µs sequential (+{shared - local:.1f} µs), "
            f"redis {shared_64:.1f} µs/request at 64 concurrent"
        )
        assert st.up and shared_adm.snapshot()["in_flight"] == 0
        assert shared < 2000, "a loopback round trip per decision, not more"
    finally:
        await st.close()


# --- keygate processes sharing one Redis ------------------------------------------------------


def cfg(**cerebras: Any) -> dict[str, Any]:
    # round-robin over the same request: no key affinity (SPEC §15) to keep it on one key
    base = {"retries": 2, "backoff_base_s": 0.05, "affinity": "off"}
    return {"providers": {"cerebras": {**base, **cerebras}}}


def shared_env(url: str, **extra: str) -> dict[str, str]:
    return {"CEREBRAS_API_KEYS": ",".join(KEYS), "KEYGATE_REDIS_URL": url, **extra}


def health(gw: Any) -> dict[str, Any]:
    return httpx.get(gw.url + "/healthz", headers=gw.admin(), timeout=5).json()


def wait_state(gws: list[Any], want: str, timeout: float = 6.0) -> None:
    eventually(
        lambda: all(health(gw)["state"] == want for gw in gws),
        timeout,
        f"every instance in state {want!r}",
        interval=0.05,
        context=lambda: [health(gw) for gw in gws],
    )


def two(
    gateway_factory: Any, tmp_path: Path, env: dict[str, str], config: dict[str, Any]
) -> list[Any]:
    shared_dir = tmp_path / "shared-data"
    return [gateway_factory(env=env, config=config, data_dir=shared_dir) for _ in range(2)]


@pytest.mark.slow
async def test_two_instances_share_one_rate_and_one_gate(
    gateway_factory: Any, mock: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    rps, burst, max_conn, n = 10.0, 5, 3, 36
    config = cfg(rps=rps, burst=burst, max_conn=max_conn, queue=500, queue_timeout_s=30, retries=0)
    a, b = two(gateway_factory, tmp_path, shared_env(redis_server.url), config)
    assert health(a)["state"] == health(b)["state"] == "redis"
    assert "shared state  redis redis://127.0.0.1" in a.log()
    mock.set_behavior(None, chunks=4, chunk_interval_s=0.06)
    mock.reset_peak()
    statuses = await asyncio.gather(fire(a, n // 2, stream=True), fire(b, n // 2, stream=True))
    assert statuses == [[200] * (n // 2)] * 2
    arrivals = sorted(r.started for r in mock.records())
    t0 = arrivals[0]
    for i, t in enumerate(arrivals, start=1):
        allowed = burst + rps * (t - t0)
        assert i <= allowed + 0.5, (
            f"request {i} at +{t - t0:.3f}s exceeds {allowed:.2f} (two instances)"
        )
    assert mock.peak_inflight <= max_conn, f"peak {mock.peak_inflight} > max_conn {max_conn}"
    elapsed = arrivals[-1] - t0
    assert elapsed > (n - burst) / rps * 0.9, "the instances did not each take the full rate"
    print(
        f"{n} requests over 2 instances: {elapsed:.2f}s (ideal {(n - burst) / rps:.2f}s), peak {mock.peak_inflight}"
    )


async def test_a_key_condemned_by_one_instance_is_skipped_by_the_other(
    gateway_factory: Any, mock: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    bad = KEYS[1]
    mock.set_behavior(bad, status=401)
    a, b = two(gateway_factory, tmp_path, shared_env(redis_server.url), cfg(rps=0, max_conn=0))
    for _ in range(3):  # round-robin reaches the bad key within one turn
        assert (await fire(a, 1)) == [200]
    assert mock.count(bad) == 1, "instance a tried the bad key once"
    assert await fire(b, 9) == [200] * 9
    assert await fire(a, 3) == [200] * 3
    assert mock.count(bad) == 1, "instance b never used the key a condemned"

    def b_states() -> list[str]:
        keys = b.api("GET", "/api/keys", params={"provider": "cerebras"}).json()["keys"]
        return sorted(k["status"] for k in keys)

    await eventually_async(  # b's admin view follows via pub/sub
        lambda: b_states() == ["active", "active", "invalid"],
        3,
        "b's admin view shows the key a condemned",
        interval=0.05,
        context=b_states,
    )


async def test_admin_changes_reach_the_other_instance_at_once(
    gateway_factory: Any, mock: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    a, b = two(gateway_factory, tmp_path, shared_env(redis_server.url), cfg(rps=0, max_conn=5))

    def within(check: Any, limit: float = 0.3) -> None:
        """`check()` holds on the other instance well inside the 1 s store poll."""
        eventually(check, limit, "there at once (the store poll is 1 s)", interval=0.005)

    def b_keys() -> dict[str, dict[str, Any]]:
        keys = b.api("GET", "/api/keys", params={"provider": "cerebras"}).json()["keys"]
        return {k["masked"]: k for k in keys}

    r = a.api("PATCH", "/api/providers/cerebras", json={"max_conn": 7})
    assert r.status_code == 200, r.text
    within(lambda: health(b)["providers"]["cerebras"]["max_conn"] == 7)

    victim = a.api("GET", "/api/keys", params={"provider": "cerebras"}).json()["keys"][0]
    secret = next(k for k in KEYS if mask(k) == victim["masked"])
    r = a.api("PATCH", f"/api/keys/{victim['id']}", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    within(lambda: b_keys()[victim["masked"]]["status"] == "disabled")
    mock.reset()
    assert await fire(b, 6) == [200] * 6
    used = {rec.key for rec in mock.records()}
    assert secret not in used and len(used) == 2, f"b skips the key a disabled: {used}"

    new_key = "sk-shared-dddd0004"
    assert (
        a.api("POST", "/api/keys", json={"provider": "cerebras", "key": new_key}).status_code == 201
    )
    within(lambda: mask(new_key) in b_keys())
    mock.reset()
    assert await fire(b, 9) == [200] * 9
    assert mock.count(new_key) == 3, "b uses the key a added, in its turn"


@pytest.mark.slow
async def test_slots_of_a_killed_instance_come_back_within_the_lease(
    gateway_factory: Any, mock: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    lease_s, max_conn = 2.0, 2
    env = shared_env(f"{redis_server.url}?lease_s={lease_s:g}")
    a, b = two(gateway_factory, tmp_path, env, cfg(rps=0, max_conn=max_conn, queue=50, retries=0))
    mock.set_behavior(None, chunks=60, chunk_interval_s=0.25)  # 15 s streams

    async def stream(gw: Any) -> int:
        async with aiohttp.ClientSession() as s:
            body = {**CHAT, "stream": True}
            async with s.post(
                f"{gw.url}/cerebras/v1/chat/completions", json=body, headers=gw.auth()
            ) as r:
                async for _ in r.content.iter_any():
                    pass
                return r.status

    held = [asyncio.create_task(stream(a)) for _ in range(max_conn)]
    await eventually_async(lambda: mock.inflight >= max_conn, 5, "a's streams hold every slot")
    assert mock.inflight == max_conn
    leases = redis.Redis(port=redis_server.port)
    granted = dict(leases.zrange("keygate:{cerebras}:leases", 0, -1, withscores=True))
    assert len(granted) == max_conn, granted
    first_term = max(granted.values())  # Redis time: when the last lease would run out unrenewed

    def renewed_past_first_term() -> bool:
        seconds, micros = leases.time()
        now = seconds + micros / 1e6
        held = dict(leases.zrange("keygate:{cerebras}:leases", 0, -1, withscores=True))
        return now > first_term and held.keys() == granted.keys() and min(held.values()) > now

    await eventually_async(
        renewed_past_first_term, lease_s * 3, "a's leases renewed past their first term"
    )
    leases.close()
    a.kill9()
    killed = time.time()
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    await eventually_async(
        lambda: mock.inflight == 0, lease_s, "the mock notices a's connections died", interval=0.01
    )
    mock.reset()  # forgets behaviours too
    mock.set_behavior(None, chunks=4, chunk_interval_s=0.2)
    assert await asyncio.gather(*(stream(b) for _ in range(max_conn))) == [200] * max_conn
    starts = sorted(r.started - killed for r in mock.records())
    assert len(starts) == max_conn
    assert starts[-1] < lease_s + 0.7, f"full max_conn back within the lease: {starts}"
    assert starts[0] > 0.3, f"the dead instance's leases were honoured until they expired: {starts}"
    assert mock.peak_inflight == max_conn, "b got every slot"


@pytest.mark.slow
async def test_redis_outage_local_limits_then_shared_again(
    gateway_factory: Any, mock: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    max_conn = 4
    env = shared_env(redis_server.url, KEYGATE_FLEET_SIZE="2")
    a, b = two(gateway_factory, tmp_path, env, cfg(rps=0, max_conn=max_conn, queue=200, retries=0))
    mock.set_behavior(None, chunks=3, chunk_interval_s=0.1)

    async def peak_via_a(n: int = 12) -> int:
        mock.reset_peak()
        assert await fire(a, n, stream=True) == [200] * n
        return mock.peak_inflight

    assert await peak_via_a() == max_conn, "with Redis, one instance may use the fleet's whole gate"

    statuses: list[int] = []
    stop = asyncio.Event()

    async def load(gw: Any) -> None:
        while not stop.is_set():
            statuses.extend(await fire(gw, 3, stream=True))

    loaders = [asyncio.create_task(load(gw)) for gw in (a, b, a, b)]
    await asyncio.sleep(0.5)
    redis_server.stop()  # mid-load
    await asyncio.to_thread(wait_state, [a, b], "local-fallback")
    doc = health(a)
    assert "Redis unreachable" in doc["state_reason"], doc
    stats = (await asyncio.to_thread(a.api, "GET", "/api/stats")).json()  # the admin page's feed
    assert stats["state"]["state"] == "local-fallback", stats["state"]
    config = (await asyncio.to_thread(a.api, "GET", "/api/config")).json()
    assert config["shared_state"] == "local-fallback"
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*loaders)
    assert statuses and set(statuses) == {200}, (
        f"requests failed during the outage: {set(statuses)}"
    )
    assert "SHARED STATE DOWN" in a.log() and a.log().count("SHARED STATE DOWN") == 1
    assert await peak_via_a() <= max_conn // 2, "local limits: 1/fleet_size of the gate"

    restarted = start_redis(tmp_path / "redis", port=redis_server.port)
    try:
        await asyncio.to_thread(wait_state, [a, b], "redis")
        assert await peak_via_a() == max_conn, "shared limits are back, without a restart"
        mock.reset_peak()
        assert (
            await asyncio.gather(fire(a, 8, stream=True), fire(b, 8, stream=True))
            == [[200] * 8] * 2
        )
        assert mock.peak_inflight <= max_conn, "and hold across both instances"
        assert "answers again" in a.log()
    finally:
        restarted.stop()
