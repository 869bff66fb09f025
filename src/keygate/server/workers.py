"""`keygate serve --workers N`: N worker processes serving one port.

The supervisor (this process) does everything that must happen once, then runs the workers:

1. gets the listening sockets `serve` bound before anything else happened (a busy port fails
   there): on Linux one SO_REUSEPORT socket per worker, so the kernel spreads connections evenly
   (see `keygate.server.listen.bind_sockets`; KEYGATE_REUSEPORT=0 falls back to one shared socket);
2. opens the store and starts a gateway once: migrations, the switch to encryption, importing the
   keys from env/config and generating the first-start admin token all happen here, in one
   process, instead of racing in N workers (N tokens, of which only the last would work);
3. prints the banner (with that admin token, and how the limits are split), so the workers
   don't: they run with KEYGATE_WORKER_BANNER=0;
4. spawns the workers (`Supervisor`: spawn context, each a uvicorn server on its socket; a worker
   that dies is replaced; SIGTERM/SIGINT stop them all, each drains and flushes its counters).

Workers build their app with `create_worker_app` (settings from the environment, see
`worker_env`, and the config file's text as the supervisor last accepted it: a worker replaced
after someone saved a broken file starts on the config the others run, instead of failing in a
loop while its socket's queue fills). Without Redis every worker is its own limiter, so each takes its share of every
limit: KEYGATE_FLEET_SIZE = N x the user's KEYGATE_FLEET_SIZE, which the gateway divides rps,
burst and max_conn by. With Redis the limits are shared and the fleet size only sizes the local
fallback used while Redis is unreachable, which is again per worker. A worker whose supervisor
vanished (kill -9) stops itself instead of serving on as an orphan.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from uvicorn.config import STARTUP_FAILURE

from keygate.config.settings import Settings, read_config_text
from keygate.observe.logs import log, print_block
from keygate.server import lifecycle

SUPERVISOR_ENV = "KEYGATE_SUPERVISOR_PID"
ORPHAN_CHECK_S = 1.0
FLUSH_GRACE_S = 10.0  # after uvicorn's graceful shutdown: the lifespan's counter flush
YOUNG_DEATH_S = 10.0  # a worker that dies sooner is restarted after a growing pause
MAX_RESTART_PAUSE_S = 30.0


def worker_env(settings: Settings, args: argparse.Namespace | None = None) -> dict[str, str]:
    """Environment for the workers: the supervisor's settings, CLI flags included, as env vars.

    Paths are made absolute so a worker reads the same files whatever its working directory.
    """
    env = {
        "KEYGATE_HOST": settings.host,
        "KEYGATE_PORT": str(settings.port),
        "KEYGATE_WORKERS": str(settings.workers),
        "KEYGATE_DATA_DIR": str(Path(settings.data_dir).resolve()),
        "KEYGATE_FLEET_SIZE": str(worker_fleet_size(settings.workers, settings.fleet_size)),
        "KEYGATE_WORKER_BANNER": "0",
        SUPERVISOR_ENV: str(os.getpid()),
    }
    config = getattr(args, "config", None) or settings.config_path
    if config:
        env["KEYGATE_CONFIG"] = str(Path(config).resolve())
    return env


def worker_fleet_size(workers: int, fleet_size: int) -> int:
    """How many independent limiters share each limit: N workers x the configured fleet size."""
    return max(1, workers) * max(1, fleet_size)


def _split_line(settings: Settings, workers: int, user_fleet: int) -> str:
    share = worker_fleet_size(workers, user_fleet)
    of = f" ({workers} workers x fleet size {user_fleet})" if user_fleet > 1 else ""
    if settings.redis_url:
        return (
            f"  workers       {workers} processes on port {settings.port}; limits shared through "
            f"Redis (while it is unreachable: 1/{share} of each limit per worker{of})"
        )
    return (
        f"  workers       {workers} processes on port {settings.port}; limits split across "
        f"{workers} workers: each takes 1/{share} of every rps, burst and max_conn{of}"
    )


async def prepare(settings: Settings, workers: int, user_fleet: int) -> str:
    """Initialise the store once (migrations, env keys, admin token); return the banner."""
    from keygate.admin.credentials import AdminCredentials
    from keygate.runtime.gateway import Gateway

    gateway = Gateway(settings)
    credentials = AdminCredentials(settings)
    await gateway.start()
    try:
        await credentials.load(gateway.store)
        from keygate.server.app import banner

        return banner(gateway, credentials, _split_line(settings, workers, user_fleet))
    finally:
        await gateway.stop()


def run_workers(
    settings: Settings,
    args: argparse.Namespace,
    options: dict[str, Any],
    sockets: list[socket.socket],
) -> int:
    """Serve with `settings.workers` processes on the bound `sockets` (`server.bind_sockets`)
    until SIGTERM/SIGINT; the exit status. `options` are every worker's uvicorn settings."""
    from keygate.observe.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    workers = settings.workers
    user_fleet = settings.fleet_size
    os.environ.update(worker_env(settings, args))
    settings.fleet_size = worker_fleet_size(workers, user_fleet)  # as the workers see it
    banner = asyncio.run(prepare(settings, workers, user_fleet))
    print_block(banner, "start", port=settings.port, pid=os.getpid(), workers=workers)
    uvicorn_kwargs = {**options, "port": settings.port}
    config_text = read_config_text(settings.config_path) if settings.config_path else None
    with lifecycle.pid_file(settings.data_dir):  # `keygate reload` signals the supervisor
        return Supervisor(workers, sockets, uvicorn_kwargs, config_text).run()


_accepted_config: str | None = None  # in a worker: the config text its supervisor accepted


def _worker_main(
    uvicorn_kwargs: dict[str, Any], sock: socket.socket, index: int, config_text: str | None
) -> None:
    """A worker process (spawned): one uvicorn server on its socket, app from the environment."""
    global _accepted_config
    from keygate.server.listen import make_config

    _accepted_config = config_text
    os.environ["KEYGATE_WORKER_INDEX"] = str(index)
    options = {**uvicorn_kwargs, "factory": True}
    server = lifecycle.DrainingServer(
        make_config("keygate.server.workers:create_worker_app", options)
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    """Keeps N worker processes running until SIGTERM/SIGINT, then stops them gracefully.

    A worker that dies is replaced on the same socket (after a growing pause if it keeps dying
    young); one that fails at start-up stops the whole server, since every replacement would fail
    the same way. The count is fixed: the limits were split N ways. SIGHUP: the config file is
    checked here once (a bad one is refused with one line), then every worker re-reads it.
    """

    def __init__(
        self,
        count: int,
        sockets: list[socket.socket],
        uvicorn_kwargs: dict[str, Any],
        config_text: str | None = None,
    ) -> None:
        self.count = count
        self.config_text = config_text  # what a new worker starts from: the last accepted
        self.sockets = sockets
        self.uvicorn_kwargs = uvicorn_kwargs
        self.grace_s = float(uvicorn_kwargs.get("timeout_graceful_shutdown") or 5) + FLUSH_GRACE_S
        self.procs: list[Any] = [None] * count
        self.started_at = [0.0] * count
        self.restart_at = [0.0] * count
        self.quick_deaths = [0] * count
        self.stopping = threading.Event()
        self.reload_asked = threading.Event()
        self.failed = False
        self._ctx = multiprocessing.get_context("spawn")

    def _spawn(self, index: int) -> None:
        sock = self.sockets[index % len(self.sockets)]
        proc = self._ctx.Process(
            target=_worker_main,
            args=(self.uvicorn_kwargs, sock, index, self.config_text),
            name=f"keygate-worker-{index}",
        )
        # A SIGHUP before the worker has its handler would end it: it starts with SIGHUP ignored
        # (the disposition survives exec) until its server takes the signal over.
        old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            proc.start()
        finally:
            signal.signal(signal.SIGHUP, old)
        self.procs[index] = proc
        self.started_at[index] = time.monotonic()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping.set()

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reload_asked.set()

    def _reload(self) -> None:
        self.reload_asked.clear()
        from keygate.config.settings import ConfigError, load_settings, read_config_text

        started = time.time()
        try:
            path = os.environ.get("KEYGATE_CONFIG")
            text = read_config_text(Path(path)) if path else None
            load_settings(os.environ, config_text=text)  # the workers' environment and file
        except ConfigError as exc:
            log.error(
                "reload refused, the running config stays: %s",
                exc,
                extra={"event": "reload_refused", "error": str(exc)},
            )
            lifecycle.report_reload(started, "refused", str(exc))
            return
        self.config_text = text
        live = [p for p in self.procs if p is not None and p.is_alive()]
        log.info(
            "reload: config file checked; asking %d worker(s) to re-read it",
            len(live),
            extra={"event": "reload_forward", "workers": len(live)},
        )
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGHUP)
        lifecycle.report_reload(
            started, "ok", f"config file checked; asked {len(live)} worker(s) to re-read it"
        )

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._on_sighup)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        for index in range(self.count):
            self._spawn(index)
        while not self.stopping.is_set():
            multiprocessing.connection.wait(
                [p.sentinel for p in self.procs if p is not None], timeout=0.2
            )
            if not self.stopping.is_set():
                self._replace_dead()
            if self.reload_asked.is_set() and not self.stopping.is_set():
                self._reload()
        self._stop_all()
        return 1 if self.failed else 0

    def _replace_dead(self) -> None:
        now = time.monotonic()
        for index, proc in enumerate(self.procs):
            if proc is None:
                if now >= self.restart_at[index]:
                    self._spawn(index)
                continue
            if proc.is_alive():
                continue
            proc.join()
            if proc.exitcode == STARTUP_FAILURE:
                log.error("worker %d failed to start; stopping the server", index)
                self.failed = True
                self.stopping.set()
                return
            young = now - self.started_at[index] < YOUNG_DEATH_S
            self.quick_deaths[index] = self.quick_deaths[index] + 1 if young else 0
            pause = min(MAX_RESTART_PAUSE_S, 0.5 * 2 ** self.quick_deaths[index]) if young else 0
            log.warning(
                "worker %d (pid %s) exited with %s; restarting it%s",
                index,
                proc.pid,
                proc.exitcode,
                f" in {pause:g} s" if pause else "",
            )
            self.procs[index] = None
            self.restart_at[index] = now + pause
            if not pause:
                self._spawn(index)

    def _stop_all(self) -> None:
        # Close our copies of the listening sockets first: while one stays open the kernel
        # keeps completing handshakes into its queue after the workers have stopped accepting.
        for sock in self.sockets:
            sock.close()
        live = [p for p in self.procs if p is not None and p.is_alive()]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for proc in live:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in live:
            if proc.is_alive():
                log.error("worker pid %s did not stop in %g s; killed", proc.pid, self.grace_s)
                proc.kill()
                proc.join(5)


def _watch_supervisor(supervisor_pid: int) -> None:
    """Stop this worker (gracefully, via SIGTERM) once its supervisor is gone."""
    while True:
        if os.getppid() != supervisor_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(ORPHAN_CHECK_S)


def create_worker_app() -> Any:
    """Factory run in each worker process: the normal app, plus an orphan watch."""
    from keygate.server.app import create_app

    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if supervisor.isdigit():
        threading.Thread(
            target=_watch_supervisor, args=(int(supervisor),), name="keygate-orphan", daemon=True
        ).start()
    return create_app(_accepted_config)
