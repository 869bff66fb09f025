"""Throwaway PostgreSQL and Redis servers on loopback for tests (random free ports, temp dirs).

`start_postgres(tmpdir)` runs a fresh cluster (initdb + pg_ctl, trust auth, fsync off) and gives
back a handle with `.dsn` (the `postgres` database as superuser `postgres`), `.port`,
`.database_dsn(name)` and `.stop()`. `start_redis(tmpdir)` runs `redis-server` without persistence
and gives back `.url`, `.port` and `.stop()`. Both stop their server at interpreter exit if the
caller did not. PostgreSQL refuses to run as root, so under root the cluster runs as the
`postgres` system user in a directory of its own (pytest's tmp dirs are private to root).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import eventually

__all__ = [
    "PostgresServer",
    "RedisServer",
    "free_port",
    "postgres_bin",
    "redis_bin",
    "start_postgres",
    "start_redis",
]


_INITDB_ARGS = ["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]
_STOP = ["stop", "-m", "immediate", "-w", "-t", "30"]
_REDIS_ARGS = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian layout, or PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    return None


def redis_bin() -> str | None:
    return shutil.which("redis-server")


def _as_postgres_user() -> list[str]:
    """Command prefix to run the server's tools as a non-root user when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    bin_dir: Path
    prefix: list[str]
    own_dir: bool
    stopped: bool = field(default=False)

    @property
    def dsn(self) -> str:
        return self.database_dsn("postgres")

    def database_dsn(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def log(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        with contextlib.suppress(Exception):
            subprocess.run(
                [*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *_STOP],
                capture_output=True,
                timeout=60,
            )
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start_postgres(tmpdir: str | os.PathLike[str]) -> PostgresServer:
    """Start a fresh cluster; raises RuntimeError (with the server log) if it does not come up."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt install postgresql)")
    prefix = _as_postgres_user()
    if prefix:
        # The postgres user must reach the directory: pytest's tmp dirs are root-only (0700).
        data_dir = Path(tempfile.mkdtemp(prefix="keygate-pg-"))
        shutil.chown(data_dir, "postgres", "postgres")
        own_dir = True
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="pg-", dir=tmpdir))
        own_dir = False
    try:
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data_dir), *_INITDB_ARGS],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    last = ""
    for _ in range(5):  # another process may grab the free port between probe and start
        port = free_port()
        options = (
            f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        start = ["-l", str(data_dir / "server.log"), "-w", "-t", "60", "start"]
        proc = subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, *start],
            capture_output=True,
            timeout=120,
        )
        server = PostgresServer(data_dir, port, bin_dir, prefix, own_dir)
        if proc.returncode == 0:
            atexit.register(server.stop)
            return server
        last = server.log() or proc.stderr.decode(errors="replace")
        if "already in use" not in last:
            break
    shutil.rmtree(data_dir, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start:\n{last}")


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def log(self) -> str:
        try:
            return (self.data_dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _answers(proc: subprocess.Popen[bytes], port: int, timeout: float = 10) -> bool:
    """Whether the redis-server `proc` answers on `port` (False: it exited, or not in time)."""

    def state() -> str | None:
        if proc.poll() is not None:
            return "exited"
        return "up" if _redis_ping(port) else None

    with contextlib.suppress(AssertionError):  # neither within `timeout`
        return eventually(state, timeout, "redis-server answers or exits") == "up"
    return False


def start_redis(tmpdir: str | os.PathLike[str], port: int | None = None) -> RedisServer:
    """Start redis-server without persistence; `port` to restart one on the same port."""
    binary = redis_bin()
    if binary is None:
        raise RuntimeError("redis-server not found (apt install redis-server)")
    data_dir = Path(tmpdir)
    data_dir.mkdir(parents=True, exist_ok=True)
    last = ""
    for _ in range(5):
        chosen = port or free_port()
        log_path = data_dir / "redis.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [binary, "--port", str(chosen), *_REDIS_ARGS, "--dir", str(data_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = RedisServer(proc, chosen, data_dir)
        if _answers(proc, chosen):
            atexit.register(server.stop)
            return server
        server.stop()
        last = server.log()
        if port is not None or "in use" not in last:
            break
    raise RuntimeError(f"redis-server did not start:\n{last}")
