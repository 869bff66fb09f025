"""What an operator configures and what keygate shows about it: strict upstream URLs and bounded
numbers (YAML, env, admin API), owner-only store files, one URL masker, /healthz details behind
admin auth, and the KEYGATE_-prefixed provider variables that no SDK reads."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import ADMIN_PASSWORD, free_port
from keygate.config.settings import ConfigError, load_settings
from keygate.store import create_store
from keygate.testing.mock_upstream import MockUpstream

BAD_BASES = [
    "http://169.254.169.254",
    "http://169.254.169.254/latest/meta-data",
    "http://169.254.1.1:8080",  # link-local
    "http://[fe80::1]",
    "http://[fd00:ec2::254]",
    "http://100.100.100.200",
    "http://metadata.google.internal",
    "http://METADATA.google.internal/computeMetadata/v1",
    "http://metadata",
    "http://0x7f000001",
    "http://2130706433",
    "http://0177.0.0.1",
    "http://127.1",
    "http://[::ffff:169.254.169.254]",
    "http://user:pw@example.com",
    "http://:pw@example.com",
    "http://example.com\r\nX-Injected: 1",
    "http://exa mple.com",
    "http://example.com/a b",
    "http://example.com\t",
    "http://example.com?x=1",
    "http://example.com#frag",
    "ftp://example.com",
    "javascript:alert(1)",
    "http://",
    "http://exa_mple-.com",
    "http://example.com:0",
    "http://example.com:99999",
    "http://example.com/../admin",
    "http://0.0.0.0",
]
PRIVATE_ONLY = [
    "http://169.254.169.254",
    "http://[fe80::1]",
    "http://[fd00:ec2::254]",
    "http://100.100.100.200",
    "http://metadata.google.internal",
]
GOOD_BASES = [
    "https://api.groq.com/openai",
    "http://127.0.0.1:11434",
    "http://localhost:8000/v1",
    "http://10.1.2.3:9000",
    "http://192.168.1.20",
    "http://[::1]:8080",
    "http://[fd12:3456::1]",
    "http://ollama_host:11434",  # a compose service name
    "HTTPS://Example.COM/api/",
]
BAD_NUMBERS: list[tuple[str, Any]] = [
    ("max_body_mb", "inf"),
    ("max_body_mb", 1e30),
    ("rps", "inf"),
    ("rps", "NaN"),
    ("rps", "-inf"),
    ("rps", 1e30),
    ("burst", 10**30),
    ("max_conn", 2**63),
    ("queue", 2**63),
    ("retries", 1000),
    ("timeout_idle_s", "1e400"),
    ("cooldown_s", 10**12),
]


def config_error(env: dict[str, str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env, path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# --------------------------------------------------------------------------- upstream URLs


@pytest.mark.parametrize("base", BAD_BASES)
def test_bad_base_url_refused_from_env_and_yaml(tmp_path: Path, base: str) -> None:
    for var in ("KEYGATE_CEREBRAS_BASE_URL", "CEREBRAS_BASE_URL"):
        message = config_error({var: base})
        assert message.startswith(f"environment variable {var}: "), message
        assert "pw" not in message
    cfg = tmp_path / "k.yaml"
    cfg.write_text(f"providers:\n  cerebras:\n    base_url: {base!r}\n", encoding="utf-8")
    message = config_error({}, cfg)
    assert message.startswith(f"config file {cfg}: providers.cerebras.base_url: "), message
    assert "pw" not in message


@pytest.mark.parametrize("base", GOOD_BASES)
def test_good_base_url_accepted(base: str) -> None:
    s = load_settings({"KEYGATE_CEREBRAS_BASE_URL": base})
    assert s.providers["cerebras"].base_url == base.rstrip("/")


@pytest.mark.parametrize("base", PRIVATE_ONLY)
def test_allow_private_upstreams_opens_link_local_and_metadata(base: str) -> None:
    s = load_settings({"KEYGATE_ALLOW_PRIVATE_UPSTREAMS": "1", "CEREBRAS_BASE_URL": base})
    assert s.providers["cerebras"].base_url == base
    # syntax stays strict
    message = config_error(
        {"KEYGATE_ALLOW_PRIVATE_UPSTREAMS": "1", "CEREBRAS_BASE_URL": "http://0x7f000001"}
    )
    assert "canonical" in message


def test_allow_private_upstreams_value_is_checked() -> None:
    message = config_error({"KEYGATE_ALLOW_PRIVATE_UPSTREAMS": "maybe"})
    assert message.startswith("environment variable KEYGATE_ALLOW_PRIVATE_UPSTREAMS: ")


# --------------------------------------------------------------------------- numeric bounds


@pytest.mark.parametrize(("field", "value"), BAD_NUMBERS)
def test_unbounded_numbers_are_one_line_config_errors(
    tmp_path: Path, field: str, value: Any
) -> None:
    cfg = tmp_path / "k.yaml"
    literal = repr(value) if isinstance(value, str) else str(value)
    cfg.write_text(f"providers:\n  cerebras:\n    {field}: {literal}\n", encoding="utf-8")
    message = config_error({}, cfg)
    assert message.startswith(f"config file {cfg}: providers.cerebras.{field}: must be"), message
    assert len(message) < 300


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("KV_FLUSH_INTERVAL_MS", str(10**30)),
        ("KEYGATE_RECENT_REQUESTS", str(2**63)),
        ("KEYGATE_FLEET_SIZE", str(2**63)),
        ("KEYGATE_WORKERS", "100000"),
    ],
)
def test_env_numbers_are_bounded(var: str, value: str) -> None:
    message = config_error({var: value})
    assert message.startswith(f"environment variable {var}: must be"), message
    assert len(message) < 200


# --------------------------------------------------------------------------- KEYGATE_<NAME>_*


def test_keygate_prefixed_provider_variables_win_and_the_old_form_still_works() -> None:
    s = load_settings(
        {
            "KEYGATE_OPENAI_BASE_URL": "http://127.0.0.1:9001",
            "OPENAI_BASE_URL": "http://127.0.0.1:9002",  # what an OpenAI SDK in this shell reads
            "GROQ_BASE_URL": "http://127.0.0.1:9003",
            "KEYGATE_MY_LOCAL_BASE_URL": "http://127.0.0.1:9004",
            "KEYGATE_GROQ_API_KEYS": "gsk-new-aaaa1111,gsk-both-cccc3333",
            "GROQ_API_KEYS": "gsk-old-bbbb2222 gsk-both-cccc3333",
        }
    )
    assert s.providers["openai"].base_url == "http://127.0.0.1:9001"
    assert s.providers["groq"].base_url == "http://127.0.0.1:9003"
    assert s.providers["groq"].keys == ["gsk-new-aaaa1111", "gsk-both-cccc3333", "gsk-old-bbbb2222"]
    message = config_error({"KEYGATE_GROQ_BASE_URL": "http://169.254.169.254"})
    assert message.startswith("environment variable KEYGATE_GROQ_BASE_URL: ")


def test_keygate_base_url_wins_over_the_sdk_variable_end_to_end(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(
        env={
            "OPENAI_BASE_URL": closed,
            "KEYGATE_OPENAI_BASE_URL": mock.url,
            "KEYGATE_OPENAI_API_KEYS": "sk-prefixed-aaaa1111",
        }
    )
    r = httpx.post(
        f"{gw.url}/openai/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers=gw.auth(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert mock.records()[-1].headers.get("authorization") == "Bearer sk-prefixed-aaaa1111"


# --------------------------------------------------------------------------- URL masking


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("redis://:hunter@2secret@127.0.0.1:6379/0", ["hunter", "2secret"]),
        ("redis://admin:p%40ss@redis.local:6379/1?lease_s=5", ["admin", "p%40ss"]),
        ("rediss://user:a:b@c@host:6380", ["user", "a:b", "b@c"]),
        ("postgresql://kg:pa@ss/wd?x@db.local:5432/keygate", ["pa@ss", "wd?x", "kg:"]),
        ("postgresql://kg@db/keygate?password=topsecret&sslmode=require", ["topsecret"]),
    ],
)
def test_store_description_masks_userinfo_wholly(url: str, secrets: list[str]) -> None:
    s = load_settings({"KEYGATE_DB": url} if url.startswith("postgres") else {})
    if url.startswith("postgres"):
        shown = s.store_description
        assert "***" in shown
    else:
        from keygate.control.redis.state import SharedState

        shown = SharedState(url).display_url
    for secret in secrets:
        assert secret not in shown, shown


def test_redis_password_with_at_sign_never_shown(gateway_factory: Any) -> None:
    """Redis unreachable on purpose (a closed loopback port): banner, logs, /healthz and the
    admin API all show the URL, none may show any part of the password."""
    url = f"redis://:hunter@2secret@127.0.0.1:{free_port()}/0?timeout_s=0.2"
    gw = gateway_factory(env={"KEYGATE_REDIS_URL": url, "CEREBRAS_API_KEYS": "csk-r-aaaa1111"})
    details = httpx.get(f"{gw.url}/healthz", headers=gw.admin(), timeout=5)
    assert details.status_code == 200
    assert "127.0.0.1" in details.json()["redis"]
    stats = gw.api("GET", "/api/stats").text
    config = gw.api("GET", "/api/config").text
    for text in (details.text, stats, config, gw.log()):
        assert "hunter" not in text and "2secret" not in text, text[-2000:]
    assert "redis://***@127.0.0.1" in gw.log()


# --------------------------------------------------------------------------- /healthz


def test_healthz_without_auth_says_only_status_and_version(gateway_factory: Any) -> None:
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": "csk-h-aaaa1111"})
    public = httpx.get(f"{gw.url}/healthz", timeout=5)
    assert public.status_code == 200
    assert set(public.json()) == {"status", "version"}
    # a cookie of some other app on the same host changes nothing
    other = httpx.get(f"{gw.url}/healthz", headers={"cookie": "theme=dark"}, timeout=5)
    assert set(other.json()) == {"status", "version"}
    # the gateway password is not an admin credential
    wrong = httpx.get(f"{gw.url}/healthz", headers=gw.auth(), timeout=5)
    assert wrong.status_code == 401
    assert "pid" not in wrong.text
    full = httpx.get(f"{gw.url}/healthz", headers=gw.admin(), timeout=5).json()
    assert {"pid", "uptime_s", "store", "state", "providers"} <= set(full)
    assert full["providers"]["cerebras"]["keys"] == 1
    # the admin page's session cookie works too
    login = httpx.post(f"{gw.url}/api/session", json={"password": ADMIN_PASSWORD}, timeout=5)
    cookie = login.headers["set-cookie"].split(";")[0]
    by_cookie = httpx.get(f"{gw.url}/healthz", headers={"cookie": cookie}, timeout=5).json()
    assert "pid" in by_cookie


# --------------------------------------------------------------------------- admin API input


def test_admin_api_refuses_bad_upstreams_and_numbers_and_stores_nothing(
    gateway_factory: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "admin-data"
    gw = gateway_factory(data_dir=data_dir, env={"CEREBRAS_API_KEYS": "csk-a-aaaa1111"})
    before = gw.api("GET", "/api/providers").json()["providers"]
    for base in BAD_BASES:
        r = gw.api("PATCH", "/api/providers/cerebras", json={"base_url": base})
        assert r.status_code == 400, (base, r.text)
        err = r.json()["error"]
        assert err["param"] == "base_url" and err["message"].startswith("base_url: ")
        assert "pw" not in r.text
    for field, value in [*BAD_NUMBERS, ("rps", float("nan"))]:
        body = (
            f'{{"{field}": NaN}}'.encode()
            if value != value
            else httpx.Request("POST", "/", json={field: value}).content
        )
        r = gw.api(
            "PATCH",
            "/api/providers/cerebras",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, (field, value, r.text)
    assert gw.api("GET", "/api/providers").json()["providers"] == before

    key_id = gw.api("GET", "/api/keys").json()["keys"][0]["id"]
    for field, value in [("rpm", 2**63), ("max_conn", 2**63), ("rpm", 10**7), ("rpm", 1e30)]:
        r = gw.api("PATCH", f"/api/keys/{key_id}", json={field: value})
        assert r.status_code == 400, (field, value, r.text)
        assert r.json()["error"]["param"] == field
    for offset in (str(10**30), str(2**63), "1e3"):
        r = gw.api("GET", "/api/keys", params={"offset": offset})
        assert r.status_code == 400, (offset, r.text)
    assert gw.api("GET", "/api/keys", params={"offset": "10"}).status_code == 200
    assert "Traceback" not in gw.log()
    gw.stop()

    async def stored() -> tuple[dict[str, Any], list[Any]]:
        store = create_store(f"sqlite:///{data_dir / 'keygate.db'}")
        await store.open()
        try:
            return await store.get_provider_overrides(), await store.load_keys()
        finally:
            await store.close()

    overrides, keys = asyncio.run(stored())
    assert overrides.get("cerebras", {}) == {}
    assert [(k.rpm, k.max_conn) for k in keys] == [(0, 0)]


def test_admin_api_accepts_values_inside_the_bounds(gateway_factory: Any) -> None:
    gw = gateway_factory()
    r = gw.api(
        "PATCH",
        "/api/providers/cerebras",
        json={"base_url": "http://127.0.0.1:11434", "rps": 100000, "max_body_mb": 1024},
    )
    assert r.status_code == 200, r.text
    assert r.json()["rps"] == 100000


# --------------------------------------------------------------------------- file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_files_are_owner_only_also_when_they_existed_wider(
    gateway_factory: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "wide"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)
    stray = data_dir / "notes.txt"
    stray.write_text("x")
    os.chmod(stray, 0o644)
    gw = gateway_factory(data_dir=data_dir, env={"CEREBRAS_API_KEYS": "csk-m-aaaa1111"})
    r = gw.api("POST", "/api/keys", json={"provider": "cerebras", "key": "csk-m-bbbb2222"})
    assert r.status_code == 201, r.text
    assert _mode(data_dir) == 0o700
    files = sorted(p.name for p in data_dir.iterdir())
    assert {"keygate.db", "keygate.db-wal", "keygate.db-shm"} <= set(files), files
    for path in data_dir.iterdir():
        assert _mode(path) & 0o077 == 0, (path.name, oct(_mode(path)))
    # the banner recommends encryption at rest while it is off
    assert "KEYGATE_SECRET_KEY" in gw.log()
    gw.stop()

    new_dir = tmp_path / "fresh" / "data"
    gw2 = gateway_factory(data_dir=new_dir, env={"KEYGATE_SECRET_KEY": "a-long-passphrase-1"})
    assert _mode(new_dir) == 0o700
    assert _mode(new_dir / "keygate.db") == 0o600
    banner = gw2.log()
    assert "set KEYGATE_SECRET_KEY" not in banner


async def test_sqlite_store_tightens_its_files_but_not_a_foreign_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o755)
    db = folder / "custom.db"
    db.write_bytes(b"")
    os.chmod(db, 0o644)
    store = create_store(f"sqlite:///{db}")
    await store.open()
    try:
        await store.add_keys("cerebras", ["csk-f-aaaa1111"], source="env")
        for suffix in ("", "-wal", "-shm"):
            path = folder / f"custom.db{suffix}"
            assert _mode(path) == 0o600, (path.name, oct(_mode(path)))
    finally:
        await store.close()
    assert _mode(folder) == 0o755  # a folder keygate did not make for itself stays as it is
