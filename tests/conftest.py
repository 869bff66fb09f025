"""Shared fixtures: a mock upstream in a thread, and real `keygate serve` processes on loopback.

`gateway_factory(env=..., config=...)` starts keygate as a subprocess exactly as a user would
(console script, env vars, optional YAML), waits for /healthz, and gives back a handle with its
URL, admin credentials, captured log and stop/kill. Every provider's base URL points at the mock.
Helpers live in `harness.py` (a unique module name: `conftest` exists twice in this tree).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Gateway, start_gateway, wait_healthy
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
    """Start as many gateways as a test needs (see `harness.start_gateway`); all are stopped
    after it."""
    started: list[Gateway] = []

    def start(wait: bool = True, **kw: Any) -> Gateway:
        kw.setdefault("data_dir", tmp_path / f"data-{len(started)}")
        gw = start_gateway(tmp_path, mock, name=f"keygate-{len(started)}", wait=False, **kw)
        started.append(gw)  # stopped at teardown even when it never became healthy
        if wait:
            wait_healthy(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
