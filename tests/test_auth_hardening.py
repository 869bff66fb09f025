"""Password guessing and admin sessions.

- The failed-attempt throttle (keygate/runtime/throttle.py): token buckets per client address and global,
  shared by the proxy and the admin. Unit tests on a fake clock for the arithmetic and decay;
  real gateways for parallel guessing, rotating X-Forwarded-For through a trusted proxy, spoofed
  X-Forwarded-For from an untrusted peer, and the right password working in the middle of it.
- Admin sessions: a revoked cookie stays refused after a restart and on a second instance on the
  same store; a new ADMIN_PASSWORD ends old sessions; idle sessions end, use slides them; a cookie
  with non-ASCII bytes is a 401, never a traceback.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness import CHAT, Gateway, eventually
from keygate.runtime.throttle import FailureThrottle
from servers import postgres_bin, start_postgres

KEY = "csk-" + "a1b2c3d4" * 5
CHAT_PATH = "/cerebras/v1/chat/completions"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scope(peer: str, forwarded: list[str] | None = None) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", v.encode()) for v in forwarded or []]
    return {"client": (peer, 50000), "headers": headers}


# --- the buckets, on a fake clock ----------------------------------------------------------------


def test_address_bucket_limits_and_decays() -> None:
    clock = FakeClock()
    t = FailureThrottle(6, 0, clock=clock)  # 6 per minute: one back every 10 s
    assert [t.fail("1.2.3.4") for _ in range(6)] == [0.0] * 6
    wait = t.fail("1.2.3.4")
    assert wait == pytest.approx(10.0)
    assert t.fail("1.2.3.4") == pytest.approx(10.0)  # a refused attempt costs nothing more
    assert t.fail("5.6.7.8") == 0.0  # another address has its own bucket
    clock.now += 4
    assert t.fail("1.2.3.4") == pytest.approx(6.0)
    clock.now += 6
    assert t.fail("1.2.3.4") == 0.0  # one refilled
    assert t.fail("1.2.3.4") > 0
    clock.now += 3600  # an hour of quiet: the whole bucket is back, and no more
    assert [t.fail("1.2.3.4") for _ in range(7)].count(0.0) == 6


def test_global_bucket_limits_rotating_addresses() -> None:
    clock = FakeClock()
    t = FailureThrottle(5, 8, clock=clock)
    answers = [t.fail(f"10.0.{i // 250}.{i % 250}") for i in range(100)]
    assert answers.count(0.0) == 8
    assert min(a for a in answers if a) == pytest.approx(60 / 8)
    clock.now += 60 / 8
    assert t.fail("10.9.9.9") == 0.0 and t.fail("10.9.9.10") > 0


def test_address_table_is_bounded() -> None:
    t = FailureThrottle(5, 0, max_addresses=100, clock=FakeClock())
    for i in range(5000):
        t.fail(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(t) == 100


def test_zero_means_no_limit() -> None:
    t = FailureThrottle(0, 0, clock=FakeClock())
    assert all(t.fail("1.2.3.4") == 0.0 for _ in range(1000)) and len(t) == 0


def test_client_address_believes_forwarded_for_only_from_trusted_proxies() -> None:
    untrusted = FailureThrottle(5, 5)
    assert untrusted.client_address(scope("127.0.0.1", ["9.9.9.9"])) == "127.0.0.1"
    t = FailureThrottle(5, 5, trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    # a peer that is not a trusted proxy: its header is whatever it wrote
    assert t.client_address(scope("192.0.2.7", ["9.9.9.9"])) == "192.0.2.7"
    # the right-most hop that is not a trusted proxy; what the client wrote left of it is ignored
    assert t.client_address(scope("127.0.0.1", ["6.6.6.6, 9.9.9.9"])) == "9.9.9.9"
    assert t.client_address(scope("127.0.0.1", ["6.6.6.6", "9.9.9.9, 10.1.2.3"])) == "9.9.9.9"
    assert t.client_address(scope("127.0.0.1", [])) == "127.0.0.1"
    assert t.client_address(scope("127.0.0.1", ["10.0.0.9"])) == "10.0.0.9"  # all trusted
    assert t.client_address(scope("127.0.0.1", ["9.9.9.9, junk"])) == "127.0.0.1"
    assert t.client_address(scope("127.0.0.1", ["9.9.9.9:4711"])) == "9.9.9.9"
    # IPv6 clients are counted per /64 (one host can use any address in it)
    assert t.client_address(scope("2001:db8::1")) == t.client_address(scope("2001:db8::ffff"))
    assert t.client_address(scope("2001:db8::1")) == "2001:db8::/64"
    assert t.client_address(scope("::ffff:192.0.2.1")) == "192.0.2.1"


# --- real gateways ---------------------------------------------------------------------------------


async def burst(
    gw: Gateway,
    n: int,
    method: str,
    path: str,
    headers: list[dict[str, str]] | dict[str, str],
    json: Any = None,
) -> list[tuple[int, dict[str, str], Any]]:
    """`n` requests at once (headers per request, or the same for all): (status, headers, body)."""
    per = headers if isinstance(headers, list) else [headers] * n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one(h: dict[str, str]) -> tuple[int, dict[str, str], Any]:
            async with s.request(method, gw.url + path, headers=h, json=json) as r:
                return r.status, dict(r.headers), await r.json(content_type=None)

        return list(await asyncio.gather(*(one(h) for h in per)))


def statuses(results: list[tuple[int, dict[str, str], Any]]) -> Counter[int]:
    return Counter(status for status, _, _ in results)


def wrong(i: int, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer wrong-{i}", **extra}


def assert_throttled(result: tuple[int, dict[str, str], Any]) -> dict[str, Any]:
    status, headers, body = result
    assert status == 429
    assert int(headers["Retry-After"]) >= 1 and int(headers["retry-after-ms"]) > 0
    return dict(body["error"])


def test_parallel_guessing_on_the_proxy_is_throttled_and_the_password_still_works(
    gateway_factory: Any, mock: Any
) -> None:
    gw = gateway_factory(
        env={
            "CEREBRAS_API_KEYS": KEY,
            "KEYGATE_AUTH_FAILURES_PER_MIN": "5",
            "KEYGATE_AUTH_FAILURES_GLOBAL_PER_MIN": "1000",
        }
    )

    async def storm() -> tuple[list[Any], list[Any]]:
        guesses = burst(gw, 80, "POST", CHAT_PATH, [wrong(i) for i in range(80)], CHAT)
        right = burst(gw, 10, "POST", CHAT_PATH, gw.auth(), CHAT)
        got = await asyncio.gather(guesses, right)
        return got[0], got[1]

    started = time.monotonic()
    guesses, right = asyncio.run(storm())
    took = time.monotonic() - started
    counts = statuses(guesses)
    # 5 in the bucket, + at most one refilled while the burst runs (one per 12 s)
    assert 5 <= counts[401] <= 6 and counts[401] + counts[429] == 80, counts
    assert statuses(right) == {200: 10}
    assert took < 10, took  # answered at once, never slept on
    error = assert_throttled(next(r for r in guesses if r[0] == 429))
    assert error["type"] == "rate_limit_error" and error["code"] == "auth_throttled"
    assert next(r for r in guesses if r[0] == 429)[1]["x-should-retry"] == "false"
    # Anthropic clients get Anthropic's shape; a request without any password is not a guess.
    with gw.client() as c:
        r = c.post("/claude/v1/messages", headers={"x-api-key": "nope"}, json={})
        assert r.status_code == 429 and r.json()["type"] == "error"
        assert c.post(CHAT_PATH, json=CHAT).status_code == 401
        assert c.post(CHAT_PATH, headers=gw.auth(), json=CHAT).status_code == 200
        # the admin shares the buckets: this address has no wrong guesses left there either
        r = c.get("/api/keys", headers=wrong(999))
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_attempts"
        assert c.get("/api/keys", headers=gw.admin()).status_code == 200
    assert "Traceback" not in gw.log()


def test_parallel_admin_guessing_is_throttled_and_the_admin_still_logs_in(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory(
        env={"KEYGATE_AUTH_FAILURES_PER_MIN": "4", "KEYGATE_AUTH_FAILURES_GLOBAL_PER_MIN": "1000"}
    )
    login = {"password": gw.admin_password}

    async def storm() -> tuple[list[Any], ...]:
        return tuple(
            await asyncio.gather(
                burst(gw, 40, "GET", "/api/keys", [wrong(i) for i in range(40)]),
                burst(gw, 20, "POST", "/api/session", {}, {"password": "guess"}),
                burst(gw, 5, "POST", "/api/session", {}, login),
                burst(gw, 5, "GET", "/api/keys", gw.admin()),
            )
        )

    started = time.monotonic()
    bearer, form, logins, good = asyncio.run(storm())
    assert time.monotonic() - started < 10
    counts = statuses(bearer) + statuses(form)
    assert 4 <= counts[401] <= 5 and counts[401] + counts[429] == 60, counts
    assert statuses(logins) == {200: 5} and statuses(good) == {200: 5}
    assert all("keygate_session=" in h["Set-Cookie"] for _, h, _ in logins)
    error = assert_throttled(next(r for r in form if r[0] == 429))
    assert error["code"] == "too_many_attempts" and error["type"] == "rate_limit_error"
    # the log has a line per charged failure, none for the refused flood
    assert gw.log().count("wrong admin credentials") == counts[401]
    assert "Traceback" not in gw.log()


def test_rotating_forwarded_for_through_a_trusted_proxy_meets_the_global_bucket(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory(
        env={
            "KEYGATE_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
            "KEYGATE_AUTH_FAILURES_PER_MIN": "3",
            "KEYGATE_AUTH_FAILURES_GLOBAL_PER_MIN": "10",
        }
    )

    def via_proxy(i: int, client: str) -> dict[str, str]:
        return wrong(i, **{"X-Forwarded-For": f"{client}, 10.0.0.1"})

    # One client behind the proxy: its own bucket (3), not the proxy's.
    one = asyncio.run(
        burst(gw, 6, "GET", "/v1/models", [via_proxy(i, "1.1.1.1") for i in range(6)])
    )
    assert statuses(one) == {401: 3, 429: 3}
    other = asyncio.run(
        burst(gw, 2, "GET", "/v1/models", [via_proxy(i, "2.2.2.2") for i in range(2)])
    )
    assert statuses(other) == {401: 2}
    # Rotating addresses: each new one has a bucket, but all together meet the global one.
    rotating = [via_proxy(i, f"3.3.{i // 200}.{i % 200}") for i in range(60)]
    counts = statuses(asyncio.run(burst(gw, 60, "GET", "/v1/models", rotating)))
    assert 5 <= counts[401] <= 6 and counts[429] == 60 - counts[401], counts  # 10 - 3 - 2 left
    with gw.client() as c:  # the right password through the proxy is never refused
        r = c.get("/v1/models", headers={**gw.auth(), "X-Forwarded-For": "1.1.1.1"})
        assert r.status_code != 429 and r.status_code != 401


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(gateway_factory: Any) -> None:
    gw = gateway_factory(
        env={
            "KEYGATE_TRUSTED_PROXIES": "10.0.0.0/8",  # the test's peer (127.0.0.1) is not one
            "KEYGATE_AUTH_FAILURES_PER_MIN": "5",
            "KEYGATE_AUTH_FAILURES_GLOBAL_PER_MIN": "1000",
        }
    )
    spoofed = [wrong(i, **{"X-Forwarded-For": f"10.0.0.1, 4.4.{i}.1"}) for i in range(30)]
    counts = statuses(asyncio.run(burst(gw, 30, "GET", "/v1/models", spoofed)))
    assert 5 <= counts[401] <= 6 and counts[429] == 30 - counts[401], counts
    spoofed_admin = [wrong(i, **{"X-Forwarded-For": f"5.5.{i}.1"}) for i in range(10)]
    assert statuses(asyncio.run(burst(gw, 10, "GET", "/api/keys", spoofed_admin))) == {429: 10}


def test_buckets_decay_on_a_running_gateway(gateway_factory: Any) -> None:
    gw = gateway_factory(
        env={"KEYGATE_AUTH_FAILURES_PER_MIN": "120", "KEYGATE_AUTH_FAILURES_GLOBAL_PER_MIN": "0"}
    )  # 2 back per second
    with gw.client() as c:
        seen = Counter(c.get("/v1/models", headers=wrong(i)).status_code for i in range(200))
        assert seen[429] > 0, seen
        emptied = time.monotonic()
        eventually(
            lambda: c.get("/v1/models", headers=wrong(0)).status_code != 429,
            10,
            "the bucket refilled",
            interval=0.05,
        )
        assert time.monotonic() - emptied < 3


# --- sessions -------------------------------------------------------------------------------------


def login(gw: Gateway, password: str | None = None) -> str:
    with gw.client() as c:
        r = c.post("/api/session", json={"password": password or gw.admin_password})
    assert r.status_code == 200, r.text
    m = re.match(r"keygate_session=([^;]+)", r.headers["set-cookie"])
    assert m is not None
    return m.group(1)


def with_cookie(gw: Gateway, token: str, method: str = "GET", path: str = "/api/session") -> int:
    headers = {"cookie": f"keygate_session={token}", "x-keygate-csrf": "1"}
    with gw.client() as c:
        return c.request(method, path, headers=headers).status_code


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    return tmp_path / "shared-data"


def test_revoked_cookie_is_refused_after_a_restart_and_on_a_second_instance(
    gateway_factory: Any, shared_dir: Path
) -> None:
    first = gateway_factory(data_dir=shared_dir)
    second = gateway_factory(data_dir=shared_dir)  # another instance on the same store
    revoked, kept = login(first), login(first)
    assert with_cookie(second, revoked) == 200 and with_cookie(second, kept) == 200
    assert with_cookie(first, revoked, "DELETE") == 200
    assert with_cookie(first, revoked) == 401
    assert with_cookie(second, revoked) == 401
    assert with_cookie(second, revoked, path="/api/keys") == 401
    first.stop()
    restarted = gateway_factory(data_dir=shared_dir)
    assert with_cookie(restarted, revoked) == 401
    assert with_cookie(restarted, kept) == 200  # sessions themselves survive restarts
    assert "Traceback" not in restarted.log() + second.log()


@pytest.fixture
def pg_dsn(tmp_path: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster (requested before gateway_factory, so it outlives them)."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries not installed")
    server = start_postgres(tmp_path)
    yield server.database_dsn("keygate_sessions")
    server.stop()


@pytest.mark.postgres
def test_revoked_cookie_is_refused_on_another_instance_on_postgres(
    pg_dsn: str, gateway_factory: Any
) -> None:
    env = {"KEYGATE_DB": pg_dsn}
    first = gateway_factory(env=env)
    second = gateway_factory(env=env)
    token = login(first)
    assert with_cookie(second, token) == 200
    assert with_cookie(second, token, "DELETE") == 200
    assert with_cookie(first, token) == 401
    first.stop()
    assert with_cookie(gateway_factory(env=env), token) == 401


def test_a_new_admin_password_ends_old_sessions(gateway_factory: Any, shared_dir: Path) -> None:
    gw = gateway_factory(data_dir=shared_dir, admin_password="first-admin-password")
    token = login(gw)
    assert with_cookie(gw, token) == 200
    gw.stop()
    gw = gateway_factory(data_dir=shared_dir, admin_password="second-admin-password")
    assert with_cookie(gw, token) == 401
    assert with_cookie(gw, login(gw)) == 200


def test_idle_sessions_end_and_use_slides_them(gateway_factory: Any) -> None:
    gw = gateway_factory(env={"KEYGATE_SESSION_IDLE_S": "3"})
    idle = login(gw)
    issued = time.monotonic()
    idle_ended = None
    with gw.client() as c:  # a browser: keeps the cookie the server re-issues
        assert c.post("/api/session", json={"password": gw.admin_password}).status_code == 200
        refreshed = 0
        while time.monotonic() - issued < 5:  # well past the idle limit, while in use
            r = c.get("/api/session")
            assert r.status_code == 200, "a session in use was ended"
            refreshed += "set-cookie" in r.headers
            # the other cookie is only checked: the cookies re-issued for it are dropped
            if idle_ended is None and with_cookie(gw, idle) == 401:
                idle_ended = time.monotonic() - issued
            time.sleep(0.25)
        assert refreshed >= 2
        token = c.cookies["keygate_session"]
    # whole-second stamps: an unused session ends between 2 and 3 s after its last use
    assert idle_ended is not None and 1.9 <= idle_ended <= 3.6, idle_ended
    # left alone now, the slid one ends too
    eventually(lambda: with_cookie(gw, token) != 200, 10, "an idle session ended", interval=0.1)


def test_non_ascii_session_cookie_is_401_without_a_traceback(gateway_factory: Any) -> None:
    gw = gateway_factory()
    cookies = [
        "keygate_session=9999999999.n.caf\u00e9".encode(),  # UTF-8 é where the MAC goes
        b"keygate_session=9999999999.n.caf\xe9",  # latin-1 é
        "keygate_session=v2.\u00e9\u00e9.1.1.00".encode(),
        b"keygate_session=\xff\xfe",
    ]
    with gw.client() as c:
        for cookie in cookies:
            for method in ("GET", "DELETE"):
                headers = {b"cookie": cookie, b"x-keygate-csrf": b"1"}
                r = c.request(method, "/api/session", headers=headers)
                assert r.status_code == 401, (cookie, r.text)
    assert "Traceback" not in gw.log()


def test_login_refreshes_nothing_for_bearer_and_logout_clears(gateway_factory: Any) -> None:
    gw = gateway_factory(env={"KEYGATE_SESSION_IDLE_S": "4"})
    with gw.client() as c:
        r = c.get("/api/session", headers=gw.admin())
        assert r.status_code == 200 and "set-cookie" not in r.headers
    token = login(gw)
    with gw.client() as c:
        r = c.delete(
            "/api/session", headers={"cookie": f"keygate_session={token}", "x-keygate-csrf": "1"}
        )
        assert r.status_code == 200 and r.headers.get_list("set-cookie") == [
            "keygate_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ]


def test_trusted_proxies_setting() -> None:
    from keygate.config.settings import ConfigError, load_settings

    s = load_settings({"KEYGATE_TRUSTED_PROXIES": " 127.0.0.1, 10.0.0.0/8 ,::1,fd00::/8"})
    assert s.trusted_proxies == ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"]
    assert load_settings({}).trusted_proxies == []
    with pytest.raises(ConfigError, match=r"KEYGATE_TRUSTED_PROXIES.*'nginx'"):
        load_settings({"KEYGATE_TRUSTED_PROXIES": "127.0.0.1,nginx"})
    with pytest.raises(ConfigError, match="KEYGATE_SESSION_IDLE_S"):
        load_settings({"KEYGATE_SESSION_IDLE_S": "0"})
