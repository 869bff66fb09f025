"""The retry loop in process: `handle` → `forward` → `relay` against a loopback aiohttp upstream,
with a fake clock (wall time moves only when the request path sleeps) so backoffs and
Retry-After hints are checked without waiting for them."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web

from keygate.clients.registry import ClientRegistry
from keygate.config.settings import ProviderConfig
from keygate.control.keypool import KeyEntry
from keygate.control.local import LocalKeyPool
from keygate.proxy import handler, retry
from keygate.runtime.provider import ProviderRuntime
from keygate.runtime.upstream import create_session

OK_BODY = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
Action = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Clock:
    """Wall time = real time + what the request path slept; sleeps return at once."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []
        self._real = time.time

    def time(self) -> float:
        return self._real() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += seconds
        await asyncio.sleep(0)


class Upstream:
    """A loopback server answering each request with the next scripted action (then 200)."""

    def __init__(self) -> None:
        self.script: deque[Action] = deque()
        self.keys: list[str] = []  # the key each request carried, in order
        self.arrived = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.keys.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        await request.read()
        self.arrived.set()
        if self.script:
            return await self.script.popleft()(request)
        return web.Response(body=OK_BODY, content_type="application/json")


def answer(status: int, headers: dict[str, str] | None = None) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        body = orjson.dumps({"error": {"message": f"upstream says {status}"}})
        return web.Response(
            status=status, body=body, headers=headers, content_type="application/json"
        )

    return act


def hang(up: Upstream) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            up.cancelled.set()
            raise
        raise AssertionError("unreachable")

    return act


async def first_byte_then_drop(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b'data: {"n": 1}\n\n')
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return resp


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await runner.cleanup()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "time", c.time)
    monkeypatch.setattr(retry, "sleep", c.sleep)
    return c


@pytest.fixture
async def make_gw() -> AsyncIterator[Callable[..., Any]]:
    sessions = []

    def make(base_url: str, keys: int = 2, **overrides: Any) -> Any:
        settings = dict(rps=1000.0, burst=1000, max_conn=10, retries=2, backoff_base_s=0.5)
        cfg = ProviderConfig(name="p", base_url=base_url, **(settings | overrides))
        rt = ProviderRuntime(cfg)
        rt.pool = LocalKeyPool(cfg, clock=lambda: time.time())  # the fake clock, late bound
        for i in range(keys):
            rt.pool.add(KeyEntry(i + 1, "p", f"sk-test-key-{i + 1:04d}"))
        session = create_session()
        sessions.append(session)
        return SimpleNamespace(
            providers={"p": rt},
            default_provider="p",
            loop=None,
            passwords=[],
            clients=ClientRegistry(),
            session=session,
            recent=deque(maxlen=100),
        )

    yield make
    for session in sessions:
        await session.close()


class Client:
    """One client request as uvicorn hands it to the app: scope, receive, send."""

    def __init__(self, path: str = "/p/v1/chat/completions") -> None:
        self.scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
        }
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()
        self._body_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": b'{"model": "m"}', "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return dict(start["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def run(gw: Any, client: Client) -> None:
    await asyncio.wait_for(handler.handle(gw, client.scope, client.receive, client.send), 10)


def assert_released(gw: Any) -> None:
    rt = gw.providers["p"]
    assert rt.admission.snapshot()["in_flight"] == 0
    assert [e.inflight for e in rt.pool.entries.values()] == [0] * len(rt.pool.entries)


async def test_429_retries_on_another_key_at_once(upstream, clock, make_gw) -> None:
    gw = make_gw(upstream.url, keys=2)
    upstream.script.append(answer(429, {"retry-after": "20"}))
    client = Client()
    await run(gw, client)
    assert client.status == 200 and client.body == OK_BODY
    assert len(upstream.keys) == 2 and upstream.keys[0] != upstream.keys[1]
    assert clock.sleeps == []  # another key was ready: no wait
    cooled = next(
        e for e in gw.providers["p"].pool.entries.values() if e.secret == upstream.keys[0]
    )
    assert cooled.status == "cooling" and cooled.until == pytest.approx(clock.time() + 20, abs=1)
    assert gw.recent[-1].retries == 1
    assert_released(gw)


async def test_backoff_honours_retry_after_within_the_bound(upstream, clock, make_gw) -> None:
    gw = make_gw(upstream.url, keys=1)
    upstream.script.append(answer(429, {"retry-after": "3"}))
    client = Client()
    await run(gw, client)
    assert client.status == 200
    assert len(upstream.keys) == 2
    # woken just after the hint (never before it), not after the shorter backoff
    assert len(clock.sleeps) == 1 and 3.0 < clock.sleeps[0] <= 3.05
    assert_released(gw)


async def test_retry_after_beyond_the_bound_is_relayed(upstream, clock, make_gw) -> None:
    gw = make_gw(upstream.url, keys=1, retry_after_max_s=30.0)
    upstream.script.append(answer(429, {"retry-after": "60"}))
    client = Client()
    await run(gw, client)
    assert client.status == 429 and client.headers[b"retry-after"] == b"60"
    assert len(upstream.keys) == 1 and clock.sleeps == []
    assert_released(gw)


async def test_no_retry_after_the_first_byte(upstream, clock, make_gw) -> None:
    gw = make_gw(upstream.url, keys=2)
    upstream.script.append(first_byte_then_drop)
    client = Client()
    await run(gw, client)
    assert client.status == 200 and b'"n": 1' in client.body
    assert len(upstream.keys) == 1  # bytes reached the client: no second try
    assert "mid-response" in gw.recent[-1].error
    entry = next(e for e in gw.providers["p"].pool.entries.values() if e.secret == upstream.keys[0])
    assert entry.err_5xx == 1 and entry.ok == 0
    assert_released(gw)


async def test_key_swap_on_401(upstream, clock, make_gw) -> None:
    gw = make_gw(upstream.url, keys=2)
    upstream.script.append(answer(401))
    client = Client()
    await run(gw, client)
    assert client.status == 200
    assert len(upstream.keys) == 2 and upstream.keys[0] != upstream.keys[1]
    assert clock.sleeps == []  # a dead key is swapped at once, outside the retry budget
    dead = next(e for e in gw.providers["p"].pool.entries.values() if e.secret == upstream.keys[0])
    assert dead.status == "invalid"
    assert_released(gw)


async def test_give_up_relays_the_last_answer_with_no_retry(upstream, clock, make_gw) -> None:
    gw = make_gw(upstream.url, keys=1, retries=2)
    upstream.script.extend([answer(500)] * 3)
    client = Client()
    await run(gw, client)
    assert client.status == 500
    assert client.headers[b"x-should-retry"] == b"false"
    assert int(client.headers[b"content-length"]) == len(client.body)
    assert len(upstream.keys) == 3 and len(clock.sleeps) == 2  # two backoffs, then give up
    assert 0.25 <= clock.sleeps[0] <= 0.5 and 0.5 <= clock.sleeps[1] <= 1.0
    assert_released(gw)


async def test_give_up_on_unreachable_upstream_says_no_retry(clock, make_gw) -> None:
    gw = make_gw("http://127.0.0.1:9", keys=1, retries=1)  # discard port: nothing listens
    client = Client()
    await run(gw, client)
    assert client.status == 502
    assert client.headers[b"x-should-retry"] == b"false"
    assert orjson.loads(client.body)["error"]["code"] == "upstream_unreachable"
    assert len(clock.sleeps) == 1
    assert_released(gw)


async def test_client_disconnect_releases_slot_and_key(upstream, clock, make_gw) -> None:
    gw = make_gw(upstream.url, keys=1)
    upstream.script.append(hang(upstream))
    client = Client()
    task = asyncio.ensure_future(run(gw, client))
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    client.leave.set()
    await task  # the disconnect is ours to absorb: handle returns normally
    assert gw.recent[-1].status == 499 and client.sent == []
    await asyncio.wait_for(upstream.cancelled.wait(), 5)  # the upstream connection was closed
    assert_released(gw)


async def test_outside_cancel_releases_slot_and_key(upstream, clock, make_gw) -> None:
    gw = make_gw(upstream.url, keys=1)
    upstream.script.append(hang(upstream))
    client = Client()
    task = asyncio.ensure_future(handler.handle(gw, client.scope, client.receive, client.send))
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # not ours: it propagates
    assert_released(gw)


async def test_cancel_while_waiting_between_tries_releases(
    upstream, clock, make_gw, monkeypatch
) -> None:
    gw = make_gw(upstream.url, keys=1)
    upstream.script.append(answer(503))
    slept = asyncio.Event()

    async def stuck(seconds: float) -> None:
        slept.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(retry, "sleep", stuck)
    client = Client()
    task = asyncio.ensure_future(handler.handle(gw, client.scope, client.receive, client.send))
    await asyncio.wait_for(slept.wait(), 5)
    assert_released(gw)  # the wait between tries holds neither slot nor key
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_released(gw)
