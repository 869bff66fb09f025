"""Key tiers and weights end to end (SPEC §15): a real keygate in front of the mock upstream,
which counts the requests each key carried.

Free keys (tier 0) are spent first and the paid key takes only the overflow; weights split a
tier's traffic; tier and weight come from the config file and the environment
(`secret|tier=1|weight=3`), the admin API and the CLI, and a running server follows them.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import CHAT, eventually, wait_log
from keygate.config.settings import ConfigError, load_settings
from keygate.masking import mask
from servers import RedisServer, redis_bin, start_redis

FREE = ["sk-tier-free-aaaa-0001", "sk-tier-free-bbbb-0002"]
PAID = "sk-tier-paid-cccc-0003"
BASE = {"rps": 0, "burst": 0, "max_conn": 0, "retries": 2, "backoff_base_s": 0.05}


_turns = itertools.count()


def chat(gw: Any, client: httpx.Client | None = None) -> int:
    """One request, each a conversation of its own: the normal pick decides every one (no
    conversation affinity holds it to the key of an earlier one)."""
    c = client or gw.client()
    body = {**CHAT, "messages": [{"role": "user", "content": f"question {next(_turns)}"}]}
    r = c.post(f"{gw.url}/cerebras/v1/chat/completions", json=body, headers=gw.auth())
    return r.status_code


def keys_by_secret(gw: Any) -> dict[str, dict[str, Any]]:
    r = gw.api("GET", "/api/keys", params={"provider": "cerebras"})
    assert r.status_code == 200, r.text
    return {k["masked"]: k for k in r.json()["keys"]}


def test_free_keys_first_and_the_paid_key_only_for_the_overflow(
    gateway_factory: Any, mock: Any
) -> None:
    keys = f"{FREE[0]},{FREE[1]}|tier=0,{PAID}|tier=1"
    gw = gateway_factory(
        env={"CEREBRAS_API_KEYS": keys}, config={"providers": {"cerebras": {**BASE, "key_rpm": 5}}}
    )
    with gw.client() as c:
        assert [chat(gw, c) for _ in range(10)] == [200] * 10
        assert [mock.count(k) for k in (*FREE, PAID)] == [5, 5, 0], "the free keys first"
        assert [chat(gw, c) for _ in range(5)] == [200] * 5
        assert [mock.count(k) for k in (*FREE, PAID)] == [5, 5, 5], "then the paid key"
    shown = keys_by_secret(gw)
    assert [shown[mask(k)]["tier"] for k in (*FREE, PAID)] == [0, 0, 1]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if redis_bin() is None:
        pytest.skip("redis-server is not installed")
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.redis
def test_two_instances_on_one_redis_spend_the_free_tier_first(
    gateway_factory: Any, mock: Any, redis_server: RedisServer
) -> None:
    env = {
        "CEREBRAS_API_KEYS": f"{FREE[0]},{FREE[1]},{PAID}|tier=1",
        "KEYGATE_REDIS_URL": redis_server.url,
    }
    config = {"providers": {"cerebras": {**BASE, "key_rpm": 5}}}
    a = gateway_factory(env=env, config=config)
    b = gateway_factory(env=env, config=config)
    assert [chat(a if i % 2 else b) for i in range(10)] == [200] * 10
    assert [mock.count(k) for k in (*FREE, PAID)] == [5, 5, 0], "one fleet: free keys first"
    assert [chat(b if i % 2 else a) for i in range(5)] == [200] * 5
    assert [mock.count(k) for k in (*FREE, PAID)] == [5, 5, 5]


def test_weights_split_a_tier_3_to_1(gateway_factory: Any, mock: Any) -> None:
    heavy, light = "sk-tier-heavy-dddd-0004", "sk-tier-light-eeee-0005"
    gw = gateway_factory(
        config={"providers": {"cerebras": {**BASE, "keys": [f"{heavy}|weight=3", light]}}}
    )
    with gw.client() as c:
        assert all(chat(gw, c) == 200 for _ in range(300))
    assert abs(mock.count(heavy) - 225) <= 5 and abs(mock.count(light) - 75) <= 5
    shown = keys_by_secret(gw)
    assert (shown[mask(heavy)]["weight"], shown[mask(light)]["weight"]) == (3, 1)


def test_admin_api_sets_tier_and_weight(gateway_factory: Any, mock: Any) -> None:
    gw = gateway_factory(
        env={"CEREBRAS_API_KEYS": ",".join(FREE)}, config={"providers": {"cerebras": BASE}}
    )
    ids = {k["masked"]: k["id"] for k in keys_by_secret(gw).values()}
    first, second = ids[mask(FREE[0])], ids[mask(FREE[1])]
    assert keys_by_secret(gw)[mask(FREE[0])]["tier"] == 0
    assert keys_by_secret(gw)[mask(FREE[0])]["weight"] == 1
    r = gw.api("PATCH", f"/api/keys/{first}", json={"tier": 1, "weight": 3})
    assert r.status_code == 200, r.text
    assert (r.json()["tier"], r.json()["weight"]) == (1, 3)
    listed = keys_by_secret(gw)[mask(FREE[0])]
    assert (listed["tier"], listed["weight"]) == (1, 3)
    with gw.client() as c:
        assert [chat(gw, c) for _ in range(6)] == [200] * 6
    assert (mock.count(FREE[0]), mock.count(FREE[1])) == (0, 6), "tier 0 goes first"
    for doc, field in (
        ({"tier": -1}, "tier"),
        ({"tier": 1001}, "tier"),
        ({"tier": "1"}, "tier"),
        ({"weight": 0}, "weight"),
        ({"weight": 101}, "weight"),
        ({"weight": 1.5}, "weight"),
    ):
        r = gw.api("PATCH", f"/api/keys/{second}", json=doc)
        assert r.status_code == 400, (doc, r.text)
        assert field in r.text, r.text
    assert keys_by_secret(gw)[mask(FREE[1])]["tier"] == 0, "nothing changed"


def test_cli_keys_update_reaches_the_running_server(gateway_factory: Any, mock: Any) -> None:
    gw = gateway_factory(
        env={"CEREBRAS_API_KEYS": ",".join(FREE)}, config={"providers": {"cerebras": BASE}}
    )
    ids = {k["masked"]: k["id"] for k in keys_by_secret(gw).values()}
    key_id = ids[mask(FREE[0])]
    env = {**gw.env, "KEYGATE_DATA_DIR": str(gw.data_dir)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "keygate", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert FREE[0] not in proc.stdout + proc.stderr
        return proc

    proc = cli("update", str(key_id), "--tier", "2", "--weight", "4")
    assert proc.returncode == 0, proc.stderr
    assert "tier=2, weight=4" in proc.stdout
    eventually(lambda: keys_by_secret(gw)[mask(FREE[0])]["tier"] == 2, timeout=10)
    assert keys_by_secret(gw)[mask(FREE[0])]["weight"] == 4
    with gw.client() as c:
        assert [chat(gw, c) for _ in range(4)] == [200] * 4
    assert (mock.count(FREE[0]), mock.count(FREE[1])) == (0, 4)
    bad = cli("update", str(key_id), "--weight", "0")
    assert bad.returncode != 0 and "--weight" in bad.stderr
    assert cli("update", str(key_id)).returncode != 0, "nothing to change"
    assert cli("update", "999999", "--tier", "1").returncode != 0


def test_a_reload_applies_the_files_tier_and_weight(
    tmp_path: Path, gateway_factory: Any, mock: Any
) -> None:
    cfg = tmp_path / "tiers.yaml"

    def write_keys(*keys: str) -> None:
        cfg.write_text(yaml.safe_dump({"providers": {"cerebras": {**BASE, "keys": list(keys)}}}))

    write_keys(FREE[0], FREE[1])
    gw = gateway_factory(args=["--config", str(cfg)])
    write_keys(f"{FREE[0]}|tier=1", f"{FREE[1]}|weight=4")
    mark = len(gw.log())
    gw.proc.send_signal(signal.SIGHUP)
    assert "providers.cerebras.keys: 2 key(s) re-ranked" in wait_log(gw, "re-ranked", mark)
    shown = keys_by_secret(gw)
    assert (shown[mask(FREE[0])]["tier"], shown[mask(FREE[1])]["weight"]) == (1, 4)
    with gw.client() as c:
        assert [chat(gw, c) for _ in range(3)] == [200] * 3
    assert (mock.count(FREE[0]), mock.count(FREE[1])) == (0, 3)


# --- the config file and the environment ---------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_key_options_in_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"providers:\n  groq:\n    keys:\n      - {FREE[0]}|tier=1|weight=3\n      - {FREE[1]}\n",
    )
    s = load_settings({"GROQ_API_KEYS": f"{PAID}|weight=7"}, path)
    cfg = s.providers["groq"]
    assert cfg.keys == [FREE[0], FREE[1], PAID]
    assert cfg.config_keys == [FREE[0], FREE[1]]
    assert cfg.key_options == {FREE[0]: {"tier": 1, "weight": 3}, PAID: {"weight": 7}}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("|tire=1", "unknown key option 'tire'"),
        ("|tier=-1", "tier must be a whole number 0 to 1000"),
        ("|weight=0", "weight must be a whole number 1 to 100"),
        ("|weight=101", "weight must be a whole number 1 to 100"),
        ("|weight", "weight must be a whole number"),
        ("|tier=1|tier=2", "tier is given twice"),
    ],
)
def test_a_bad_key_option_is_one_line_naming_where(tmp_path: Path, spec: str, says: str) -> None:
    path = write(tmp_path, f"providers:\n  groq:\n    keys: ['{FREE[1]}', '{FREE[0]}{spec}']\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    msg = str(info.value)
    assert "\n" not in msg and FREE[0] not in msg, msg
    assert msg.startswith(f"config file {path}: providers.groq.keys[1] ({mask(FREE[0])}): ")
    assert says in msg, msg
    with pytest.raises(ConfigError) as info:
        load_settings({"GROQ_API_KEYS": f"{FREE[1]},{FREE[0]}{spec}"})
    msg = str(info.value)
    assert msg.startswith("environment variable GROQ_API_KEYS[1] ("), msg
    assert says in msg and FREE[0] not in msg, msg


def test_config_check_accepts_key_options(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers:\n  groq:\n    keys: ['{FREE[0]}|tier=1|weight=3']\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEYS") and not k.startswith("KEYGATE_")
    }
    env["KEYGATE_DATA_DIR"] = str(tmp_path / "d")
    run = [sys.executable, "-m", "keygate", "config", "check", str(path)]
    ok = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    path.write_text(f"providers:\n  groq:\n    keys: ['{FREE[0]}|weight=0']\n")
    bad = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "weight must be" in out and FREE[0] not in out, out
