"""Helpers shared by the tests (imported as `harness`; conftest.py only holds fixtures)."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import yaml

from keygate.config.catalog import BUILTINS, env_names
from keygate.store import Store, create_store
from keygate.testing.mock_upstream import MockUpstream

T = TypeVar("T")

PASSWORD = "gw-test-password"
ADMIN_PASSWORD = "admin-test-password"


def console_script(name: str = "keygate") -> str:
    """The console script `name` of the Python running the tests (a virtual environment's
    `bin/` is not on PATH unless activated), else whatever PATH finds; `name` if neither."""
    here = Path(sysconfig.get_path("scripts")) / name
    if here.exists():
        return str(here)
    return shutil.which(name) or name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    argv: list[str]
    password: str = PASSWORD
    admin_password: str = ADMIN_PASSWORD
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.password}"}

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_password}"}

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.request(method, path, headers={**self.admin(), **kw.pop("headers", {})}, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


def wait_healthy(gw: Gateway, timeout: float = 15) -> None:
    def healthy() -> bool:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"keygate exited with {gw.proc.returncode}:\n{gw.log()}")
        return httpx.get(gw.url + "/healthz", timeout=1).status_code == 200

    eventually(
        healthy,
        timeout,
        "keygate answers /healthz with 200",
        interval=0.05,
        ignoring=httpx.HTTPError,
        context=gw.log,
    )


def start_gateway(
    work_dir: Path,
    mock: MockUpstream,
    *,
    env: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    data_dir: Path | None = None,
    password: str | None = PASSWORD,
    admin_password: str | None = ADMIN_PASSWORD,
    port: int | None = None,
    args: list[str] | None = None,
    wait: bool = True,
    name: str = "keygate",
) -> Gateway:
    """`keygate serve` as a subprocess on loopback, every provider pointed at `mock`; its
    config, log and (by default) data dir live in `work_dir` under `name`."""
    port = port or free_port()
    data_dir = data_dir or work_dir / f"{name}-data"
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEYS")
        and not k.startswith(("KEYGATE_", "ACCESS_", "AUTH_", "ADMIN_"))
    }
    full_env.update(mock_env(mock))
    full_env.update(
        {
            "KEYGATE_DATA_DIR": str(data_dir),
            "KEYGATE_HOST": "127.0.0.1",
            "KEYGATE_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if password:
        full_env["ACCESS_PASSWORD"] = password
    if admin_password:
        full_env["ADMIN_PASSWORD"] = admin_password
    full_env.update(env or {})
    argv = [sys.executable, "-m", "keygate", "serve", *(args or [])]
    if config is not None:
        cfg_path = work_dir / f"{name}-config.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        argv += ["--config", str(cfg_path)]
    log_path = work_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    gw = Gateway(
        proc, port, data_dir, log_path, full_env, argv, password or "", admin_password or ""
    )
    if wait:
        try:
            wait_healthy(gw)
        except BaseException:
            gw.stop()
            raise
    return gw


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def fire(gw: Gateway, n: int, stream: bool = False) -> list[int]:
    """`n` chat completions at once through `gw`'s cerebras prefix; their statuses."""
    body = {**CHAT, "stream": True} if stream else CHAT
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.post(
                f"{gw.url}/cerebras/v1/chat/completions", json=body, headers=gw.auth()
            ) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one() for _ in range(n))))


def mock_env(mock: MockUpstream) -> dict[str, str]:
    return {env_names(name, "BASE_URL")[0]: mock.url for name in BUILTINS}


POLL_S = 0.02  # how often `eventually` looks again, unless told


def eventually(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    what: str = "the condition",
    *,
    interval: float = POLL_S,
    ignoring: type[BaseException] | tuple[type[BaseException], ...] = (),
    context: Callable[[], object] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that: every test that
    waits for something waits here, for the thing itself rather than for a guessed time.

    Exceptions of the `ignoring` types count as "not yet" (a server still starting); any
    other exception, a failed assert included, ends the wait at once. After `timeout` seconds
    it fails naming `what` and the last value seen (and `context()`, e.g. a log, when given),
    so a timeout reads as the behaviour that did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = predicate()
        except ignoring as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_not_within(timeout, what, last, context))
        time.sleep(interval)


async def eventually_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,
    what: str = "the condition",
    *,
    interval: float = POLL_S,
    ignoring: type[BaseException] | tuple[type[BaseException], ...] = (),
    context: Callable[[], object] | None = None,
) -> T:
    """`eventually` for a test's own event loop: its tasks run between polls, and `predicate`
    may be a coroutine function (a store read, an HTTP call)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = predicate()
            if inspect.isawaitable(last):
                last = await last
        except ignoring as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_not_within(timeout, what, last, context))
        await asyncio.sleep(interval)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """The former name of `eventually`, kept for tests written against it: the seconds it
    took. New tests call `eventually`."""
    start = time.monotonic()
    eventually(predicate, timeout, what)
    return time.monotonic() - start


def _not_within(
    timeout: float, what: str, last: object, context: Callable[[], object] | None
) -> str:
    seen = repr(last)
    if len(seen) > 2000:
        seen = seen[:2000] + "…"
    message = f"not within {timeout:g} s: {what} (last seen: {seen})"
    if context is not None:
        try:
            told = str(context())
        except Exception as exc:  # the timeout is the news, not a failing look around
            told = f"(context unavailable: {exc!r})"
        message += f"\n{told[-4000:]}"
    return message


def wait_log(gw: Any, pattern: str, after: int = 0, timeout: float = 10) -> str:
    """The gateway's log from offset `after`, once `pattern` appears in it (the access log is
    written in batches, a moment after the request)."""

    def tail() -> str | None:
        text: str = gw.log()[after:]
        return text if re.search(pattern, text) else None

    return eventually(
        tail,
        timeout,
        f"{pattern!r} in the log",
        interval=0.05,
        context=lambda: gw.log()[after:],
    )


def admission(gw: Gateway, provider: str) -> dict[str, Any]:
    """`provider`'s admission state as the gateway reports it (in_flight, queued, paused_for_s)."""
    r = httpx.get(gw.url + "/healthz", headers=gw.admin(), timeout=5)
    assert r.status_code == 200, r.text
    return dict(r.json()["providers"][provider])


def idle(gw: Gateway, provider: str) -> bool:
    """No request of `provider` holds a slot or waits for one."""
    state = admission(gw, provider)
    return state["in_flight"] == 0 and state["queued"] == 0


@asynccontextmanager
async def _second_store(gw: Gateway) -> AsyncIterator[Store]:
    location = gw.env.get("KEYGATE_DB") or f"sqlite:///{(gw.data_dir / 'keygate.db').resolve()}"
    store = create_store(location, gw.env.get("KEYGATE_SECRET_KEY", ""))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def with_store(gw: Gateway, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run `fn` on a second connection to `gw`'s store, as the CLI or another instance would:
    a write made here reaches the gateway only through its change feed."""

    async def run() -> T:
        async with _second_store(gw) as store:
            return await fn(store)

    return asyncio.run(run())


def wait_for_store(
    gw: Gateway, predicate: Callable[[Store], Awaitable[object]], timeout: float, what: str
) -> object:
    """`eventually` on what `gw`'s store holds, read over one second connection (opening one per
    poll would compete with the gateway's own writes)."""

    async def run() -> object:
        async with _second_store(gw) as store:
            return await wait_for_store_async(store, predicate, timeout, what)

    return asyncio.run(run())


async def wait_for_store_async(
    store: Store, predicate: Callable[[Store], Awaitable[object]], timeout: float, what: str
) -> object:
    return await eventually_async(lambda: predicate(store), timeout, what, interval=0.05)
