"""The servers under test (bare, keygate, LiteLLM) and the streaming mock, started as children.

Each start returns a `Target` once the server has proxied a first request (that moment is its
start-up time), or raises `StartError` whose message is the one line to print: a server that does
not come up is reported and the run goes on with the others.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keygate
from keygate.benchmark.procs import HOST, Pinning, Proc, free_port, http_request, spawn, wait_port

ACCESS_PASSWORD = "bench-pass"
ADMIN_PASSWORD = "bench-admin"
MODEL = "bench-model"
AUTH_HEADERS = {"Authorization": f"Bearer {ACCESS_PASSWORD}", "Content-Type": "application/json"}
CHAT_BODY = (
    b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"Say hello."}],'
    b'"max_tokens":32}'
)
# the unified endpoint's case: the same request, its model naming a provider (`groq/…`)
UNIFIED_MODEL = "groq/" + MODEL
UNIFIED_BODY = CHAT_BODY.replace(b'"' + MODEL.encode() + b'"', b'"' + UNIFIED_MODEL.encode() + b'"')
FAKE_KEYS = [f"csk-bench{i:02d}" + "x" * 40 for i in range(8)]
GROQ_KEYS = [f"gsk-bench{i:02d}" + "x" * 40 for i in range(8)]


class StartError(RuntimeError):
    """A server did not come up; str() is the message for the user."""


@dataclass(slots=True)
class Target:
    """Where the load goes: a running server (or the stand-in itself, for direct)."""

    name: str
    port: int
    path: str
    proc: Proc | None = None
    startup_s: float | None = None
    command: list[str] = field(default_factory=list)
    import_s: float | None = None  # `keygate keys import` of the extra keys, when there were any
    body: bytes = CHAT_BODY  # what each request sends (the unified case names groq/… in it)
    script: Path | None = None  # its wrk script, when not the run's default

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for children: our own keygate source first on the path, nothing stray.

    Settings the user may have exported for their own gateway (KEYGATE_*, provider keys and
    bases, passwords) are dropped so every run measures the same configuration.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not (
            k.startswith("KEYGATE_")
            or k.endswith(("_API_KEYS", "_BASE_URL"))
            or k in ("PORT", "ACCESS_PASSWORD", "AUTH_PASSWORD", "ADMIN_PASSWORD", "BARE_UPSTREAM")
        )
    }
    src = str(Path(keygate.__file__).resolve().parent.parent)
    paths = [src, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def _fail(name: str, proc: Proc, why: str) -> StartError:
    tail = proc.log_tail()
    proc.stop()
    return StartError(f"{name} failed to start: {why}" + (f"\n{tail}" if tail else ""))


def wait_proxied(
    name: str, proc: Proc, port: int, path: str, timeout_s: float, body: bytes = CHAT_BODY
) -> float:
    """Poll with real proxied requests until one answers 2xx; returns seconds since spawn.

    A server that answers HTTP but keeps refusing the request (401, 404, 502 …) is given a few
    more seconds and then reported with its last answer, rather than waiting out the timeout.
    """
    deadline = time.perf_counter() + timeout_s
    answered_at: float | None = None
    last = "no answer"
    while True:
        now = time.perf_counter()
        if not proc.alive():
            raise _fail(name, proc, f"exited with code {proc.popen.returncode}")
        if now > deadline or (answered_at is not None and now - answered_at > 3.0):
            raise _fail(
                name, proc, f"no successful proxied request within {timeout_s:.0f}s ({last})"
            )
        try:
            status, data = http_request(port, "POST", path, body, AUTH_HEADERS, timeout_s=5.0)
        except OSError as exc:
            last = f"{type(exc).__name__}"
            time.sleep(0.003)
            continue
        done = time.perf_counter()
        if 200 <= status < 300:
            return done - proc.spawned_at
        answered_at = answered_at or done
        last = f"last answer {status}: {data[:200].decode(errors='replace')}"
        time.sleep(0.02)


def wait_http(name: str, proc: Proc, port: int, path: str, timeout_s: float) -> float:
    """Wait for a 200 on a cheap GET (readiness of the streaming instance); seconds since spawn."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if not proc.alive():
            raise _fail(name, proc, f"exited with code {proc.popen.returncode}")
        try:
            status, _ = http_request(port, "GET", path, timeout_s=5.0)
            if path == "/" or status == 200:
                return time.perf_counter() - proc.spawned_at
        except OSError:
            pass
        time.sleep(0.005)
    raise _fail(name, proc, f"GET {path} did not answer 200 within {timeout_s:.0f}s")


# ---- bare -------------------------------------------------------------------------------------


def start_bare(
    upstream: str, pin: Pinning, log_dir: Path, timeout_s: float, probe: bool = True
) -> Target:
    port = free_port()
    cmd = [sys.executable, "-m", "keygate.benchmark.bare_proxy", "--port", str(port)]
    cmd += ["--upstream", upstream]
    proc = spawn(f"bare-{port}", pin.server(cmd), log_dir, child_env())
    path = "/v1/chat/completions"
    if probe:
        startup = wait_proxied("bare", proc, port, path, timeout_s)
    else:
        startup = wait_http("bare", proc, port, "/", timeout_s)
    return Target("bare", port, path, proc, startup, cmd)


# ---- keygate ----------------------------------------------------------------------------------


def write_keygate_config(path: Path, upstream: str, extra: Mapping[str, Any] | None = None) -> None:
    """Provider settings with limits out of the way (`extra` provider settings added or in
    their place); groq too, for the unified case."""
    settings: dict[str, Any] = {"rps": 0, "max_conn": 0, "queue": 100000, "retries": 0}
    settings.update(extra or {})
    lines = ["providers:"]
    for name in ("cerebras", "groq"):
        lines += [
            f"  {name}:",
            f"    base_url: {upstream}",
            *(f"    {key}: {value}" for key, value in settings.items()),
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def keygate_command() -> list[str]:
    """The `keygate` console script, or `python -m keygate` when it is not installed."""
    script = shutil.which("keygate")
    if script:
        return [script]
    if importlib.util.find_spec("keygate.__main__") is None:
        raise StartError(
            "keygate failed to start: neither a `keygate` command nor keygate/__main__.py exists"
        )
    return [sys.executable, "-m", "keygate"]


def start_keygate(
    upstream: str,
    pin: Pinning,
    work_dir: Path,
    log_dir: Path,
    timeout_s: float,
    keys: list[str] | None = None,
    probe: bool = True,
    label: str = "keygate",
    extra_env: Mapping[str, str] | None = None,
    provider_extra: Mapping[str, Any] | None = None,
) -> Target:
    """Start `keygate serve` on `upstream` with auth on and 8 env keys, plus `keys` imported
    into its store first with `keygate keys import`, the way a user loads many keys."""
    port = free_port()
    data_dir = work_dir / f"{label}-{port}"
    data_dir.mkdir(parents=True)
    cfg = data_dir / "keygate.yaml"
    write_keygate_config(cfg, upstream, provider_extra)
    env = child_env(
        {
            "KEYGATE_DATA_DIR": str(data_dir),
            "ACCESS_PASSWORD": ACCESS_PASSWORD,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "KV_FLUSH_INTERVAL_MS": "5000",
            "CEREBRAS_API_KEYS": ",".join(FAKE_KEYS),
            "GROQ_API_KEYS": ",".join(GROQ_KEYS),
            **(extra_env or {}),
        }
    )
    import_s = None
    if keys:
        key_file = data_dir / "keys.txt"
        key_file.write_text("\n".join(keys) + "\n", encoding="utf-8")
        started = time.perf_counter()
        done = subprocess.run(
            [*keygate_command(), "keys", "import", "cerebras", str(key_file), "--config", str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            raise StartError(f"keygate keys import failed: {done.stderr.strip()[-300:]}")
        import_s = time.perf_counter() - started
    cmd = [*keygate_command(), "serve", "--host", HOST, "--port", str(port), "--config", str(cfg)]
    proc = spawn(f"{label}-{port}", pin.server(cmd), log_dir, env)
    path = "/cerebras/v1/chat/completions"
    if probe:
        startup = wait_proxied("keygate", proc, port, path, timeout_s)
    else:
        startup = wait_http("keygate", proc, port, "/healthz", timeout_s)
    return Target("keygate", port, path, proc, startup, cmd, import_s)


# ---- Redis (for the shared-state form) ---------------------------------------------------------


def start_redis(pin: Pinning, log_dir: Path, timeout_s: float = 10.0) -> tuple[Proc, str]:
    """A throwaway redis-server on the load CPU: no persistence, loopback only."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        raise StartError("redis-server not found (Debian: apt-get install redis-server)")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    proc = spawn(f"redis-{port}", pin.load(cmd), log_dir)
    if not wait_port(port, proc, timeout_s):
        proc.stop()
        raise StartError(f"redis-server failed to start: {proc.log_tail()}")
    return proc, f"redis://{HOST}:{port}/0"


# ---- LiteLLM (optional) -----------------------------------------------------------------------


def litellm_available() -> bool:
    return importlib.util.find_spec("litellm") is not None


def start_litellm(
    upstream: str, pin: Pinning, work_dir: Path, log_dir: Path, timeout_s: float, probe: bool = True
) -> Target:
    """LiteLLM's proxy, one worker, one model routed to the same upstream."""
    port = free_port()
    cfg = work_dir / f"litellm-{port}.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-bench\n",
        encoding="utf-8",
    )
    script = shutil.which("litellm")
    base = [script] if script else [sys.executable, "-m", "litellm.proxy.proxy_cli"]
    cmd = [*base, "--config", str(cfg), "--host", HOST, "--port", str(port), "--num_workers", "1"]
    proc = spawn(f"litellm-{port}", pin.server(cmd), log_dir, child_env())
    path = "/v1/chat/completions"
    if probe:
        startup = wait_proxied("litellm", proc, port, path, timeout_s)
    else:
        startup = wait_http("litellm", proc, port, "/health/liveliness", timeout_s)
    return Target("litellm", port, path, proc, startup, cmd)


# ---- streaming mock ---------------------------------------------------------------------------


def start_mock(
    pin: Pinning,
    log_dir: Path,
    chunks: int,
    interval_s: float,
    timeout_s: float = 15.0,
    text: str | None = None,
) -> Target:
    """The project's mock upstream, streaming `chunks` content events `interval_s` apart."""
    if importlib.util.find_spec("keygate.testing.mock_upstream") is None:
        raise StartError("mock upstream failed to start: keygate.testing.mock_upstream not found")
    port = free_port()
    cmd = [sys.executable, "-m", "keygate.testing.mock_upstream", "--port", str(port)]
    cmd += ["--no-record", "--chunks", str(chunks), "--chunk-interval", str(interval_s)]
    if text is not None:
        cmd += ["--text", text]
    proc = spawn(f"mock-{port}", pin.load(cmd), log_dir, child_env())
    if not wait_port(port, proc, timeout_s):
        raise _fail("mock upstream", proc, "did not listen in time")
    return Target("direct", port, "/v1/chat/completions", proc, None, cmd)
