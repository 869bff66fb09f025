"""Prompt-cache key affinity (SPEC §15): a conversation's name, its pin, the pick that follows
the pin while its key can serve, and the mock upstream's per-key prompt cache that measures it."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from harness import PASSWORD
from keygate.config.settings import ConfigError, load_settings
from keygate.control.pins import MemoryPins
from keygate.proxy.affinity import conversation
from keygate.testing.mock_upstream import MockUpstream
from servers import RedisServer, redis_bin, start_redis

# --- the conversation's name ------------------------------------------------------------------

CHAT = {
    "model": "gpt-x",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
}
CHAT_LATER = {
    **CHAT,
    "messages": [
        *CHAT["messages"],
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "second question"},
    ],
}
MESSAGES = {
    "model": "claude-x",
    "system": "You are terse.",
    "messages": [{"role": "user", "content": "first question"}],
}
MESSAGES_LATER = {
    **MESSAGES,
    "messages": [
        *MESSAGES["messages"],
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "again"},
    ],
}
RESPONSES = {"model": "gpt-x", "instructions": "Be terse.", "input": "first question"}
H = [(b"x-session-id", b"s-1")]


def name(doc: dict[str, Any] | None, headers: Any = (), mode: str = "prefix", p: str = "p") -> Any:
    return conversation(mode, p, list(headers), doc)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # explicit ids first: prompt_cache_key, then the session header, then metadata.user_id
        (
            ({**CHAT, "prompt_cache_key": "k1"}, H),
            ({**CHAT_LATER, "prompt_cache_key": "k1"}, ()),
            True,
        ),
        (({**CHAT, "prompt_cache_key": "k1"}, H), ({**CHAT, "prompt_cache_key": "k2"}, H), False),
        ((CHAT, H), ({**CHAT, "model": "other"}, H), True),
        ((CHAT, [(b"x-keygate-session", b"s-1")]), (CHAT, H), True),
        (
            ({**MESSAGES, "metadata": {"user_id": "u1"}}, ()),
            ({"model": "y", "messages": [], "metadata": {"user_id": "u1"}}, ()),
            True,
        ),
        (({**MESSAGES, "metadata": {"user_id": "u1"}}, H), (MESSAGES, H), True),
        # the stable prefix: later turns repeat it
        ((CHAT, ()), (CHAT_LATER, ()), True),
        ((MESSAGES, ()), (MESSAGES_LATER, ()), True),
        ((RESPONSES, ()), ({**RESPONSES, "temperature": 0.5}, ()), True),
        ((CHAT, ()), ({**CHAT, "model": "other"}, ()), False),
        ((CHAT, ()), ({**CHAT, "tools": []}, ()), False),
        ((MESSAGES, ()), ({**MESSAGES, "system": "Be verbose."}, ()), False),
        ((RESPONSES, ()), ({**RESPONSES, "instructions": "Be verbose."}, ()), False),
        (
            (CHAT, ()),
            ({**CHAT, "messages": [{"role": "developer", "content": "x"}, *CHAT["messages"]]}, ()),
            False,
        ),
    ],
)
def test_a_conversation_is_named_first_match_wins(a: Any, b: Any, same: bool) -> None:
    first, second = name(*a), name(*b)
    assert first is not None and second is not None
    assert (first == second) is same


def test_names_by_mode_and_what_cannot_be_named() -> None:
    assert name(CHAT, mode="header") is None  # `header`: only explicit ids
    assert name(CHAT, H, mode="header") == name(CHAT_LATER, H, mode="header")
    assert name({**CHAT, "prompt_cache_key": "k"}, mode="header") is not None
    assert name(None, H) is not None  # a body that is not JSON: the header still names it
    assert name(None) is None
    assert name({"model": "m"}) is None  # nothing to name it by
    assert name(CHAT, p="a") != name(CHAT, p="b")  # the provider is part of the prefix
    assert name({**CHAT, "prompt_cache_key": ""}) == name(CHAT)  # empty ids do not count
    assert len(name(CHAT)) <= 24 and "first" not in name(CHAT)  # a checksum, no client text


# --- pins in memory ---------------------------------------------------------------------------


def test_memory_pins_expire_are_renewed_by_use_and_stay_bounded() -> None:
    now = [1000.0]
    pins = MemoryPins(limit=3, clock=lambda: now[0])
    pins.put("a", 1, 10)
    now[0] += 9
    assert pins.get("a", 10) == 1  # used: ten seconds more
    now[0] += 9
    assert pins.get("a", 10) == 1
    now[0] += 10.5
    assert pins.get("a", 10) is None  # expired
    for n, conv in enumerate("bcd"):
        pins.put(conv, n, 10)
    assert pins.get("b", 10) == 0  # b used: c is now the least recent
    pins.put("e", 9, 10)
    assert len(pins) == 3 and pins.get("c", 10) is None and pins.get("b", 10) == 0


# --- config -----------------------------------------------------------------------------------


def test_affinity_config_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers:\n  openai:\n    affinity: header\n    affinity_ttl_s: 60\n")
    cfg = load_settings({}, path).providers["openai"]
    assert (cfg.affinity, cfg.affinity_ttl_s) == ("header", 60)
    assert load_settings({}, None).providers["openai"].affinity == "prefix"
    path.write_text("providers:\n  openai:\n    affinity: off\n")  # YAML's `off` is false
    assert load_settings({}, path).providers["openai"].affinity == "off"
    for bad, field in (
        ("affinity: sometimes", "affinity"),
        ("affinity_ttl_s: 0", "affinity_ttl_s"),
    ):
        path.write_text(f"providers:\n  openai:\n    {bad}\n")
        with pytest.raises(ConfigError) as info:
            load_settings({}, path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message and f"openai.{field}" in message


# --- end to end -------------------------------------------------------------------------------

KEYS = {p: [f"sk-{p}-affinity-key-{n:04d}" for n in range(4)] for p in ("openai", "claude")}


def config(affinity: str = "prefix", **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            p: {"keys": keys, "rps": 0, "max_conn": 0, "affinity": affinity, **extra}
            for p, keys in KEYS.items()
        }
    }


class Conversation:
    """One multi-turn conversation through an SDK client; its turns are told apart in what
    the mock received by the marker in its system prompt."""

    def __init__(self, gw: Any, n: int, family: str, explicit: bool) -> None:
        self.n, self.family, self.explicit = n, family, explicit
        self.marker = f"conversation-{n:03d}"
        self.system = f"You are assistant {self.marker}. " + "Rules. " * 40
        self.history: list[dict[str, Any]] = []
        self.results: list[str] = []
        self.gw = gw

    def turn(self, stream: bool = False) -> str:
        self.history.append(
            {"role": "user", "content": f"turn {len(self.results)} of {self.marker}"}
        )
        if self.family == "openai":
            client = openai.OpenAI(
                base_url=self.gw.url + "/openai/v1", api_key=PASSWORD, max_retries=0
            )
            extra = {"prompt_cache_key": self.marker} if self.explicit else {}
            messages = [{"role": "system", "content": self.system}, *self.history]
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-x", messages=messages, extra_body=extra or None, stream=stream
            )
            if stream:
                text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            else:
                text = raw.parse().choices[0].message.content or ""
        else:
            client = anthropic.Anthropic(
                base_url=self.gw.url + "/claude", api_key=PASSWORD, max_retries=0
            )
            meta = {"metadata": {"user_id": f"user-{self.marker}"}} if self.explicit else {}
            raw = client.messages.with_raw_response.create(
                model="claude-x", max_tokens=64, system=self.system, messages=self.history, **meta
            )
            text = "".join(b.text for b in raw.parse().content if b.type == "text")
        self.history.append({"role": "assistant", "content": text})
        result = raw.headers.get("x-keygate-affinity", "")
        self.results.append(result)
        return result

    def keys(self, mock: MockUpstream) -> list[str | None]:
        """The key each of this conversation's turns reached, in order."""
        return [r.key for r in mock.records() if self.marker.encode() in r.body and r.status == 200]


def script(gw: Any, turns: int = 4, seed: int = 7) -> list[Conversation]:
    """20 conversations (OpenAI and Anthropic clients, half with an explicit id), their turns
    interleaved in a shuffled order."""
    convs = [Conversation(gw, n, ("openai", "claude")[n % 2], n % 4 < 2) for n in range(20)]
    order = [c for c in convs for _ in range(turns)]
    random.Random(seed).shuffle(order)
    for c in order:
        c.turn()
    return convs


def cache_hits(mock: MockUpstream) -> int:
    return sum(h for h, _, _ in mock.prompt_cache.stats().values())


def test_every_turn_reaches_the_key_of_the_turn_before(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    gw = gateway_factory(config=config())
    convs = script(gw)
    possible = sum(len(c.results) - 1 for c in convs)
    for c in convs:
        keys = c.keys(mock)
        assert len(keys) == 4 and len(set(keys)) == 1, (c.marker, keys)
        assert c.results == ["new", "hit", "hit", "hit"], (c.marker, c.results)
    used = {k for c in convs for k in c.keys(mock)}
    assert len(used) == 8  # spread over every key of both providers, not all on one
    assert cache_hits(mock) >= 0.95 * possible
    stats = gw.api("GET", "/api/stats").json()["providers"]
    assert stats["openai"]["affinity"] == {"hit": 30, "new": 10, "moved": 0}
    metrics = gw.api("GET", "/metrics").text
    assert 'keygate_affinity_total{provider="claude",result="hit"} 30.0' in metrics


def test_affinity_off_is_round_robin(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = gateway_factory(config=config("off"))
    convs = script(gw)
    possible = sum(len(c.results) - 1 for c in convs)
    assert {r for c in convs for r in c.results} == {"off"}
    assert cache_hits(mock) <= 0.35 * possible


def test_cached_tokens_are_reported_whole_and_streamed(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    cfg = config()
    cfg["providers"]["cerebras"] = {"keys": ["csk-affinity-key-0001"], "rps": 0, "max_conn": 0}
    gw = gateway_factory(config=cfg)
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": "S" * 400}, {"role": "user", "content": "q"}],
    }
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {PASSWORD}"}) as c:
        first = c.post("/openai/v1/chat/completions", json=body).json()["usage"]
        again = c.post("/openai/v1/chat/completions", json=body).json()["usage"]
        stream = c.post(
            "/openai/v1/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        ).text
        claude = {
            "model": "m",
            "max_tokens": 8,
            "system": "S" * 400,
            "messages": [{"role": "user", "content": "q"}],
        }
        m1 = c.post("/claude/v1/messages", json=claude).json()["usage"]
        m2 = c.post("/claude/v1/messages", json=claude).json()["usage"]
        # an Anthropic client on the OpenAI provider: the cached tokens translated
        t = c.post("/openai/v1/messages", json=claude).json()["usage"]
        t2 = c.post("/openai/v1/messages", json=claude).json()["usage"]
        m_stream = c.post("/claude/v1/messages", json={**claude, "stream": True}).text
        # a Responses client on a Chat provider: its answer's usage translated
        responses = {"model": "m", "instructions": "S" * 400, "input": "q"}
        r1 = c.post("/cerebras/v1/responses", json=responses).json()["usage"]
        r2 = c.post("/cerebras/v1/responses", json=responses).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert 100 <= again["prompt_tokens_details"]["cached_tokens"] <= again["prompt_tokens"]
    assert '"cached_tokens":' in stream and '"cached_tokens":0' not in stream
    assert m1["cache_read_input_tokens"] == 0 and m2["cache_read_input_tokens"] >= 100
    assert t.get("cache_read_input_tokens", 0) == 0 and t2["cache_read_input_tokens"] >= 100
    assert '"cache_read_input_tokens":1' in m_stream or '"cache_read_input_tokens":9' in m_stream
    assert r1["input_tokens_details"]["cached_tokens"] == 0
    assert r2["input_tokens_details"]["cached_tokens"] >= 100


def pinned_key(gw: Any, mock: MockUpstream, conv: Conversation) -> tuple[str, int]:
    secret = conv.keys(mock)[-1]
    assert secret is not None
    keys = gw.api("GET", "/api/keys", params={"provider": conv.family}).json()["keys"]
    (found,) = [k["id"] for k in keys if k["masked"].endswith(secret[-4:])]
    return secret, found


@pytest.mark.parametrize("how", ["429", "disabled", "quota"])
def test_a_pinned_key_that_cannot_serve_is_left_at_once(
    gateway_factory: Any, mock: MockUpstream, how: str
) -> None:
    extra = {"key_rpm": 3} if how == "quota" else {}
    gw = gateway_factory(config=config(**extra))
    for family in ("openai", "claude"):
        mock.reset()
        conv = Conversation(gw, 1 if family == "openai" else 2, family, explicit=False)
        conv.turn()
        conv.turn()
        bad, bad_id = pinned_key(gw, mock, conv)
        sent = mock.count(bad)
        if how == "429":
            mock.set_behavior(bad, status=429, headers={"retry-after": "120"})
            expected_bad = sent + 1  # the one answer that tells: retried on another key
        elif how == "disabled":
            r = gw.api("PATCH", f"/api/keys/{bad_id}", json={"status": "disabled"})
            assert r.status_code == 200
            expected_bad = sent
        else:
            conv.turn()  # the key's third request this minute: its quota is spent
            expected_bad = sent + 1
        assert conv.turn() == "moved"
        assert conv.turn() == "hit" and conv.turn() == "hit"
        assert mock.count(bad) == expected_bad
        keys = conv.keys(mock)
        assert len(set(keys[-3:])) == 1 and keys[-1] != bad
        mock.set_behavior(bad)


def test_affinity_is_set_at_run_time(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = gateway_factory(config=config())
    r = gw.api("PATCH", "/api/providers/openai", json={"affinity": "sometimes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "affinity"
    r = gw.api("PATCH", "/api/providers/openai", json={"affinity_ttl_s": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "affinity_ttl_s"
    r = gw.api("PATCH", "/api/providers/openai", json={"affinity": "off", "affinity_ttl_s": 30})
    assert r.status_code == 200 and (r.json()["affinity"], r.json()["affinity_ttl_s"]) == (
        "off",
        30,
    )
    listed = {p["name"]: p for p in gw.api("GET", "/api/providers").json()["providers"]}
    assert listed["openai"]["affinity"] == "off" and listed["claude"]["affinity"] == "prefix"
    conv = Conversation(gw, 3, "openai", explicit=True)
    assert conv.turn() == "off"
    gw.api("PATCH", "/api/providers/openai", json={"affinity": "header"})
    assert [conv.turn(), conv.turn()] == ["new", "hit"]
    plain = Conversation(gw, 4, "openai", explicit=False)
    assert plain.turn() == ""  # `header`: a body without an explicit id is not pinned


def test_every_route_says_what_the_pick_made_of_the_pin(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    gw = gateway_factory(config=config())
    chat = {"model": "gpt-x", "messages": [{"role": "user", "content": "route test"}]}
    messages = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "tr"}]}
    routes = (
        ("/openai/v1/chat/completions", chat),  # the prefix route
        ("/v1/chat/completions", {**chat, "model": "openai/gpt-x"}),  # the unified endpoint
        ("/openai/v1/messages", messages),  # translated: an Anthropic client, OpenAI provider
        (  # a stream
            "/openai/v1/chat/completions",
            {**chat, "stream": True, "messages": [{"role": "user", "content": "a stream"}]},
        ),
    )
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {PASSWORD}"}) as c:
        for path, body in routes:
            said = [c.post(path, json=body).headers.get("x-keygate-affinity") for _ in range(3)]
            assert said == ["new", "hit", "hit"], (path, said)
        mock.set_behavior(None, status=400)  # a refusal relayed as it came still says it
        r = c.post("/openai/v1/chat/completions", json=chat)
        assert (r.status_code, r.headers.get("x-keygate-affinity")) == (400, "hit")


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    if redis_bin() is None:
        pytest.skip("redis-server is not installed")
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.mark.redis
def test_two_instances_on_one_redis_send_a_conversation_to_one_key(
    gateway_factory: Any, mock: MockUpstream, redis_server: RedisServer
) -> None:
    env = {"KEYGATE_REDIS_URL": redis_server.url}
    one, two = (gateway_factory(config=config(), env=env) for _ in range(2))
    convs = [Conversation(one, n, ("openai", "claude")[n % 2], n % 4 < 2) for n in range(10)]
    order = [c for c in convs for _ in range(4)]
    random.Random(3).shuffle(order)  # interleaved: round-robin alone would not line them up
    for c in order:
        c.gw = (one, two)[(len(c.results) + c.n) % 2]  # every turn on the other instance
        c.turn()
    for c in convs:
        keys = c.keys(mock)
        assert len(keys) == 4 and len(set(keys)) == 1, (c.marker, keys)
        assert c.results == ["new", "hit", "hit", "hit"], (c.marker, c.results)
    # Redis goes away: the pins of each instance serve, never an error
    redis_server.stop()
    for c in convs[:2]:
        assert c.turn() in ("hit", "new", "moved")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None
    or (shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK)),
    reason="needs the nginx and wrk binaries (apt-get install nginx-light wrk)",
)
def test_bench_affinity_case_smoke(tmp_path: Path) -> None:
    """`keygate bench`'s affinity case end to end, briefly: both keygates answer every
    multi-turn body, and the ratio is reported (its figure is the benchmark's business)."""
    skip = "wrk,bare,litellm,stream,translated,memory"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keygate.benchmark",
            "--quick",
            "--skip",
            skip,
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((tmp_path / "bench.json").read_text())["affinity"]
    assert found["body_bytes"] > 4000 and found["ratio"] > 0, found
    for label in ("off", "prefix"):
        for run in found["runs"][label]:
            assert run["requests"] > 0 and run["errors"] == 0 and not run["flagged"], run
    assert "prefix affinity >= 0.95 of affinity off" in proc.stdout
