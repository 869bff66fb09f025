"""The server's life cycle around uvicorn: graceful drain on SIGTERM/SIGINT, reload on SIGHUP,
and the pid file `keygate reload` finds the server by.

uvicorn's own `Server.shutdown` already stops accepting, lets running tasks finish up to
`timeout_graceful_shutdown` and then runs the lifespan shutdown (where the gateway releases
its slots and leases and flushes counters). `DrainingServer` adds what a gateway behind a load
balancer needs on top:

- the app learns of the drain from the signal itself (`state.draining`): `/healthz` answers
  503 `draining`, and every request that starts during the drain gets 503 + `Connection: close`
  instead of being served (it can go to another instance);
- kept-alive connections that are idle when the signal comes are not cut at once (a request may
  be on the wire): they get that 503 answer and close, or are closed when their keep-alive
  timeout passes or when the last running request has finished;
- exit status 0 after a drain (uvicorn re-raises the signal, which would kill the process);
- SIGHUP re-reads the config file and applies it (see `reload_app`); the process that owns the
  pid file writes each reload's outcome to `reload.json` beside it, which `keygate reload` waits
  for (a refused file is the command's error, not only a line in the server's log).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from keygate.observe.logs import log

PID_FILE = "keygate.pid"
RELOAD_FILE = "reload.json"  # the last reload's outcome, for `keygate reload` to report
CANCEL_GRACE_S = 5.0  # after the drain time: cancelled requests release their slots and keys


class LifeState:
    """What the signal handlers and the app share in one process."""

    def __init__(self) -> None:
        self.draining = False
        self.drain_started = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloader: Callable[[], Awaitable[None]] | None = None
        self._reload_pending = False
        self._reloading: asyncio.Task[None] | None = None
        self.reload_record: Path | None = None  # set in the process `keygate reload` signals

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()

    def ready(self, reloader: Callable[[], Awaitable[None]]) -> None:
        """The app has started: reloads can run (one asked for during start-up runs now)."""
        self._loop = asyncio.get_running_loop()
        self._reloader = reloader
        if self._reload_pending:
            self._reload_pending = False
            self._start_reload()

    def request_reload(self) -> None:
        """From a signal handler or another thread: run the reloader on the server's loop."""
        if self._loop is None or self._reloader is None:
            self._reload_pending = True
            return
        self._loop.call_soon_threadsafe(self._start_reload)

    def _start_reload(self) -> None:
        if self._reloader is None or self.draining:
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_pending = True  # the running reload reads the file once more after
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_loop())

    async def _reload_loop(self) -> None:
        assert self._reloader is not None
        while True:
            await self._reloader()
            if not self._reload_pending or self.draining:
                return
            self._reload_pending = False


state = LifeState()


def _busy(connection: Any) -> bool:
    """Whether a connection is in the middle of a request (uvicorn's HTTP protocols keep the
    current request/response cycle as `cycle`)."""
    cycle = getattr(connection, "cycle", None)
    return cycle is not None and not getattr(cycle, "response_complete", True)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with keygate's drain (see the module docstring)."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        state.begin_drain()
        super().handle_exit(sig, frame)

    def _on_sighup(self, sig: int, frame: Any) -> None:
        state.request_reload()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers: dict[int, Any] = {
            signal.SIGINT: self.handle_exit,
            signal.SIGTERM: self.handle_exit,
        }
        if hasattr(signal, "SIGHUP"):
            handlers[signal.SIGHUP] = self._on_sighup
        original = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
        # Unlike uvicorn, the signal is not raised again: a drained server exits 0.

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        state.begin_drain()
        drain_s = float(self.config.timeout_graceful_shutdown or 0)
        log.info(
            "draining: not accepting connections; %d request(s) running, up to %g s",
            len(self.server_state.tasks),
            drain_s,
            extra={"event": "drain_start", "running": len(self.server_state.tasks)},
        )
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # Busy connections close after their answer; idle ones stay until they send a request
        # (answered 503 + Connection: close), time out, or the drain ends.
        for connection in list(self.server_state.connections):
            if _busy(connection):
                connection.shutdown()
        deadline = time.monotonic() + drain_s
        tasks = self.server_state.tasks
        while tasks and not self.force_exit and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if tasks:
            log.warning(
                "drain time (%g s) is over: cancelling %d request(s)",
                drain_s,
                len(tasks),
                extra={"event": "drain_timeout", "running": len(tasks)},
            )
            for task in list(tasks):
                task.cancel(msg="keygate: drain time is over")
            with contextlib.suppress(Exception):
                await asyncio.wait(list(tasks), timeout=CANCEL_GRACE_S)
        for connection in list(self.server_state.connections):
            connection.shutdown()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if not self.force_exit:
            await self.lifespan.shutdown()
        log.info(
            "drained in %.1f s", time.monotonic() - state.drain_started, extra={"event": "drained"}
        )


def serve(
    app: Any,
    uvicorn_kwargs: dict[str, Any],
    data_dir: Path | None,
    sockets: list[Any] | None = None,
) -> int:
    """Run one server process until SIGTERM/SIGINT and its drain; the exit status."""
    from keygate.server.listen import make_config

    server = DrainingServer(make_config(app, uvicorn_kwargs))
    with pid_file(data_dir):
        server.run(sockets=sockets)
    if not server.started:
        return STARTUP_FAILURE
    return 0


@contextlib.contextmanager
def pid_file(data_dir: Path | None) -> Generator[Path | None, None, None]:
    """This process's pid in `data_dir/keygate.pid` (0600) while it runs, for `keygate reload`.

    SIGHUP is deferred until the app can reload, so a reload sent right after the file appears
    is not the default action (which would end the process)."""
    if data_dir is None:
        yield None
        return
    state.reload_record = Path(data_dir) / RELOAD_FILE
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda s, f: state.request_reload())
    path = Path(data_dir) / PID_FILE
    mine = str(os.getpid())
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        other = read_pid(path)
        if other and other != os.getpid() and _alive(other):
            log.warning(
                "%s names another running process (pid %d); `keygate reload` will signal this one",
                path,
                other,
            )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(mine + "\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        log.warning(
            "cannot write the pid file %s: %s (keygate reload will not find this server)", path, exc
        )
        yield None
        return
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == mine:
                path.unlink()


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def send_reload(data_dir: Path, wait_s: float = 0) -> tuple[int, str]:
    """`keygate reload`: SIGHUP to the server whose pid file is in `data_dir`, then (for up to
    `wait_s`) its answer. Exit status 0 once it has re-read the file, 2 if it refused the file
    (the running config stays), 1 if there is no server, or no answer in time."""
    path = Path(data_dir) / PID_FILE
    pid = read_pid(path)
    if pid is None:
        return (
            1,
            f"no running keygate found: {path} is missing (is the server running with this KEYGATE_DATA_DIR?)",
        )
    sent = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return 1, f"no running keygate found: {path} names pid {pid}, which has exited"
    except PermissionError:
        return 1, f"cannot signal keygate pid {pid} (from {path}): permission denied"
    if wait_s <= 0:
        return (
            0,
            f"sent SIGHUP to keygate pid {pid}: it re-reads its config file; its log says what changed",
        )
    record = Path(data_dir) / RELOAD_FILE
    deadline = time.monotonic() + wait_s
    while True:
        result = read_reload_result(record)
        if result and result.get("pid") == pid and float(result.get("started", 0)) >= sent:
            break
        if time.monotonic() > deadline:
            return 1, (
                f"sent SIGHUP to keygate pid {pid}, but it did not report the reload within "
                f"{wait_s:g} s; its log says what happened"
            )
        if not _alive(pid):
            return 1, f"keygate pid {pid} exited before it reported the reload"
        time.sleep(0.05)
    status, detail = result.get("status"), str(result.get("detail", ""))
    if status == "ok":
        return 0, f"keygate pid {pid} reloaded: {detail}"
    if status == "refused":
        return 2, f"keygate pid {pid} refused the reload, the running config stays: {detail}"
    return 1, f"keygate pid {pid}: the reload failed part way: {detail}"


def report_reload(started: float, status: str, detail: str) -> None:
    """Record a reload's outcome ("ok", "refused", "failed") for `keygate reload`; only the
    process that owns the pid file does (with --workers, the supervisor)."""
    path = state.reload_record
    if path is None:
        return
    doc = {"pid": os.getpid(), "started": started, "status": status, "detail": detail}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(doc))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s: %s (keygate reload will not see the outcome)", path, exc)


def read_reload_result(path: Path) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


async def reload_app(app: Any) -> None:
    """Re-read the config file and apply it to the running gateway; a bad file changes nothing."""
    from keygate.config.settings import ConfigError, load_settings
    from keygate.runtime.reload import apply_settings

    started = time.time()
    settings = app.settings
    path = settings.config_path
    try:
        new = load_settings(os.environ, path)
    except ConfigError as exc:
        log.error(
            "reload refused, the running config stays: %s",
            exc,
            extra={"event": "reload_refused", "error": str(exc)},
        )
        report_reload(started, "refused", str(exc))
        return
    try:
        changes = await apply_settings(app.gateway, new)
    except Exception as exc:
        log.error(
            "reload failed part way: %s", exc, extra={"event": "reload_failed", "error": str(exc)}
        )
        report_reload(started, "failed", str(exc))
        return
    where = str(path) if path else "environment (no config file)"
    for line in changes:
        log.info("reload: %s", line, extra={"event": "reload_change", "change": line})
    log.info(
        "reload: %s re-read, %d change(s)",
        where,
        len(changes),
        extra={"event": "reload", "changes": len(changes)},
    )
    report_reload(started, "ok", f"{where} re-read, {len(changes)} change(s) (its log lists them)")
