"""`keygate serve --workers N` end to end: one port, N processes, limits split N ways without
Redis, one banner and one admin token, counters that add up, and a clean stop."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import httpx
import pytest

from harness import eventually, fire, wait_log
from keygate.config.settings import load_settings
from keygate.server.workers import worker_env
from keygate.store import create_store

KEYS = ["sk-workers-aaaa0001", "sk-workers-bbbb0002"]


def cfg(**cerebras: Any) -> dict[str, Any]:
    return {"providers": {"cerebras": {"retries": 0, **cerebras}}}


def keys_env() -> dict[str, str]:
    return {"CEREBRAS_API_KEYS": ",".join(KEYS)}


def admin_token(gw: Any) -> str:
    """The first-start admin token from the banner (printed once the workers are up)."""
    found = re.search(r"admin token\s+(kg-admin-\S+)", wait_log(gw, r"admin token\s+kg-admin-"))
    assert found
    return found[1]


def health_by_pid(gw: Any, token: str, want: int = 2) -> dict[int, dict[str, Any]]:
    """/healthz details of each worker: a new connection per request, until `want` pids
    answered."""
    seen: dict[int, dict[str, Any]] = {}
    auth = {"Authorization": f"Bearer {token}"}

    def all_answered() -> bool:
        doc = httpx.get(gw.url + "/healthz", headers=auth, timeout=5).json()
        seen[doc["pid"]] = doc
        return len(seen) >= want

    eventually(all_answered, 10, f"{want} workers answer /healthz", interval=0)
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_gone(pids: list[int], what: str, timeout: float = 15) -> None:
    def left() -> list[int]:
        return [p for p in pids if alive(p)]

    eventually(lambda: not left(), timeout, what, interval=0.1, context=left)


@pytest.mark.slow
async def test_two_workers_one_port_split_limits_and_sigterm_stops_all(
    gateway_factory: Any, mock: Any
) -> None:
    rps, burst, n = 10.0, 6, 40
    gw = gateway_factory(
        args=["--workers", "2"],
        env=keys_env(),
        config=cfg(rps=rps, burst=burst, max_conn=0, queue=500, queue_timeout_s=30),
        admin_password=None,  # the first-start admin token must be made once, not per worker
    )

    # Both processes answer on the one port, neither is the supervisor.
    workers = health_by_pid(gw, admin_token(gw))
    assert len(workers) == 2, workers.keys()
    assert gw.proc.pid not in workers
    for doc in workers.values():  # each worker holds half the burst
        assert doc["providers"]["cerebras"]["tokens"] == burst // 2

    # One banner, saying how the limits are split, with one admin token that every worker takes.
    log = gw.log()
    assert log.count("  listening ") == 1, log
    assert "limits split across 2 workers" in log, log
    tokens = re.findall(r"admin token\s+(kg-admin-\S+)", log)
    assert len(tokens) == 1, log
    for _ in range(20):  # new connections: both workers see the request
        r = httpx.get(
            gw.url + "/api/keys", headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=10
        )
        assert r.status_code == 200, r.text

    # Combined, the two workers never exceed the whole configured limit.
    statuses = await fire(gw, n)
    assert statuses == [200] * n
    arrivals = sorted(r.started for r in mock.records())
    assert len(arrivals) == n
    t0 = arrivals[0]
    for i, t in enumerate(arrivals, start=1):
        allowed = burst + rps * (t - t0)
        assert i <= allowed + 0.5, f"request {i} at +{t - t0:.3f}s exceeds {allowed:.2f}"
    admitted = {
        pid: doc["providers"]["cerebras"]["admitted"]
        for pid, doc in health_by_pid(gw, tokens[0]).items()
    }
    print(f"{n} requests over 2 workers in {arrivals[-1] - t0:.2f}s, admitted per pid {admitted}")
    assert sum(admitted.values()) == n and all(admitted.values()), admitted

    # SIGTERM to the supervisor stops every worker; their counter flushes add up in the store.
    pids = list(workers)
    assert gw.stop(signal.SIGTERM, timeout=20) == 0, gw.log()
    wait_gone(pids, "no worker outlives the supervisor")
    with pytest.raises(httpx.HTTPError):
        httpx.get(gw.url + "/healthz", timeout=1)
    store = create_store(f"sqlite:///{gw.data_dir / 'keygate.db'}")
    await store.open()
    try:
        assert (await store.provider_totals())["cerebras"]["requests"] == n
    finally:
        await store.close()


@pytest.mark.slow
def test_workers_stop_when_the_supervisor_is_killed(gateway_factory: Any) -> None:
    gw = gateway_factory(args=["--workers", "2"], env=keys_env())
    pids = list(health_by_pid(gw, gw.admin_password))
    assert len(pids) == 2
    gw.kill9()
    try:
        wait_gone(pids, "orphaned workers stop")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
async def test_a_replaced_worker_starts_on_the_accepted_config_not_a_broken_file(
    gateway_factory: Any, mock: Any
) -> None:
    """Someone saves a broken config file (no reload asked, or a reload refused); a worker then
    dies. Its replacement starts on the config the supervisor accepted: it serves, instead of
    failing in a loop while connections queue on its socket unanswered."""
    gw = gateway_factory(args=["--workers", "2"], env=keys_env(), config=cfg(max_conn=0))
    token = gw.admin_password
    first = list(health_by_pid(gw, token))
    config_arg = gw.argv[gw.argv.index("--config") + 1]
    with open(config_arg, "w") as f:
        f.write("providers:\n  cerebras:\n    rps: -3\n")
    os.kill(first[0], signal.SIGKILL)
    wait_gone([first[0]], "the killed worker is gone")

    def replaced() -> bool:
        pids = set(health_by_pid(gw, token))
        return bool(pids - set(first))

    eventually(replaced, 20, "a new worker answers", interval=0.1)
    statuses = await fire(gw, 20)
    assert statuses == [200] * 20
    assert "exited with 2" not in gw.log(), gw.log()


def test_worker_env_carries_cli_settings_and_splits_the_fleet(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kg.yaml").write_text("providers: {groq: {rps: 6}}\n")
    env = {"KEYGATE_FLEET_SIZE": "2", "KEYGATE_DATA_DIR": "rel-data", "PORT": "9999"}
    settings = load_settings(env, "kg.yaml", {"host": "0.0.0.0", "port": 8123, "workers": 3})
    got = worker_env(settings)
    assert got["KEYGATE_HOST"] == "0.0.0.0" and got["KEYGATE_PORT"] == "8123"
    assert got["KEYGATE_FLEET_SIZE"] == "6"  # 3 workers x 2 instances share every limit
    assert got["KEYGATE_CONFIG"] == str(tmp_path / "kg.yaml")
    assert got["KEYGATE_DATA_DIR"] == str(tmp_path / "rel-data")
    assert got["KEYGATE_WORKER_BANNER"] == "0"
    # What a worker reads back from that environment.
    worker = load_settings({**env, **got})
    assert (worker.host, worker.port, worker.fleet_size) == ("0.0.0.0", 8123, 6)
    assert worker.providers["groq"].rps == 6
