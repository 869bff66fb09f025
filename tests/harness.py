"""Helpers shared by the tests (imported as `harness`; conftest.py only holds fixtures)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from keygate.providers import BUILTINS, env_prefix
from keygate.testing.mock_upstream import MockUpstream

PASSWORD = "gw-test-password"
ADMIN_PASSWORD = "admin-test-password"


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"keygate exited with {gw.proc.returncode}:\n{gw.log()}")
        try:
            if httpx.get(gw.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"keygate did not become healthy:\n{gw.log()}")


def mock_env(mock: MockUpstream) -> dict[str, str]:
    return {f"{env_prefix(name)}_BASE_URL": mock.url for name in BUILTINS}
