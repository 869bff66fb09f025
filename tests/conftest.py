"""Shared fixtures: a mock upstream in a thread, and real `keygate serve` processes on loopback.

`gateway_factory(env=..., config=...)` starts keygate as a subprocess exactly as a user would
(console script, env vars, optional YAML), waits for /healthz, and gives back a handle with its
URL, admin credentials, captured log and stop/kill. Every provider's base URL points at the mock.
Helpers live in `harness.py` (a unique module name: `conftest` exists twice in this tree).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import ADMIN_PASSWORD, PASSWORD, Gateway, free_port, mock_env, wait_healthy
from keygate.testing.mock_upstream import MockUpstream


@pytest.fixture(scope="session")
def mock_session() -> Iterator[MockUpstream]:
    mock = MockUpstream().start()
    yield mock
    mock.stop()


@pytest.fixture
def mock(mock_session: MockUpstream) -> MockUpstream:
    """The session's mock, reset for this test."""
    mock_session.reset()
    return mock_session


@pytest.fixture
def gateway_factory(tmp_path: Path, mock: MockUpstream) -> Iterator[Any]:
    started: list[Gateway] = []

    def start(
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        data_dir: Path | None = None,
        password: str | None = PASSWORD,
        admin_password: str | None = ADMIN_PASSWORD,
        port: int | None = None,
        args: list[str] | None = None,
        wait: bool = True,
    ) -> Gateway:
        port = port or free_port()
        data_dir = data_dir or tmp_path / f"data-{len(started)}"
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
            cfg_path = tmp_path / f"config-{len(started)}.yaml"
            cfg_path.write_text(yaml.safe_dump(config))
            argv += ["--config", str(cfg_path)]
        log_path = tmp_path / f"keygate-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        gw = Gateway(
            proc, port, data_dir, log_path, full_env, argv, password or "", admin_password or ""
        )
        started.append(gw)
        if wait:
            wait_healthy(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
