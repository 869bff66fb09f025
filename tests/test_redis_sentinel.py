"""Redis under Sentinel (SPEC §21): the URL form, and a real failover on loopback — one master,
one replica, three sentinels, two keygate instances under steady traffic; the master is killed,
the sentinels promote the replica, both instances follow it and the fleet's gate holds again."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from harness import eventually, eventually_async, fire
from keygate.config.settings import ConfigError
from keygate.control.keypool import mask
from keygate.control.redis.connection import RedisTarget
from servers import RedisServer, free_port, redis_bin, start_redis

KEYS = ["sk-sentinel-aaaa0001", "sk-sentinel-bbbb0002"]
MASTER = "kgmaster"
PASSWORD = "s3cret-data-pw"  # the data nodes' (master and replica); the sentinels have none


# --- the URL ----------------------------------------------------------------------------------


def test_sentinel_url_is_parsed() -> None:
    t = RedisTarget.parse(
        "redis+sentinel://:s3cret-pass@127.0.0.1:26379,127.0.0.1:26380/kgmaster/2"
        "?lease_s=5&timeout_s=0.25&sentinel_password=sent-pass"
    )
    assert t.sentinel is not None
    assert t.sentinel.hosts == (("127.0.0.1", 26379), ("127.0.0.1", 26380))
    assert t.sentinel.master == "kgmaster"
    assert t.sentinel.kwargs["password"] == "sent-pass"
    assert (t.lease_s, t.timeout_s) == (5.0, 0.25)
    assert t.kwargs["password"] == "s3cret-pass" and t.kwargs["db"] == 2
    assert "s3cret" not in t.display_url and "sent-pass" not in t.display_url
    assert t.display_url.startswith("redis+sentinel://***@127.0.0.1:26379,127.0.0.1:26380/kgmaster")
    at = t.at("127.0.0.1", 6390)
    conn = at.connection()
    assert (conn.host, conn.port, conn.db, conn.password) == ("127.0.0.1", 6390, 2, "s3cret-pass")
    # a password with '@' in it: split at the last '@', never half shown
    t = RedisTarget.parse("redis+sentinel://:hunter@2secret@127.0.0.1:26379/kgmaster")
    assert t.kwargs["password"] == "hunter@2secret"
    assert "hunter" not in t.display_url and "2secret" not in t.display_url, t.display_url
    # no password, default sentinel port, default database, TLS form
    t = RedisTarget.parse("rediss+sentinel://127.0.0.1,[::1]:26390/m")
    assert t.sentinel is not None
    assert t.sentinel.hosts == (("127.0.0.1", 26379), ("::1", 26390))
    assert t.kwargs.get("db", 0) == 0 and t.sentinel.kwargs.get("ssl") is True
    assert "SSL" in type(t.at("127.0.0.1", 6390).connection()).__name__


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://:pw@127.0.0.1:26379", "master name"),
        ("redis+sentinel://:pw@127.0.0.1:26379/", "master name"),
        ("redis+sentinel:///kgmaster", "at least one sentinel"),
        ("redis+sentinel://127.0.0.1:26379,/kgmaster", "empty sentinel"),
        ("redis+sentinel://127.0.0.1:99999/kgmaster", "port"),
        ("redis+sentinel://127.0.0.1:ab/kgmaster", "port"),
        ("redis+sentinel://127.0.0.1/kgmaster/x", "database"),
        ("redis+sentinel://127.0.0.1/kgmaster/1/2", "database"),
        ("redis+sentinel://[::1/kgmaster", "IPv6"),
        ("redis+sentinel://:pw@127.0.0.1/kg master", "master name"),
        ("redis+sentinel://127.0.0.1/kgmaster?lease_s=0", "lease_s"),
        ("sentinel://127.0.0.1/kgmaster", "redis+sentinel://"),
    ],
)
def test_bad_sentinel_urls_are_one_line_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        RedisTarget.parse(url.replace(":pw@", ":hunter2-secret@"))
    text = str(err.value)
    assert "KEYGATE_REDIS_URL" in text and problem in text, text
    assert "\n" not in text and "hunter2" not in text, text


# --- a failover on loopback -------------------------------------------------------------------


@dataclass
class Sentinels:
    """One master, one replica and three sentinels (quorum 2) on loopback."""

    master: RedisServer
    replica: RedisServer
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def url(self, **query: str) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{MASTER}" + (f"?{q}" if q else "")

    def master_port(self) -> int | None:
        """The master's port as the sentinels say (None while one of them disagrees)."""
        seen = set()
        for port in self.ports:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5) as r:
                    _, mport = r.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
            except (redis.RedisError, TypeError):
                return None
            seen.add(int(mport))
        return seen.pop() if len(seen) == 1 else None

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.sentinels:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.master.stop()
        self.replica.stop()


def data_node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2)


def _start_sentinels(tmp_path: Path) -> Sentinels:
    binary = redis_bin()
    assert binary is not None
    master = start_redis(tmp_path / "master")
    replica = start_redis(tmp_path / "replica")
    for server in (master, replica):  # either may be the master later
        with redis.Redis(host="127.0.0.1", port=server.port) as r:
            r.config_set("masterauth", PASSWORD)
            r.config_set("requirepass", PASSWORD)
    with data_node(replica.port) as r:
        r.execute_command("REPLICAOF", "127.0.0.1", master.port)
    cluster = Sentinels(master, replica)
    try:

        def synced() -> bool:
            with data_node(replica.port) as r:
                return r.info("replication").get("master_link_status") == "up"

        eventually(synced, 10, "the replica follows the master")
        for i in range(3):
            port = free_port()
            conf = tmp_path / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {tmp_path}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2\n"
                f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 3000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            with open(tmp_path / f"sentinel-{i}.log", "ab") as log:
                cluster.sentinels.append(
                    subprocess.Popen(
                        [binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
                    )
                )
            cluster.ports.append(port)

        def all_see_everyone() -> bool:
            for port in cluster.ports:
                try:
                    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5) as r:
                        state = r.sentinel_master(MASTER)
                except redis.RedisError:
                    return False
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                    return False
            return True

        eventually(all_see_everyone, 15, "every sentinel knows the replica and the others")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Sentinels]:
    cluster = _start_sentinels(tmp_path / "sentinel")
    yield cluster
    cluster.stop()


def health(gw: Any) -> dict[str, Any]:
    return httpx.get(gw.url + "/healthz", headers=gw.admin(), timeout=5).json()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed")
async def test_failover_is_followed_and_the_fleet_gate_holds_again(
    gateway_factory: Any, mock: Any, sentinels: Sentinels, tmp_path: Path
) -> None:
    max_conn = 4
    env = {
        "CEREBRAS_API_KEYS": ",".join(KEYS),
        "KEYGATE_REDIS_URL": sentinels.url(lease_s="30", timeout_s="0.3"),
    }
    config = {
        "providers": {
            "cerebras": {
                "rps": 0,
                "max_conn": max_conn,
                "queue": 200,
                "retries": 0,
                "affinity": "off",
            }
        }
    }
    shared_dir = tmp_path / "shared-data"
    a, b = (gateway_factory(env=env, config=config, data_dir=shared_dir) for _ in range(2))
    old = f"127.0.0.1:{sentinels.master.port}"
    new = f"127.0.0.1:{sentinels.replica.port}"
    for gw in (a, b):
        doc = health(gw)
        assert doc["state"] == "redis" and doc["redis_master"] == old, doc
        assert f"/{MASTER}" in doc["redis"], doc
    mock.set_behavior(None, chunks=3, chunk_interval_s=0.1)

    async def fleet_peak() -> int:
        """2 x max_conn slow requests through both instances at once: the upstream's peak."""
        mock.reset_peak()
        async with asyncio.timeout(5):
            got = await asyncio.gather(*(fire(gw, max_conn, stream=True) for gw in (a, b)))
        assert got == [[200] * max_conn] * 2
        return int(mock.peak_inflight)

    assert await fleet_peak() == max_conn, "before: one gate for the fleet"

    statuses: list[int] = []
    stop = asyncio.Event()

    async def load(gw: Any) -> None:
        while not stop.is_set():
            statuses.extend(await fire(gw, 2, stream=True))

    loaders = [asyncio.create_task(load(gw)) for gw in (a, b, a, b)]
    await asyncio.sleep(0.5)
    sentinels.master.proc.kill()  # mid-load, no goodbye
    sentinels.master.proc.wait(5)
    killed = time.monotonic()
    added = "sk-sentinel-cccc0003"  # an admin change while the instances serve locally
    r = await asyncio.to_thread(
        a.api, "POST", "/api/keys", json={"provider": "cerebras", "key": added}
    )
    assert r.status_code == 201, r.text
    await asyncio.to_thread(
        eventually,
        lambda: sentinels.master_port() == sentinels.replica.port,
        20,
        "the sentinels promote the replica",
        interval=0.05,
    )
    switched = time.monotonic()

    def followed() -> bool:
        return all(
            (doc := health(gw))["state"] == "redis" and doc.get("redis_master") == new
            for gw in (a, b)
        )

    await asyncio.to_thread(
        eventually, followed, 5, "both instances follow the new master", interval=0.05
    )
    followed_in = time.monotonic() - switched

    def b_has_it() -> bool:
        keys = b.api("GET", "/api/keys", params={"provider": "cerebras"}).json()["keys"]
        return mask(added) in {k["masked"] for k in keys}

    await asyncio.to_thread(eventually, b_has_it, 3, "the admin change reaches b")
    stop.set()
    async with asyncio.timeout(5):  # a slot still held after the switch would stall them
        await asyncio.gather(*loaders)
    assert statuses and set(statuses) == {200}, f"requests failed in the failover: {statuses}"
    assert followed_in < 5, f"followed {followed_in:.1f}s after the switch"
    print(f"switch {switched - killed:.1f}s after the kill; followed {followed_in:.2f}s later")

    # no slot stays held (leases of 30 s: only the reconciliation frees one held at the kill),
    # and the fleet's gate holds again (not one local gate of max_conn per instance)
    await eventually_async(lambda: mock.inflight == 0, 5, "the load has drained")
    with data_node(sentinels.replica.port) as r:
        await eventually_async(
            lambda: r.zcard("keygate:{cerebras}:leases") == 0,
            2,
            "no slot lease left on the new master",
            context=lambda: r.zrange("keygate:{cerebras}:leases", 0, -1, withscores=True),
        )
    assert await fleet_peak() == max_conn, "after: the full width, and one gate for the fleet"
    for gw in (a, b):
        assert "answers again" in gw.log()
        assert "SHARED STATE DOWN" in gw.log()
        assert PASSWORD not in gw.log(), "the password is masked in the banner and the log"
        assert PASSWORD not in str(health(gw))
    assert "redis+sentinel://***@127.0.0.1:" in a.log(), "the banner names the sentinels"


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed")
async def test_an_idle_instance_follows_a_manual_failover(
    gateway_factory: Any, mock: Any, sentinels: Sentinels
) -> None:
    """SENTINEL FAILOVER demotes a master that stays up and keeps answering PING: an instance
    with no traffic still moves to the new master (it asks the sentinels once a second)."""
    env = {
        "CEREBRAS_API_KEYS": ",".join(KEYS),
        "KEYGATE_REDIS_URL": sentinels.url(timeout_s="0.3"),
    }
    gw = gateway_factory(env=env, config={"providers": {"cerebras": {"max_conn": 2}}})
    new = f"127.0.0.1:{sentinels.replica.port}"
    assert health(gw)["redis_master"] == f"127.0.0.1:{sentinels.master.port}"
    with redis.Redis(host="127.0.0.1", port=sentinels.ports[0]) as r:
        r.execute_command("SENTINEL", "FAILOVER", MASTER)
    eventually(
        lambda: sentinels.master_port() == sentinels.replica.port,
        20,
        "the sentinels promote the replica",
        interval=0.05,
    )
    switched = time.monotonic()
    eventually(
        lambda: (doc := health(gw))["state"] == "redis" and doc["redis_master"] == new,
        5,
        "the idle instance follows the new master",
        interval=0.05,
        context=lambda: health(gw),
    )
    print(f"followed {time.monotonic() - switched:.2f}s after the switch")
    assert await fire(gw, 4) == [200] * 4
    with data_node(sentinels.master.port) as r:
        eventually(
            lambda: r.info("replication")["role"] == "slave",
            10,
            "the old master is a replica of the new one",
        )
