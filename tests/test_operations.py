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
from urllib.parse import unquote, urlsplit

import aiohttp
import httpx
import pytest
import yaml

from harness import (
    CHAT,
    PASSWORD,
    console_script,
    eventually_async,
    fire,
    free_port,
    start_gateway,
    wait_healthy,
    wait_log,
)
from keygate.control.keypool import mask
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
        await eventually_async(
            lambda: mock.inflight >= 20,
            10,
            "every stream has reached the upstream",
            context=lambda: f"{mock.inflight} started",
        )
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)

        # /healthz on the connection opened before the signal says `draining`, then it closes
        async def draining() -> tuple[int, dict[str, str], Any] | None:
            status, headers, doc = await http_on(reader, writer, "/healthz")
            assert status in (200, 503), status  # ok until it says draining
            return (status, headers, json.loads(doc)) if status == 503 else None

        out["health"] = await eventually_async(draining, 5, "/healthz says draining")
        out["health_eof"] = await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

        await eventually_async(lambda: refused(gw.port), 5, "new connections refused")
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
    cerebras["affinity"] = "off"  # round-robin over the same request (no SPEC §15 pin)
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
def test_keygate_reload_fails_with_the_reason_when_the_server_refuses_the_file(
    tmp_path: Path, mock, workers: int
) -> None:
    cfg = tmp_path / "keygate.yaml"
    write_config(cfg, 1, [KEY])
    gw = start_gateway(
        tmp_path,
        mock,
        args=["--config", str(cfg), *(["--workers", str(workers)] if workers > 1 else [])],
    )

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "keygate", "reload"],
            capture_output=True,
            text=True,
            env=gw.env,
            timeout=60,
        )

    try:
        cfg.write_text("providers:\n  cerebras:\n    rps: -3\n")
        check = subprocess.run(
            [sys.executable, "-m", "keygate", "config", "check", str(cfg)],
            capture_output=True,
            text=True,
            env=gw.env,
        )
        reason = check.stderr.strip().removeprefix("keygate: ")
        assert check.returncode == 2 and "rps" in reason
        refused = reload()
        assert refused.returncode == 2, (refused.stdout, refused.stderr)
        assert refused.stdout == ""
        assert refused.stderr.strip() == (
            f"keygate: keygate pid {gw.proc.pid} refused the reload, the running config stays: "
            f"{reason}"
        )
        assert ok_count(gw) <= workers  # still the old limits
        write_config(cfg, 500, [KEY])
        done = reload()
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"keygate pid {gw.proc.pid} reloaded: "), done.stdout
        if workers == 1:
            assert re.search(rf"{re.escape(str(cfg))} re-read, [1-9]\d* change", done.stdout)
        else:
            assert "asked 2 worker(s) to re-read it" in done.stdout
        assert (gw.data_dir / "reload.json").stat().st_mode & 0o777 == 0o600
    finally:
        assert gw.stop() == 0, gw.log()


def test_keys_are_labelled_by_where_they_came_from(tmp_path: Path, mock) -> None:
    """A key the config file lists is `config`, one from `<NAME>_API_KEYS` is `env`, at start
    and on reload; a provider new in the file on reload gets its keys at once."""
    env_key, file_key, later_key, new_key = (
        f"{tag}-src-0123456789-{tag}" for tag in ("envk", "file", "late", "newp")
    )
    cfg = tmp_path / "keygate.yaml"
    doc: dict[str, Any] = {"providers": {"cerebras": {"keys": [file_key]}}}
    cfg.write_text(yaml.safe_dump(doc))
    gw = start_gateway(tmp_path, mock, env={"GROQ_API_KEYS": env_key}, args=["--config", str(cfg)])
    try:

        def sources() -> dict[str, str]:
            keys = gw.api("GET", "/api/keys").json()["keys"]
            return {k["masked"]: k["source"] for k in keys}

        masked = {k: mask(k) for k in (env_key, file_key, later_key, new_key)}
        assert sources() == {masked[file_key]: "config", masked[env_key]: "env"}
        doc["providers"]["cerebras"]["keys"] = [file_key, later_key]
        doc["providers"]["acme"] = {"base_url": mock.url, "keys": [new_key]}
        cfg.write_text(yaml.safe_dump(doc))
        done = subprocess.run(
            [sys.executable, "-m", "keygate", "reload"],
            capture_output=True,
            text=True,
            env=gw.env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert sources() == {
            masked[file_key]: "config",
            masked[env_key]: "env",
            masked[later_key]: "config",
            masked[new_key]: "config",
        }
        r = httpx.post(f"{gw.url}/acme/v1/chat/completions", json=CHAT, headers=gw.auth())
        assert r.status_code == 200, r.text
        assert mock.count(new_key) == 1
    finally:
        assert gw.stop() == 0, gw.log()


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
    argv = [console_script(cmd[0]), *cmd[1:]]  # the image's PATH has it; ours may be a venv's
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
    readme = (ROOT / "docs" / "configuration.md").read_text()  # the configuration reference
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


NASTY_PASSWORD = "p@ss/w%rd:#?&=40 x"  # everything a URL gives a meaning to


def compose_env(service: str, values: dict[str, str]) -> dict[str, str]:
    """A compose service's environment as `docker compose` interpolates it from `values`."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())

    def one(m: re.Match[str]) -> str:
        return values[m.group(1)]

    return {
        k: re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", one, str(v))
        for k, v in compose["services"][service]["environment"].items()
    }


def test_compose_takes_a_postgres_password_with_url_characters() -> None:
    values = {"ACCESS_PASSWORD": "a", "ADMIN_PASSWORD": "b", "POSTGRES_PASSWORD": NASTY_PASSWORD}
    env = compose_env("keygate", values)
    url = urlsplit(env["KEYGATE_DB"])
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "postgresql",
        "postgres",
        5432,
        "/keygate",
    )
    assert url.username == "keygate"
    # the password reaches keygate whole, as the postgres service has it
    password = unquote(url.password) if url.password is not None else env.get("PGPASSWORD")
    assert password == compose_env("postgres", values)["POSTGRES_PASSWORD"] == NASTY_PASSWORD


@pytest.mark.postgres
def test_the_postgres_password_can_come_from_pgpassword(tmp_path: Path, mock) -> None:
    """What compose.yaml relies on: KEYGATE_DB without a password, the password (any
    characters) in PGPASSWORD, on a server that checks it."""
    from servers import postgres_bin, start_postgres

    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries not installed")
    server = start_postgres(tmp_path)
    try:

        async def prepare() -> None:
            import asyncpg

            conn = await asyncpg.connect(server.dsn)
            try:
                secret = NASTY_PASSWORD.replace("'", "''")
                await conn.execute(f"CREATE ROLE kg LOGIN PASSWORD '{secret}'")
                await conn.execute("CREATE DATABASE kg OWNER kg")
            finally:
                await conn.close()

        asyncio.run(prepare())
        hba = server.data_dir / "pg_hba.conf"  # the role must give its password
        hba.write_text("host all kg 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        subprocess.run(
            [*server.prefix, str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), "reload"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        dsn = f"postgresql://kg@127.0.0.1:{server.port}/kg"
        env = {"KEYGATE_DB": dsn, "PGPASSWORD": NASTY_PASSWORD}
        gw = start_gateway(tmp_path, mock, env=env)
        try:
            assert "postgresql" in gw.log()
            added = gw.api("POST", "/api/keys", json={"provider": "groq", "key": KEY})
            assert added.status_code in (200, 201), added.text
            cli_env = {**gw.env}

            def keys_list(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-m", "keygate", "keys", "list", "--json"],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=60,
                )

            listed = keys_list(cli_env)
            assert listed.returncode == 0, listed.stderr
            assert json.loads(listed.stdout)["total"] == 1
            # the server really checks it: without PGPASSWORD the CLI is refused
            refused = keys_list({k: v for k, v in cli_env.items() if k != "PGPASSWORD"})
            assert refused.returncode != 0
            assert "password" in refused.stderr.lower(), refused.stderr
        finally:
            assert gw.stop() == 0, gw.log()
    finally:
        server.stop()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether `docker build` leaves `path` (relative, with /) out of the context: a pattern
    matches the path or one of its parent directories (`**` any number of directories)."""
    out = False
    for raw in patterns:
        keep = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            else:
                c = pattern[i]
                rx += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                i += 1
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(re.fullmatch(rx, p) for p in prefixes):
            out = not keep
    return out


def test_docker_context_leaves_out_local_state_and_keeps_the_build_inputs() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    for path in (
        ".venv/bin/python",
        ".ci/agents/node_modules/x/package.json",
        "artifacts/screenshots/keys-desktop.png",
        "keygate-data/keygate.db",
        "src/keygate_gateway.egg-info/PKG-INFO",
        "src/keygate/__pycache__/cli.cpython-311.pyc",
        "build/lib/keygate/cli.py",
        "dist/keygate_gateway-0.1.0-py3-none-any.whl",
        ".pytest_cache/README.md",
        ".ruff_cache/CACHEDIR.TAG",
        "bench/results/run.json",
        ".git/HEAD",
    ):
        assert dockerignored(path, patterns), path
    # what the Dockerfile copies stays in
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for path in [p for line in copied for p in line.split()]:
        assert (ROOT / path).exists(), path
        assert not dockerignored(path, patterns), path
    assert not dockerignored("src/keygate/admin/ui/static/app.css", patterns)


def test_docs_cite_nothing_a_reader_of_the_repository_cannot_find() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for pattern in (r"\bSPEC\b", r"§\s*\d", r"\bseed \d{3}\b"):
            found = re.search(pattern, text)
            assert found is None, f"{doc.name}: {found.group(0)!r}"


def readme_commands() -> tuple[str, str]:
    """The two commands of the README's "The two commands", as written there."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## The two commands\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)\n```$", section, re.M | re.S)
    assert len(blocks) == 2, blocks
    return blocks[0], blocks[1]


def test_readme_commands_install_into_a_virtual_environment() -> None:
    """A stock Debian 12 / Ubuntu 24.04 python3 refuses `pip install` outside a virtual
    environment (PEP 668): both commands make one and use only what is in it."""
    install, tests = readme_commands()
    steps = [s.strip() for s in install.split("&&")]
    assert steps[0] == "python3 -m venv .venv"
    assert steps[1] == ".venv/bin/pip install ."
    assert re.fullmatch(r"(\w+=\S+ )+\.venv/bin/keygate serve", steps[2]), steps[2]
    assert len(steps) == 3
    assert tests == "bash .ci/install && .venv/bin/python -m pytest -q"
    readme = (ROOT / "README.md").read_text()
    assert "apt-get\ninstall python3-venv" in readme or "apt-get install python3-venv" in readme
    # CI runs exactly the README's test command; .ci/install fills that same .venv
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in run if "pytest" in line or ".ci/install" in line] == [
        f"{tests} || status=$?"
    ]
    ci_install = (ROOT / ".ci" / "install").read_text()
    assert "python3 -m venv .venv" in ci_install
    assert ".venv/bin/python -m pip install" in ci_install
    assert "python3-venv" in ci_install
    assert not re.search(r"^\s*python3 -m pip install", ci_install, re.M)
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_distribution_name_is_not_the_taken_one() -> None:
    """`keygate` on PyPI is an unrelated project: the distribution has a name of its own, the
    README says how to install it by that name; the package and the command stay `keygate`."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = project["name"]
    assert name != "keygate" and name.startswith("keygate-")
    assert project["scripts"] == {"keygate": "keygate.cli:main"}
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"pipx install {name}" in readme and f"pip install {name}" in readme
