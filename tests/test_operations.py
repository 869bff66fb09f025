"""Running keygate as a service: graceful drain on SIGTERM, reload on SIGHUP / `keygate reload`,
JSON logs, and the container's entry command. Real `keygate serve` processes against the mock."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml

from harness import CHAT, PASSWORD, fire, free_port, start_gateway, wait_healthy, wait_log
from keygate.store import create_store

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-ops-drain-0123456789abcdefghij"
KEY2 = "sk-ops-second-9876543210zyxwvuts"
STREAM_CHUNKS = 20
CHUNK_S = 0.25  # a stream lasts about 5 s
DRAIN_S = 20


def events(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e.strip()]


async def http_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, dict[str, str], bytes]:
    """One GET on an open kept-alive connection; (status, headers, body)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, body


async def refused(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    w.close()
    return False


async def stored_counts(data_dir: Path) -> tuple[int, int]:
    store = create_store(f"sqlite:///{data_dir / 'keygate.db'}")
    await store.open()
    try:
        recs = await store.load_keys("cerebras")
    finally:
        await store.close()
    return sum(r.use_count for r in recs), sum(r.ok for r in recs)


async def drain_scenario(gw: Any, mock: Any) -> dict[str, Any]:
    url = f"{gw.url}/cerebras/v1/chat/completions"
    body = {**CHAT, "stream": True}
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:

        async def stream() -> tuple[int, bytes]:
            async with s.post(url, json=body, headers=gw.auth()) as r:
                return r.status, await r.read()

        out["reference"] = await stream()  # the whole stream, undisturbed
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        status, _, _ = await http_on(reader, writer, "/healthz")
        assert status == 200
        mock.reset_peak()
        tasks = [asyncio.ensure_future(stream()) for _ in range(20)]
        deadline = time.monotonic() + 10
        while mock.inflight < 20:  # every stream has reached the upstream
            assert time.monotonic() < deadline, f"only {mock.inflight} streams started"
            await asyncio.sleep(0.02)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)

        # /healthz on the connection opened before the signal says `draining`, then it closes
        deadline = time.monotonic() + 5
        while True:
            status, headers, doc = await http_on(reader, writer, "/healthz")
            if status == 503:
                break
            assert status == 200 and time.monotonic() < deadline
            await asyncio.sleep(0.02)
        out["health"] = (status, headers, json.loads(doc))
        out["health_eof"] = await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

        deadline = time.monotonic() + 5
        while not await refused(gw.port):
            assert time.monotonic() < deadline, "still accepting connections"
            await asyncio.sleep(0.02)
        out["refused_while_streaming"] = not all(t.done() for t in tasks)
        out["streams"] = await asyncio.gather(*tasks)
    out["exit"] = await asyncio.to_thread(gw.proc.wait, DRAIN_S + 10)
    out["exit_after_s"] = time.monotonic() - signalled
    return out


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])
def test_sigterm_drains_running_streams(gateway_factory, mock, workers: int) -> None:
    mock.set_behavior(chunks=STREAM_CHUNKS, chunk_interval_s=CHUNK_S)
    gw = gateway_factory(
        config={"providers": {"cerebras": {"rps": 0, "max_conn": 0, "keys": [KEY]}}},
        env={"KEYGATE_DRAIN_S": str(DRAIN_S), "KV_FLUSH_INTERVAL_MS": "600000"},
        args=["--workers", str(workers)] if workers > 1 else [],
    )
    pid_path = gw.data_dir / "keygate.pid"
    assert pid_path.read_text().strip() == str(gw.proc.pid)
    assert stat.S_IMODE(pid_path.stat().st_mode) == 0o600

    out = asyncio.run(drain_scenario(gw, mock))

    ref_status, ref_body = out["reference"]
    assert ref_status == 200 and ref_body.rstrip().endswith(b"data: [DONE]")
    for status, body in out["streams"]:
        assert status == 200
        assert len(events(body)) == len(events(ref_body))
        assert body.rstrip().endswith(b"data: [DONE]")
    status, headers, doc = out["health"]
    assert doc["status"] == "draining" and headers.get("connection") == "close"
    assert out["health_eof"]
    assert out["refused_while_streaming"]
    assert out["exit"] == 0, gw.log()
    assert out["exit_after_s"] < DRAIN_S
    # counters are only flushed at exit here (KV_FLUSH_INTERVAL_MS is long): all 21 streams
    assert asyncio.run(stored_counts(gw.data_dir)) == (21, 21)
    assert not pid_path.exists()
    assert "Traceback" not in gw.log()


def test_drain_time_is_bounded(gateway_factory, mock) -> None:
    """A stream longer than KEYGATE_DRAIN_S is cut at the drain time; the exit is still 0."""
    mock.set_behavior(chunks=100, chunk_interval_s=0.2)
    gw = gateway_factory(
        config={"providers": {"cerebras": {"keys": [KEY]}}}, env={"KEYGATE_DRAIN_S": "1"}
    )

    async def go() -> float:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{gw.url}/cerebras/v1/chat/completions",
                json={**CHAT, "stream": True},
                headers=gw.auth(),
            ) as r,
        ):
            await r.content.readany()
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        await asyncio.to_thread(gw.proc.wait, 15)
        return time.monotonic() - t0

    took = asyncio.run(go())
    assert gw.proc.returncode == 0, gw.log()
    assert took < 8
    assert "drain time (1 s) is over: cancelling 1 request(s)" in gw.log()


def write_config(path: Path, rps: float, keys: list[str], extra: str = "", queue: int = 0) -> None:
    cerebras: dict[str, Any] = {"rps": rps, "burst": max(1, int(rps)), "max_conn": 0}
    cerebras["queue"] = queue
    if queue:
        cerebras["queue_timeout_s"] = 2
    doc: dict[str, Any] = {"providers": {"cerebras": cerebras}}
    doc["providers"]["cerebras"]["keys"] = keys
    path.write_text(yaml.safe_dump(doc) + extra)


def ok_count(gw: Any, n: int = 10) -> int:
    return asyncio.run(fire(gw, n)).count(200)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])
def test_reload_applies_new_limits_and_refuses_a_bad_file(
    tmp_path: Path, mock, workers: int
) -> None:
    cfg = tmp_path / "keygate.yaml"
    write_config(cfg, 1, [KEY])
    gw = start_gateway(
        tmp_path,
        mock,
        args=["--config", str(cfg), *(["--workers", str(workers)] if workers > 1 else [])],
    )
    try:
        # rps 1, burst 1, no queue: of 10 at once, one per limiter gets through
        assert ok_count(gw) <= workers

        # a short queue: the bucket keeps the tokens it had (a reload grants no free burst), so
        # requests right after it wait a few ms for the new rate's tokens; at rps 1 the 2 s
        # queue timeout would let through at most 3 per limiter
        write_config(cfg, 500, [KEY, KEY2], queue=20)
        mark = len(gw.log())
        gw.proc.send_signal(signal.SIGHUP)
        changes_line = r"reload: .* re-read, \d+ change"
        tail = wait_log(gw, changes_line if workers == 1 else rf"(?s)({changes_line}.*){{2}}", mark)
        assert "providers.cerebras.rps: 1.0 -> 500.0" in tail
        assert "providers.cerebras.keys: 1 key(s) added" in tail
        assert ok_count(gw) == 10
        assert mock.count(KEY2) > 0  # the key new in the file serves at once

        # a broken file: refused with the start-up error, the running config stays
        cfg.write_text("providers:\n  cerebras:\n    rps: -3\n")
        check = subprocess.run(
            [sys.executable, "-m", "keygate", "config", "check", str(cfg)],
            capture_output=True,
            text=True,
            env=gw.env,
        )
        start_error = check.stderr.strip().removeprefix("keygate: ")
        assert check.returncode == 2 and "rps" in start_error
        mark = len(gw.log())
        gw.proc.send_signal(signal.SIGHUP)
        tail = wait_log(gw, "reload refused", mark)
        assert f"reload refused, the running config stays: {start_error}" in tail
        assert ok_count(gw) == 10
        assert gw.proc.poll() is None

        # `keygate reload` does what SIGHUP does
        write_config(cfg, 1, [KEY, KEY2])
        mark = len(gw.log())
        env = {**gw.env, "KEYGATE_CONFIG": str(tmp_path / "not-read.yaml")}
        done = subprocess.run(
            [sys.executable, "-m", "keygate", "reload"], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        assert f"pid {gw.proc.pid}" in done.stdout
        wait_log(gw, "providers.cerebras.rps: 500.0 -> 1.0", mark)
        if workers > 1:
            wait_log(gw, r"(?s)(rps: 500.0 -> 1.0.*){2}", mark)
        assert ok_count(gw) <= workers
    finally:
        assert gw.stop() == 0, gw.log()
    after = subprocess.run(
        [sys.executable, "-m", "keygate", "reload"], capture_output=True, text=True, env=gw.env
    )
    assert after.returncode == 1 and "no running keygate" in after.stderr


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])
def test_json_logs_one_object_per_line_and_no_whole_key(
    gateway_factory, mock, workers: int
) -> None:
    bad_key = "sk-ops-invalid-abcdefghijklmnop0000"
    mock.set_behavior(bad_key, status=401)
    mock.push(KEY, status=500)
    gw = gateway_factory(
        config={"providers": {"cerebras": {"rps": 0, "max_conn": 0, "keys": [KEY, bad_key]}}},
        env={"KEYGATE_LOG_FORMAT": "json", "KEYGATE_DRAIN_S": "5"},
        args=["--workers", str(workers)] if workers > 1 else [],
    )
    sent = 0
    with gw.client() as c:
        for _ in range(4):
            assert c.post("/cerebras/v1/chat/completions", json=CHAT, headers=gw.auth())
            sent += 1
        with c.stream(
            "POST",
            "/cerebras/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=gw.auth(),
        ) as r:
            r.read()
        sent += 1
        assert c.post("/cerebras/v1/chat/completions", json=CHAT).status_code == 401
        assert c.get("/nope/v1/models", headers=gw.auth()).status_code == 404
        sent += 2
        assert c.get("/api/keys", headers=gw.admin()).status_code == 200
    gw.proc.send_signal(signal.SIGHUP)
    wait_log(gw, '"event":"reload"', 0)
    if workers > 1:  # every worker has reloaded before the file changes again
        wait_log(gw, r'(?s)("event":"reload".*){2}', 0)
    Path(gw.argv[-1]).write_text("providers: [")  # a broken file: an error event
    gw.proc.send_signal(signal.SIGHUP)
    wait_log(gw, '"event":"reload_refused"', 0)
    assert gw.stop() == 0
    text = gw.log()
    docs = [json.loads(line) for line in text.splitlines()]  # every line is one object
    assert all({"time", "level", "event"} <= d.keys() for d in docs)
    requests = [d for d in docs if d["event"] == "request"]
    assert len(requests) == sent
    for d in requests:
        assert {"provider", "key_id", "key", "client", "route", "status", "upstream_status"} <= (
            d.keys()
        )
        assert {"latency_ms", "retries", "error"} <= d.keys()
    assert any(d["retries"] for d in requests)
    assert any(d["status"] == 200 and d["key"] and d["key_id"] for d in requests)
    assert any(d["status"] == 401 and d["error"] for d in requests)
    assert all(d["client"] == "127.0.0.1" for d in requests)
    kinds = {d["event"] for d in docs}
    assert {"start", "request", "reload", "drain_start", "drained"} <= kinds
    assert any(d["level"] == "error" and "invalid YAML" in d["error"] for d in docs)
    for secret in (KEY, bad_key, PASSWORD, gw.admin_password):
        assert secret not in text


def test_entry_command_of_the_container_serves(tmp_path: Path, mock) -> None:
    """The Dockerfile's CMD, run directly (no image can be built here): it serves /healthz on the
    port it is given, with the data dir the image declares as its volume."""
    text = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    env_lines = dict(re.findall(r"^ENV (\w+)=(\S+)", text, re.M))
    assert env_lines["KEYGATE_HOST"] == "0.0.0.0"
    volume = json.loads(re.search(r"^VOLUME (\[.*\])$", text, re.M).group(1))
    assert env_lines["KEYGATE_DATA_DIR"] in volume
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    port = free_port()
    data = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")},
        **{k: v for k, v in env_lines.items() if k != "KEYGATE_HOST"},
        "KEYGATE_HOST": "127.0.0.1",  # tests listen on loopback only
        "KEYGATE_PORT": str(port),
        "KEYGATE_DATA_DIR": str(data),
        "ADMIN_PASSWORD": "container-admin",
    }
    argv = [shutil.which(cmd[0]) or cmd[0], *cmd[1:]]
    if cmd[0] == "keygate" and not shutil.which("keygate"):
        argv = [sys.executable, "-m", "keygate", *cmd[1:]]
    log = tmp_path / "container.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        from harness import Gateway

        gw = Gateway(proc, port, data, log, env, argv)
        wait_healthy(gw)
        probe = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.M)
        assert probe
        hc = json.loads(probe.group(1))
        check = subprocess.run(
            [sys.executable if hc[0].startswith("python") else hc[0], *hc[1:]],
            env=env,
            capture_output=True,
            timeout=10,
        )
        assert check.returncode == 0, check.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "ok"
        assert (data / "keygate.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "keygate.service").read_text()
    for line in (
        "DynamicUser=yes",
        "StateDirectory=keygate",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "Environment=KEYGATE_DATA_DIR=/var/lib/keygate",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))
    assert stop_s > 30  # longer than the default KEYGATE_DRAIN_S
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # the unit's keygate lives in /opt/keygate; point it at this one so the check can run
    unit = tmp_path / "keygate.service"
    unit.write_text(text.replace("/opt/keygate/bin/keygate", f"{sys.executable} -m keygate"))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True
    )
    score = re.search(r"Overall exposure level for keygate.service: ([\d.]+)", security.stdout)
    assert score and float(score.group(1)) < 2.5, security.stdout[-500:]


def test_deploy_examples_name_only_documented_variables() -> None:
    readme = (ROOT / "README.md").read_text()
    names = set(
        re.findall(
            r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / "deploy" / "keygate.env.example").read_text(), re.M
        )
    )
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    names |= set(compose["services"]["keygate"]["environment"])
    assert {"KEYGATE_LOG_FORMAT", "KEYGATE_DRAIN_S", "ACCESS_PASSWORD"} <= names
    for name in names - {"CEREBRAS_API_KEYS"}:
        assert f"`{name}`" in readme, name
    assert set(compose["services"]) == {"keygate", "redis", "postgres"}
