"""Child processes for the benchmark: spawned pinned, in their own group, always stopped.

Every server and load generator runs in a new session so that one `killpg` stops it and all its
children, and so that a Ctrl-C in the terminal reaches only the harness, which then stops them in
order. Nothing here ever signals a process it did not start.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPU the server under test gets and which the upstreams and load share."""

    server_cpu: int | None = None
    load_cpu: int | None = None

    @property
    def enabled(self) -> bool:
        return self.server_cpu is not None

    def server(self, cmd: Sequence[str]) -> list[str]:
        return self._wrap(self.server_cpu, cmd)

    def load(self, cmd: Sequence[str]) -> list[str]:
        return self._wrap(self.load_cpu, cmd)

    @staticmethod
    def _wrap(cpu: int | None, cmd: Sequence[str]) -> list[str]:
        return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else list(cmd)


def detect_pinning() -> Pinning:
    """Pin only when taskset exists and we may use two CPUs; otherwise run unpinned."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return Pinning()
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return Pinning()
    return Pinning(server_cpu=cpus[0], load_cpu=cpus[1])


def free_port() -> int:
    """A port the kernel says is free now; the tiny race with another binder is acceptable here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    """500 streams through a proxy need > 1,000 descriptors; children inherit the raised limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 65536), hard))
    except (ImportError, ValueError, OSError):
        pass


@dataclass(slots=True)
class Proc:
    """A started child: its command, log file, and the moment it was spawned."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    spawned_at: float
    cmd: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the child wrote (stdout and stderr share one file)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the whole group, then SIGKILL what is left after `grace_s`; idempotent."""
        if not self.stopped:
            self.stopped = True
            stop_group(self.popen, grace_s)


def stop_group(popen: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Stop a child started with `start_new_session=True` and everything in its group."""
    pgid = popen.pid  # a session leader's group id is its own pid
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace_s)
    # The leader may be gone while workers of its group linger: kill the group regardless.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=grace_s)


def spawn(
    name: str, cmd: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Proc:
    """Start `cmd` in its own session with output to `<log_dir>/<name>.log`."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        spawned_at = time.perf_counter()
        popen = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    return Proc(name=name, popen=popen, log_path=log_path, spawned_at=spawned_at, cmd=list(cmd))


def run_bounded(
    cmd: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a load generator to completion; kill its group if it overruns or we are interrupted."""
    popen = subprocess.Popen(
        list(cmd),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = popen.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(popen, grace_s=1.0)
        out, err = popen.communicate()
        return (
            -1,
            out.decode(errors="replace"),
            f"timed out after {timeout_s:.0f}s\n" + err.decode(errors="replace"),
        )
    except BaseException:
        stop_group(popen, grace_s=1.0)
        raise
    return popen.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def wait_port(port: int, proc: Proc | None, timeout_s: float) -> bool:
    """True once something accepts on `port`; False on timeout or when `proc` exits first."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if proc is not None and not proc.alive():
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return True
        time.sleep(0.005)
    return False


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    """One request on a fresh connection; raises OSError when nothing listens yet."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---- memory ------------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        rest = stat[stat.rfind(b")") + 2 :].split()
        if len(rest) > 1:
            kids.setdefault(int(rest[1]), []).append(int(entry))
    return kids


def _vm_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` and all its descendants, in MB (MiB); None if it is gone."""
    if not os.path.exists(f"/proc/{pid}"):
        return None
    kids = _children_map()
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _vm_rss_kb(p)
        todo.extend(kids.get(p, ()))
    return total / 1024.0
