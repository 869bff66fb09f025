"""Settings from env and YAML: defaults, overrides, custom providers, and one clear line for every
mistake (`load_settings`, `keygate config check`, and `keygate serve` as a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import console_script, free_port
from keygate.cli import main as cli_main
from keygate.config.catalog import BUILTINS
from keygate.config.settings import ConfigError, load_settings
from keygate.testing.mock_upstream import MockUpstream

# SPEC §2: prefix → (base, key style, rps, burst, max_conn)
SPEC_PROVIDERS = {
    "cerebras": ("https://api.cerebras.ai", "bearer", 4, 8, 6),
    "groq": ("https://api.groq.com/openai", "bearer", 1, 3, 2),
    "claude": ("https://api.anthropic.com", "x-api-key", 2, 2, 1),
    "nvidia": ("https://integrate.api.nvidia.com", "bearer", 3, 6, 5),
    "deepseek": ("https://api.deepseek.com", "bearer", 10, 20, 10),
    "openai": ("https://api.openai.com", "bearer", 10, 20, 10),
    "openrouter": ("https://openrouter.ai/api", "bearer", 5, 10, 8),
    "siliconflow": ("https://api.siliconflow.cn", "bearer", 5, 10, 10),
    "ollama": ("https://ollama.com", "bearer", 10, 10, 5),
    "gemini": ("https://generativelanguage.googleapis.com", "gemini", 3, 5, 3),
    "xai": ("https://api.x.ai", "bearer", 2, 5, 3),
    "pollinations": ("https://gen.pollinations.ai", "bearer", 5, 10, 5),
}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(env: dict[str, str] | None = None, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env or {}, path)
    message = str(info.value)
    assert "\n" not in message
    return message


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without anything keygate reads, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEYS", "_BASE_URL"))
        and not k.startswith(("KEYGATE_", "ACCESS_", "AUTH_", "ADMIN_", "KV_"))
        and k != "PORT"
    }
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- defaults, env


def test_defaults_match_the_spec() -> None:
    s = load_settings({})
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8080, 1)
    assert s.default_provider == "cerebras"
    assert s.flush_interval_ms == 5000
    assert s.access_passwords == []
    assert s.data_dir == Path("keygate-data")
    assert s.admin_path == "/admin/"
    assert s.config_path is None
    assert set(s.providers) == set(SPEC_PROVIDERS) == set(BUILTINS)
    for name, (base, style, rps, burst, max_conn) in SPEC_PROVIDERS.items():
        p = s.providers[name]
        assert (p.base_url, p.key_style, p.rps, p.burst, p.max_conn) == (
            base,
            style,
            rps,
            burst,
            max_conn,
        ), name
        assert p.builtin and p.keys == [] and p.queue == 200 and p.retries == 2


def test_env_values() -> None:
    s = load_settings(
        {
            "KEYGATE_HOST": "0.0.0.0",
            "PORT": "9001",
            "KEYGATE_DATA_DIR": "/tmp/kg",
            "KEYGATE_DEFAULT_PROVIDER": "groq",
            "KV_FLUSH_INTERVAL_MS": "0",
            "KEYGATE_DISGUISE": "NGINX",
            "KEYGATE_ADMIN_PATH": "secret-admin",
            "CEREBRAS_API_KEYS": "k1, k2\nk3  k1,,'k4'",
            "GROQ_BASE_URL": "http://127.0.0.1:9/openai/",
        }
    )
    assert (s.host, s.port, s.data_dir) == ("0.0.0.0", 9001, Path("/tmp/kg"))
    assert s.default_provider == "groq"
    assert s.flush_interval_ms == 0
    assert s.disguise == "nginx"
    assert s.admin_path == "/secret-admin/"
    assert s.providers["cerebras"].keys == ["k1", "k2", "k3", "k4"]
    assert s.providers["groq"].base_url == "http://127.0.0.1:9/openai"
    # KEYGATE_PORT wins over PORT
    assert load_settings({"PORT": "9001", "KEYGATE_PORT": "9002"}).port == 9002


def test_passwords_comma_separated_with_alias() -> None:
    s = load_settings({"ACCESS_PASSWORD": "one, two words ,one", "AUTH_PASSWORD": "three"})
    assert s.access_passwords == ["one", "two words", "three"]
    assert load_settings({"AUTH_PASSWORD": "only-alias"}).access_passwords == ["only-alias"]
    assert load_settings({"ACCESS_PASSWORD": " , "}).access_passwords == []


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"KEYGATE_PORT": "abc"}, ["KEYGATE_PORT", "'abc'", "whole number"]),
        ({"PORT": "8o8o"}, ["PORT", "'8o8o'", "whole number"]),
        ({"KEYGATE_PORT": "70000"}, ["KEYGATE_PORT", "70000", "port number"]),
        ({"KEYGATE_PORT": "-1"}, ["KEYGATE_PORT", "-1", "≥ 0"]),
        ({"KV_FLUSH_INTERVAL_MS": "-1"}, ["KV_FLUSH_INTERVAL_MS", "-1", "≥ 0"]),
        ({"KV_FLUSH_INTERVAL_MS": "5s"}, ["KV_FLUSH_INTERVAL_MS", "'5s'", "whole number"]),
        ({"KEYGATE_WORKERS": "0"}, ["KEYGATE_WORKERS", "≥ 1"]),
        ({"KEYGATE_DISGUISE": "apache"}, ["KEYGATE_DISGUISE", "'apache'", "nginx"]),
        ({"KEYGATE_DB": "mysql://u:pw@h/db"}, ["KEYGATE_DB", "'mysql'", "postgresql://"]),
        ({"KEYGATE_DEFAULT_PROVIDER": "nosuch"}, ["KEYGATE_DEFAULT_PROVIDER", "'nosuch'"]),
        ({"CEREBRAS_BASE_URL": "ftp://x"}, ["CEREBRAS_BASE_URL", "'ftp://x'", "http(s) URL"]),
        ({"KEYGATE_ADMIN_PATH": "/api/"}, ["KEYGATE_ADMIN_PATH", "'/api/'"]),
        ({"KEYGATE_ADMIN_PATH": "/groq/"}, ["KEYGATE_ADMIN_PATH", "'/groq/'", "provider 'groq'"]),
    ],
)
def test_env_errors_name_variable_and_problem(env: dict[str, str], needles: list[str]) -> None:
    message = config_error(env)
    assert message.startswith("environment variable ")
    for needle in needles:
        assert needle in message, message
    assert "pw" not in message  # a URL's password is never echoed


def test_cli_overrides_are_validated() -> None:
    assert load_settings({}, overrides={"port": 9100, "host": None}).port == 9100
    with pytest.raises(ConfigError, match=r"--port: .*70000"):
        load_settings({}, overrides={"port": 70000})
    with pytest.raises(ConfigError, match=r"--workers: .*0"):
        load_settings({}, overrides={"workers": 0})


# ----------------------------------------------------------------------------- YAML


def test_config_file_overrides_and_custom_provider(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
default_provider: mylocal
providers:
  cerebras:
    base_url: http://127.0.0.1:9000/
    rps: 0.5
    burst: 3
    max_conn: 0
    queue: 10
    queue_timeout_s: 1.5
    retries: 0
    timeout_connect_s: 2
    timeout_first_byte_s: 3
    timeout_idle_s: 4
    max_body_mb: 0.5
    default_model: llama3.1-8b
    force_model: true
    keys: [sk-a, sk-b]
  groq:
  mylocal:
    base_url: http://127.0.0.1:11434
    key_style: bearer
    keys: "sk-l1, sk-l2"
  anthro-like:
    base_url: https://example.com/anthropic
    key_style: x-api-key
""",
    )
    s = load_settings({"CEREBRAS_API_KEYS": "sk-b,sk-c", "MYLOCAL_API_KEYS": "sk-l3"}, path)
    assert s.config_path == path
    assert s.default_provider == "mylocal"
    c = s.providers["cerebras"]
    assert c.base_url == "http://127.0.0.1:9000"
    assert (c.rps, c.burst, c.max_conn, c.queue, c.queue_timeout_s) == (0.5, 3, 0, 10, 1.5)
    assert (c.retries, c.timeout_connect_s, c.timeout_first_byte_s, c.timeout_idle_s) == (
        0,
        2,
        3,
        4,
    )
    assert c.max_body_bytes == 512 * 1024
    assert (c.default_model, c.force_model) == ("llama3.1-8b", True)
    assert c.keys == ["sk-a", "sk-b", "sk-c"]  # config, then env, no repeats
    assert s.providers["groq"].rps == 1  # an empty entry changes nothing
    m = s.providers["mylocal"]
    assert (m.base_url, m.key_style, m.builtin) == ("http://127.0.0.1:11434", "bearer", False)
    assert m.keys == ["sk-l1", "sk-l2", "sk-l3"]
    assert s.providers["anthro-like"].key_style == "x-api-key"
    # env beats the file for bases and the default provider
    s = load_settings(
        {"CEREBRAS_BASE_URL": "http://10.0.0.1:1", "KEYGATE_DEFAULT_PROVIDER": "groq"}, path
    )
    assert s.providers["cerebras"].base_url == "http://10.0.0.1:1"
    assert s.default_provider == "groq"
    # KEYGATE_CONFIG names the file when no path is given
    assert load_settings({"KEYGATE_CONFIG": str(path)}).default_provider == "mylocal"


def test_empty_config_file_is_fine(tmp_path: Path) -> None:
    assert load_settings({}, write(tmp_path, "# nothing yet\n")).default_provider == "cerebras"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("providers:\n  cerebras: [unclosed\n", ["invalid YAML", "line 3", "expected"]),
        ("providers:\n\tcerebras: {}\n", ["invalid YAML"]),
        ("- just\n- a list\n", ["top level must be a mapping", "list"]),
        ("provders: {}\n", ["unknown field", "provders"]),
        ("on: 1\n", ["unknown field", "True"]),
        ("providers:\n  cerebras:\n    rsp: 4\n", ["providers.cerebras", "unknown field", "rsp"]),
        ("providers:\n  cerebras:\n    1: 4\n", ["providers.cerebras", "unknown field", "1"]),
        (
            "providers:\n  cerebras:\n    rps: fast\n",
            ["providers.cerebras.rps", "a number", "'fast'"],
        ),
        ("providers:\n  cerebras:\n    rps: [1]\n", ["providers.cerebras.rps", "a number"]),
        ("providers:\n  cerebras:\n    rps: true\n", ["providers.cerebras.rps", "a number"]),
        ("providers:\n  cerebras:\n    burst: 2.5\n", ["providers.cerebras.burst", "whole number"]),
        ("providers:\n  cerebras:\n    rps: -1\n", ["providers.cerebras.rps", "≥ 0", "-1"]),
        ("providers:\n  cerebras:\n    rps: .nan\n", ["providers.cerebras.rps", "≥ 0"]),
        ("providers:\n  groq:\n    max_conn: -3\n", ["providers.groq.max_conn", "-3"]),
        ("providers:\n  groq:\n    timeout_idle_s: 0\n", ["providers.groq.timeout_idle_s", "> 0"]),
        (
            "providers:\n  groq:\n    force_model: maybe\n",
            ["providers.groq.force_model", "true or false"],
        ),
        ("providers:\n  groq:\n    default_model: 3\n", ["providers.groq.default_model", "string"]),
        (
            "providers:\n  groq:\n    base_url: localhost:80\n",
            ["providers.groq.base_url", "http(s) URL"],
        ),
        ("providers:\n  groq:\n    keys: {a: 1}\n", ["providers.groq.keys", "list of strings"]),
        ("providers:\n  groq: 5\n", ["providers.groq", "mapping"]),
        ("providers: [groq]\n", ["providers", "mapping"]),
        (
            "providers:\n  mylocal:\n    key_style: bearer\n",
            ["providers.mylocal.base_url", "required"],
        ),
        ("providers:\n  api:\n    base_url: http://x\n", ["providers.api", "reserved"]),
        ("providers:\n  v1:\n    base_url: http://x\n", ["providers.v1", "reserved"]),
        ("providers:\n  healthz:\n    base_url: http://x\n", ["providers.healthz", "reserved"]),
        ("providers:\n  My Local:\n    base_url: http://x\n", ["providers.My Local", "lower-case"]),
        (
            "providers:\n  mylocal:\n    base_url: http://x\n    key_style: basic\n",
            ["providers.mylocal.key_style", "'basic'", "bearer, x-api-key, gemini"],
        ),
        ("default_provider: nosuch\n", ["default_provider", "'nosuch'"]),
    ],
)
def test_config_errors_name_file_key_and_problem(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    path = write(tmp_path, text)
    message = config_error({}, path)
    assert message.startswith(f"config file {path}: "), message
    for needle in needles:
        assert needle in message, message


def test_unreadable_config_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert "cannot read" in config_error({}, missing)
    assert str(missing) in config_error({}, missing)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"providers:\n  groq:\n    default_model: caf\xe9\n")
    assert "not UTF-8" in config_error({}, latin)
    assert "cannot read" in config_error({}, tmp_path)  # a directory


# ----------------------------------------------------------------------------- CLI


def test_config_check_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    for k in list(os.environ):
        if k.startswith("KEYGATE_") or k.endswith("_API_KEYS"):
            monkeypatch.delenv(k)
    path = write(
        tmp_path,
        "providers:\n  mylocal:\n    base_url: http://127.0.0.1:1\n    keys: [sk-local-key-0001]\n",
    )
    assert cli_main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok")
    assert "13 providers" in out and "1 with keys" in out


@pytest.mark.parametrize(
    "text",
    ["providers:\n  cerebras:\n    rps: -2\n", "oops: [\n", "providers:\n  cerebras:\n    on: 1\n"],
)
def test_config_check_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any, text: str
) -> None:
    monkeypatch.delenv("KEYGATE_CONFIG", raising=False)
    path = write(tmp_path, text)
    assert cli_main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"keygate: config file {path}: ")


def run_keygate(
    args: list[str], env: dict[str, str], timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keygate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_console_script_config_check(tmp_path: Path) -> None:
    bad = write(tmp_path, "providers:\n  cerebras:\n    rps: -2\n")
    proc = subprocess.run(
        [console_script("keygate"), "config", "check", str(bad)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode != 0
    assert (
        proc.stderr.strip()
        == f"keygate: config file {bad}: providers.cerebras.rps: must be ≥ 0 and ≤ 100000, got -2"
    )


@pytest.mark.parametrize(
    ("text", "env", "needles"),
    [
        (
            "providers:\n  cerebras:\n    rps: -1\n",
            {},
            ["config file", "providers.cerebras.rps", "≥ 0"],
        ),
        ("providers: {cerebras: {\n", {}, ["config file", "invalid YAML"]),
        ("providers:\n  nope:\n    rps: 1\n", {}, ["providers.nope.base_url", "required"]),
        ("providers:\n  groq:\n    bogus: 1\n", {}, ["providers.groq", "unknown field", "bogus"]),
        ("", {"KEYGATE_PORT": "abc"}, ["environment variable KEYGATE_PORT", "'abc'"]),
        ("", {"KV_FLUSH_INTERVAL_MS": "-1"}, ["environment variable KV_FLUSH_INTERVAL_MS", "-1"]),
    ],
    ids=["negative-rps", "bad-yaml", "no-base-url", "unknown-field", "port", "flush"],
)
def test_serve_with_bad_config_exits_with_one_line(
    tmp_path: Path, text: str, env: dict[str, str], needles: list[str]
) -> None:
    port = free_port()
    cfg = write(tmp_path, text or "{}\n", "bad.yaml")
    full_env = clean_env(
        **{"KEYGATE_DATA_DIR": str(tmp_path / "d"), "KEYGATE_PORT": str(port), **env}
    )
    proc = run_keygate(["serve", "--config", str(cfg)], full_env)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("keygate: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    if not env:
        assert str(cfg) in lines[0]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_serve_with_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    proc = run_keygate(
        ["serve", "--config", str(missing)], clean_env(KEYGATE_DATA_DIR=str(tmp_path / "d"))
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"keygate: config file {missing}: cannot read: No such file or directory"
    ]


# ----------------------------------------------------------------------------- end to end


def test_custom_providers_end_to_end(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = gateway_factory(
        env={
            "MYLOCAL_API_KEYS": "sk-local-aaaa1111",
            "MY_ANTHRO_API_KEYS": "sk-anthro-bbbb2222",
            "MYGEM_API_KEYS": "gem-custom-cccc3333",
        },
        config={
            "default_provider": "mylocal",
            "providers": {
                "mylocal": {"base_url": mock.url + "/", "key_style": "bearer", "rps": 0},
                "my-anthro": {"base_url": mock.url + "/anthropic", "key_style": "x-api-key"},
                "mygem": {
                    "base_url": mock.url,
                    "key_style": "gemini",
                    "keys": ["gem-yaml-dddd4444"],
                },
            },
        },
    )
    with httpx.Client(base_url=gw.url, headers=gw.auth(), timeout=10) as c:
        r = c.post("/mylocal/v1/chat/completions", json={"model": "llama3", "messages": []})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello from mock"
        assert (
            c.post("/v1/chat/completions", json={"model": "x", "messages": []}).status_code == 200
        )
        assert (
            c.post("/my-anthro", json={"model": "c", "max_tokens": 5, "messages": []}).status_code
            == 200
        )
        assert (
            c.post("/mygem/v1/chat/completions", json={"model": "g", "messages": []}).status_code
            == 200
        )
        assert c.post("/mygem/v1beta/models/g:generateContent", json={}).status_code == 200
    local, default, anthro, gem_openai, gem_native = mock.records()
    assert local.path == default.path == "/v1/chat/completions"
    assert (
        local.headers["authorization"]
        == default.headers["authorization"]
        == "Bearer sk-local-aaaa1111"
    )
    assert anthro.path == "/anthropic/v1/messages"
    assert anthro.headers["x-api-key"] == "sk-anthro-bbbb2222"
    assert anthro.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in anthro.headers
    assert gem_openai.path == "/v1beta/openai/chat/completions"
    assert gem_openai.headers["authorization"].startswith("Bearer gem-")
    assert gem_native.headers["x-goog-api-key"].startswith("gem-")
    assert {gem_openai.key, gem_native.key} == {"gem-custom-cccc3333", "gem-yaml-dddd4444"}
    log = gw.log()
    assert "mylocal" in log and "my-anthro" in log and "→ " + mock.url in log
    for secret in (
        "sk-local-aaaa1111",
        "sk-anthro-bbbb2222",
        "gem-custom-cccc3333",
        "gem-yaml-dddd4444",
    ):
        assert secret not in log


def test_yaml_timeouts_and_limits_take_effect(gateway_factory: Any, mock: MockUpstream) -> None:
    """The file's values reach the running gateway (not only the parsed settings)."""
    gw = gateway_factory(
        env={"GROQ_API_KEYS": "gsk-aaaa1111bbbb"},
        config={
            "providers": {
                "groq": {"retries": 0, "timeout_first_byte_s": 0.3, "max_body_mb": 0.0005}
            }
        },
    )
    mock.set_behavior(hang=True)
    r = httpx.post(
        f"{gw.url}/groq/v1/chat/completions", json={"model": "m"}, headers=gw.auth(), timeout=10
    )
    assert r.status_code == 504
    assert r.elapsed.total_seconds() < 1.0
    assert len(mock.records()) == 1  # retries: 0
    r = httpx.post(f"{gw.url}/groq/v1/chat/completions", content=b"x" * 600, headers=gw.auth())
    assert r.status_code == 413
    health = httpx.get(f"{gw.url}/healthz", headers=gw.admin()).json()
    assert health["providers"]["groq"]["max_conn"] == 2
