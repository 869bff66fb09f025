"""One endpoint for every model (SPEC §10), driven by the real OpenAI SDK on `base_url=…/v1`.

The model name chooses the provider: `groq/…` reaches groq with the prefix stripped, a plain
name reaches the default provider byte for byte, an alias maps; groups fall back across
providers or spread over free capacity. Each provider has its own key, so the mock tells which
provider a request reached by the key it carried.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from harness import eventually, wait_log
from keygate.testing.mock_upstream import MockUpstream
from servers import redis_bin, start_redis

PASSWORD = "gw-test-password"
KEYS = {
    "cerebras": "csk-cerebras-aaaa1111",
    "groq": "gsk-groq-bbbb2222",
    "openai": "sk-openai-cccc3333",
    "openrouter": "sk-or-dddd4444",
    "deepseek": "sk-deepseek-eeee5555",
    "xai": "xai-grok-ffff6666",
    "claude": "sk-ant-gggg7777",
}
ENV = {f"{name.upper()}_API_KEYS": key for name, key in KEYS.items()}
OPEN = {"rps": 0, "max_conn": 0, "retries": 2, "backoff_base_s": 0.01}
MODELS = {
    "gpt-4o": "openai/gpt-4o-mini",
    "fast": {
        "strategy": "fallback",
        "targets": ["groq/llama-3.1-8b-instant", "cerebras/llama3.1-8b"],
    },
    "wide": {"strategy": "spread", "targets": ["deepseek/deepseek-chat", "xai/grok-2"]},
    "opus": "claude/claude-opus-4",
}
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


def config(**providers: Any) -> dict[str, Any]:
    base = {name: dict(OPEN) for name in KEYS}
    for name, extra in providers.items():
        base[name] = {**base[name], **extra}
    return {"providers": base, "models": MODELS}


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(env=ENV, config=config(cerebras={"models": ["extra-model"]}))


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=PASSWORD, max_retries=0, timeout=10)


def provider_of(rec: Any) -> str:
    return next(name for name, key in KEYS.items() if rec.key == key)


def chat(gw: Any, model: str, **kw: Any) -> Any:
    return oai(gw).chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kw)


def test_provider_prefix_reaches_that_provider_with_the_prefix_stripped(
    gw: Any, mock: MockUpstream
) -> None:
    raw = chat(gw, "groq/llama-3.1-8b-instant")
    out = raw.parse()
    assert out.choices[0].message.content == "Hello from mock"
    assert raw.headers["x-keygate-provider"] == "groq"
    assert raw.headers["x-keygate-model"] == "llama-3.1-8b-instant"
    [rec] = mock.records()
    assert provider_of(rec) == "groq"
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.headers["authorization"] == f"Bearer {KEYS['groq']}"
    assert PASSWORD not in str(rec.headers)
    sent = json.loads(rec.body)
    assert sent["model"] == "llama-3.1-8b-instant"
    assert sent["messages"] == MESSAGES


def test_openrouter_vendor_names_keep_their_slash(gw: Any, mock: MockUpstream) -> None:
    raw = chat(gw, "openrouter/meta-llama/llama-3.1-8b")
    assert raw.headers["x-keygate-provider"] == "openrouter"
    [rec] = mock.records()
    assert provider_of(rec) == "openrouter"
    assert b'"model":"meta-llama/llama-3.1-8b"' in rec.body
    # a vendor/model whose first segment is no provider goes to the default, unchanged
    mock.reset()
    raw = chat(gw, "meta-llama/llama-3.1-8b")
    assert raw.headers["x-keygate-provider"] == "cerebras"
    assert b'"meta-llama/llama-3.1-8b"' in mock.records()[0].body


def test_plain_name_reaches_the_default_provider_byte_for_byte(gw: Any, mock: MockUpstream) -> None:
    body = b'{ "messages" : [ {"role":"user","content":"hi"} ],\n  "model":"llama3.1-8b" }'
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {PASSWORD}", "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-keygate-provider"] == "cerebras"
    assert r.headers["x-keygate-model"] == "llama3.1-8b"
    [rec] = mock.records()
    assert provider_of(rec) == "cerebras"
    assert rec.body == body


def test_alias_maps_to_its_target(gw: Any, mock: MockUpstream) -> None:
    raw = chat(gw, "gpt-4o")
    assert raw.parse().choices[0].message.content == "Hello from mock"
    assert raw.headers["x-keygate-provider"] == "openai"
    assert raw.headers["x-keygate-model"] == "gpt-4o-mini"
    [rec] = mock.records()
    assert provider_of(rec) == "openai"
    assert b'"model":"gpt-4o-mini"' in rec.body


@pytest.mark.parametrize(
    ("model", "provider"),
    [("groq/llama-3.1-8b-instant", "groq"), ("llama3.1-8b", "cerebras"), ("gpt-4o", "openai")],
)
def test_streaming_through_prefix_plain_and_alias(
    gw: Any, mock: MockUpstream, model: str, provider: str
) -> None:
    with oai(gw).chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True
    ) as resp:
        assert resp.headers["x-keygate-provider"] == provider
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in resp.parse() if chunk.choices
        )
    assert text == "Hello from mock"
    [rec] = mock.records()
    assert provider_of(rec) == provider


def test_a_target_of_the_other_api_family_is_reached_through_translation(
    gw: Any, mock: MockUpstream
) -> None:
    """An OpenAI-format client asking for a Claude model: the request reaches claude as an
    Anthropic Messages request, and the answer comes back as a Chat Completion."""
    raw = chat(gw, "opus")
    assert raw.parse().choices[0].message.content == "Hello from mock"
    assert raw.headers["x-keygate-provider"] == "claude"
    [rec] = mock.records()
    assert provider_of(rec) == "claude" and rec.path == "/v1/messages"
    sent = json.loads(rec.body)
    assert sent["model"] == "claude-opus-4" and sent["messages"][0]["role"] == "user"
    assert "max_tokens" in sent  # Anthropic requires it; the translation fills it in
    [last] = httpx.get(f"{gw.url}/api/requests", headers=gw.admin()).json()["requests"][:1]
    assert last["translated"] == "openai→anthropic"


def test_a_fallback_group_may_mix_api_families(gateway_factory: Any, mock: MockUpstream) -> None:
    """claude refuses (529, overloaded): the chain moves on to cerebras, which speaks the
    client's own family; streamed, the client reads one clean stream from the second."""
    models = {**MODELS, "mixed": {"targets": ["claude/claude-opus-4", "cerebras/llama3.1-8b"]}}
    gw = gateway_factory(env=ENV, config={**config(), "models": models})
    mock.set_behavior(KEYS["claude"], status=529)
    with oai(gw).chat.completions.with_streaming_response.create(
        model="mixed", messages=MESSAGES, stream=True
    ) as resp:
        assert resp.headers["x-keygate-provider"] == "cerebras"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "Hello from mock"
    assert [provider_of(r) for r in mock.records()] == ["claude", "cerebras"]
    assert mock.records()[0].path == "/v1/messages"
    # the other way round: cerebras fails, claude's answer is translated back
    mock.set_behavior(KEYS["claude"], status=200)
    mock.set_behavior(KEYS["cerebras"], status=503)
    models["mixed"] = {"targets": ["cerebras/llama3.1-8b", "claude/claude-opus-4"]}
    assert gw.api("PUT", "/api/models/mixed", json=models["mixed"]).status_code == 200
    raw = chat(gw, "mixed")
    assert raw.headers["x-keygate-provider"] == "claude"
    assert raw.parse().choices[0].message.content == "Hello from mock"


@pytest.mark.parametrize("status", [429, 500, 503, 529])
def test_fallback_serves_from_the_second_when_the_first_fails(
    gw: Any, mock: MockUpstream, status: int
) -> None:
    mock.set_behavior(KEYS["groq"], status=status)
    raw = chat(gw, "fast")
    assert raw.parse().choices[0].message.content == "Hello from mock"
    assert raw.headers["x-keygate-provider"] == "cerebras"
    assert raw.headers["x-keygate-model"] == "llama3.1-8b"
    assert [provider_of(r) for r in mock.records()] == ["groq", "cerebras"]
    assert b'"model":"llama3.1-8b"' in mock.records()[1].body
    [last] = httpx.get(f"{gw.url}/api/requests", headers=gw.admin()).json()["requests"][:1]
    assert last["provider"] == "cerebras"
    assert last["route"] == f"groq/llama-3.1-8b-instant ({status}) → cerebras/llama3.1-8b"


def test_fallback_passes_over_a_provider_whose_keys_are_all_cooling(
    gw: Any, mock: MockUpstream
) -> None:
    mock.set_behavior(KEYS["groq"], status=429, headers={"retry-after": "120"})
    assert chat(gw, "fast").headers["x-keygate-provider"] == "cerebras"
    assert mock.count(KEYS["groq"]) == 1  # its one key is cooling for two minutes now
    for _ in range(3):
        raw = chat(gw, "fast")
        assert raw.headers["x-keygate-provider"] == "cerebras"
    assert mock.count(KEYS["groq"]) == 1  # passed over at once: nothing more sent there
    assert mock.count(KEYS["cerebras"]) == 4
    [last] = httpx.get(f"{gw.url}/api/requests", headers=gw.admin()).json()["requests"][:1]
    assert last["route"] == "groq/llama-3.1-8b-instant (no usable key) → cerebras/llama3.1-8b"
    assert "via='groq/llama-3.1-8b-instant (no usable key)" in gw.log()


def test_a_client_error_does_not_fall_back(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(KEYS["groq"], status=400)
    with pytest.raises(openai.BadRequestError):
        chat(gw, "fast")
    assert [provider_of(r) for r in mock.records()] == ["groq"]


def test_when_every_target_fails_the_last_failure_is_the_answer(
    gw: Any, mock: MockUpstream
) -> None:
    mock.set_behavior(KEYS["groq"], status=503)
    mock.set_behavior(KEYS["cerebras"], status=500)
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "fast", "messages": MESSAGES},
        headers={"authorization": f"Bearer {PASSWORD}"},
    )
    assert r.status_code == 500
    assert r.headers["x-keygate-provider"] == "cerebras"
    assert r.headers["x-should-retry"] == "false"
    # one budget for the chain: max(retries of a provider, targets - 1) = 2 retries
    assert [provider_of(rec) for rec in mock.records()] == ["groq", "cerebras", "cerebras"]


def test_a_stream_that_opens_with_an_error_event_falls_back(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(KEYS["groq"], stream_error=True)
    with oai(gw).chat.completions.with_streaming_response.create(
        model="fast", messages=MESSAGES, stream=True
    ) as resp:
        assert resp.headers["x-keygate-provider"] == "cerebras"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "Hello from mock"
    assert [provider_of(r) for r in mock.records()] == ["groq", "cerebras"]
    # the route shows what the stream carried, not the 200 it came with
    [last] = httpx.get(f"{gw.url}/api/requests", headers=gw.admin()).json()["requests"][:1]
    assert (
        last["route"].startswith("groq/")
        and "(429 in its first event) → cerebras/" in last["route"]
    ), last["route"]


def test_a_stream_error_event_on_a_prefix_route_retries_on_another_key(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    keys = ["gsk-first-aaaa0001", "gsk-second-bbbb0002"]
    gw = gateway_factory(env={"GROQ_API_KEYS": ",".join(keys)}, config=config())
    mock.set_behavior(keys[0], stream_error=True)
    client = openai.OpenAI(
        base_url=f"{gw.url}/groq/v1", api_key=PASSWORD, max_retries=0, timeout=10
    )
    seen = []
    for _ in range(2):
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        seen.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert seen == ["Hello from mock"] * 2
    # whichever request met the first key first was retried on the second; that key now cools
    assert (mock.count(keys[0]), mock.count(keys[1])) == (1, 2)


def test_a_last_try_stream_error_is_relayed_as_it_came(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    gw = gateway_factory(env=ENV, config=config(groq={"retries": 0}))
    mock.set_behavior(KEYS["groq"], stream_error=True)
    r = httpx.post(
        f"{gw.url}/groq/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True},
        headers={"authorization": f"Bearer {PASSWORD}"},
    )
    assert r.status_code == 200
    assert r.text.startswith('data: {"error"')
    assert r.headers["x-keygate-provider"] == "groq"


async def _burst(url: str, n: int, model: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{url}/v1/chat/completions",
                    json={"model": model, "messages": MESSAGES},
                    headers={"authorization": f"Bearer {PASSWORD}"},
                )
                for _ in range(n)
            )
        )


def test_spread_follows_free_capacity_under_load(gateway_factory: Any, mock: MockUpstream) -> None:
    """deepseek may hold 1 request at a time, xai 3: under a burst, spread sends each request
    where there is most room for its size, so xai serves about three times as many."""
    gw = gateway_factory(env=ENV, config=config(deepseek={"max_conn": 1}, xai={"max_conn": 3}))
    for name in ("deepseek", "xai"):
        mock.set_behavior(KEYS[name], delay_s=0.15)
    answers = asyncio.run(_burst(gw.url, 32, "wide"))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    by_header = Counter(r.headers["x-keygate-provider"] for r in answers)
    by_mock = Counter(provider_of(r) for r in mock.records())
    assert by_header == by_mock
    # the limits' ratio is 1:3, so 8:24 of 32; the queue order allows a little slack
    assert 5 <= by_mock["deepseek"] <= 11, by_mock
    assert by_mock["xai"] == 32 - by_mock["deepseek"]
    # and never above a provider's own limit
    for name, limit in (("deepseek", 1), ("xai", 3)):
        spans = sorted((r.started, r.ended) for r in mock.records() if provider_of(r) == name)
        peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
        assert peak <= limit, (name, peak)


def test_v1_models_lists_every_provider_and_the_groups(gw: Any, mock: MockUpstream) -> None:
    assert not [r for r in mock.records() if r.path.endswith("models")]  # nothing at start
    mock.set_behavior(KEYS["cerebras"], models=["llama3.1-8b", "qwen-3-32b"])
    mock.set_behavior(KEYS["groq"], models=["llama-3.1-8b-instant"])
    listed = oai(gw).models.list()
    ids = {m.id: m for m in listed.data}
    assert {"llama3.1-8b", "qwen-3-32b", "extra-model"} <= set(ids)  # default: plain
    assert "groq/llama-3.1-8b-instant" in ids
    assert "openai/mock-model" in ids and ids["openai/mock-model"].owned_by == "openai"
    assert not any(i.startswith("gemini/") for i in ids)  # no keys: not listed
    fast = ids["fast"].model_dump()
    assert fast["owned_by"] == "keygate"
    assert fast["keygate"] == {
        "strategy": "fallback",
        "targets": ["groq/llama-3.1-8b-instant", "cerebras/llama3.1-8b"],
    }
    assert ids["gpt-4o"].model_dump()["keygate"]["targets"] == ["openai/gpt-4o-mini"]
    fetches = len(mock.records())
    oai(gw).models.list()  # from memory
    assert len(mock.records()) == fetches
    # the provider's own list is still the upstream's answer
    mock.reset()
    r = httpx.get(f"{gw.url}/groq/v1/models", headers={"authorization": f"Bearer {PASSWORD}"})
    assert r.json()["data"][0]["id"] == "mock-model"
    assert [rec.path for rec in mock.records()] == ["/v1/models"]


def test_v1_models_keeps_the_last_good_list_when_a_fetch_fails(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    cfg = config()
    cfg["models_ttl_s"] = 0.2
    gw = gateway_factory(env=ENV, config=cfg)
    mock.set_behavior(KEYS["groq"], models=["good-model"])
    assert "groq/good-model" in {m.id for m in oai(gw).models.list()}
    mock.set_behavior(KEYS["groq"], status=500)
    before = mock.count(KEYS["groq"])

    def refetched() -> bool:
        oai(gw).models.list()
        return mock.count(KEYS["groq"]) > before

    eventually(refetched, 10, "a background refresh of groq's list")
    eventually(lambda: all(r.completed for r in mock.records()), 5, "the failed fetch to finish")
    assert "groq/good-model" in {m.id for m in oai(gw).models.list()}
    assert "model list of groq" in gw.log()


def test_admin_models_api_validates_and_applies_at_once(gw: Any, mock: MockUpstream) -> None:
    api = httpx.Client(base_url=gw.url, headers=gw.admin(), timeout=10)
    bad = {
        "unknown provider": ("x", {"target": "nosuch/model"}, "models.x"),
        "empty targets": ("x", {"strategy": "fallback", "targets": []}, "models.x.targets"),
        "bad strategy": ("x", {"strategy": "random", "targets": ["groq/a"]}, "models.x.strategy"),
        "cycle": ("gpt-4o", {"targets": ["fast2"]}, "models"),
    }
    assert api.put("/api/models/fast2", json={"targets": ["gpt-4o"]}).status_code == 200
    for what, (name, spec, field) in bad.items():
        r = api.put(f"/api/models/{name}", json=spec)
        assert r.status_code == 400, (what, r.text)
        assert field in r.json()["error"]["message"], (what, r.text)
    r = api.put("/api/models/mine", json={"strategy": "fallback", "targets": ["groq/a", "fast"]})
    assert r.status_code == 200, r.text
    assert r.json()["targets"] == ["groq/a", "groq/llama-3.1-8b-instant", "cerebras/llama3.1-8b"]
    raw = chat(gw, "mine")
    assert raw.headers["x-keygate-provider"] == "groq"
    assert b'"model":"a"' in mock.records()[0].body
    listed = api.get("/api/models").json()
    assert listed["routes"]["mine"]["source"] == "admin"
    assert listed["routes"]["fast"]["source"] == "config"
    assert "groq" in listed["providers"]
    # an entry another one names stays; deleting a config entry hides it, a stored one goes
    r = api.delete("/api/models/fast")
    assert r.status_code == 409 and "models.mine" in r.json()["error"]["message"]
    assert api.delete("/api/models/mine").status_code == 200
    assert api.delete("/api/models/fast").status_code == 200
    assert api.delete("/api/models/mine").status_code == 404
    mock.reset()
    raw = chat(gw, "fast")  # no longer a group: the default provider, unchanged
    assert raw.headers["x-keygate-provider"] == "cerebras"
    assert b'"model":"fast"' in mock.records()[0].body
    assert "fast" not in {m.id for m in oai(gw).models.list()}


def test_models_table_survives_a_restart(gateway_factory: Any, tmp_path: Any) -> None:
    data = tmp_path / "kept"
    gw = gateway_factory(env=ENV, config=config(), data_dir=data)
    api = httpx.Client(base_url=gw.url, headers=gw.admin(), timeout=10)
    assert api.put("/api/models/kept", json={"target": "groq/kept-model"}).status_code == 200
    gw.stop()
    gw2 = gateway_factory(env=ENV, config=config(), data_dir=data)
    assert chat(gw2, "kept").headers["x-keygate-model"] == "kept-model"


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        ({"a": "nosuch/m"}, "models.a: unknown provider 'nosuch'"),
        ({"a": {"strategy": "fallback", "targets": []}}, "models.a.targets: must be a non-empty"),
        ({"a": {"targets": ["b"]}, "b": "a"}, "models.b: cycle: a → b → a"),
        ({"a": {"strategy": "round", "targets": ["groq/m"]}}, "models.a.strategy: must be one"),
        ({"a": {"targets": ["groq/m"], "weight": 2}}, "models.a: unknown field(s) weight"),
        ({"a": {"targets": ["groq/m", 5]}}, "models.a.targets[1]: must be a non-empty string"),
    ],
)
def test_a_bad_models_table_is_one_line_naming_file_and_key(
    tmp_path: Any, models: Any, problem: str
) -> None:
    from keygate.cli.configcheck import check_config
    from keygate.config.settings import ConfigError, load_settings

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": models}, allow_unicode=True))
    with pytest.raises(ConfigError) as exc:
        load_settings({}, path)
    assert str(exc.value).startswith(f"config file {path}: {problem}")
    assert "\n" not in str(exc.value)
    [line] = check_config(path, {})
    assert line == str(exc.value)


def test_provider_models_and_ttl_in_the_config(tmp_path: Any) -> None:
    from keygate.config.settings import ConfigError, load_settings

    path = tmp_path / "ok.yaml"
    path.write_text(
        yaml.safe_dump({"models_ttl_s": 60, "providers": {"groq": {"models": ["a", "b", "a"]}}})
    )
    s = load_settings({}, path)
    assert s.models_ttl_s == 60 and s.providers["groq"].models == ["a", "b"]
    path.write_text(yaml.safe_dump({"providers": {"groq": {"models": "a"}}}))
    with pytest.raises(ConfigError, match=r"providers\.groq\.models: must be a list"):
        load_settings({}, path)


def test_keygate_models_lists_the_table(gw: Any) -> None:
    api = httpx.Client(base_url=gw.url, headers=gw.admin(), timeout=10)
    assert api.put("/api/models/mine", json={"target": "xai/grok-2"}).status_code == 200
    config_file = gw.argv[gw.argv.index("--config") + 1]
    proc = subprocess.run(
        [sys.executable, "-m", "keygate", "models", "--json", "--config", config_file],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    routes = {r["name"]: r for r in doc["routes"]}
    assert routes["mine"] == {
        "name": "mine",
        "strategy": "alias",
        "targets": ["xai/grok-2"],
        "source": "admin",
    }
    assert routes["fast"]["source"] == "config"
    assert doc["providers"]["cerebras"] == ["extra-model"]
    text = subprocess.run(
        [sys.executable, "-m", "keygate", "models", "--config", config_file],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "mine" in text and "xai/grok-2" in text


@pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed")
def test_two_instances_on_redis_see_a_models_change_at_once(
    gateway_factory: Any, mock: MockUpstream, tmp_path: Any
) -> None:
    redis = start_redis(tmp_path / "redis")
    try:
        env = {**ENV, "KEYGATE_REDIS_URL": redis.url}
        a, b = (
            gateway_factory(env=env, config=config(), data_dir=tmp_path / "shared")
            for _ in range(2)
        )
        api = httpx.Client(base_url=a.url, headers=a.admin(), timeout=10)
        assert api.put("/api/models/team", json={"target": "xai/grok-2"}).status_code == 200

        def b_routes_it() -> bool:
            return chat(b, "team").headers["x-keygate-provider"] == "xai"

        put = time.monotonic()
        eventually(b_routes_it, 5, "the other instance routes the new alias")
        took = time.monotonic() - put
        assert took < 0.9, took  # the announcement, not the 1 s store poll
        assert "team" in {m.id for m in oai(b).models.list()}
        assert api.delete("/api/models/team").status_code == 200
        eventually(
            lambda: chat(b, "team").headers["x-keygate-provider"] == "cerebras",
            5,
            "the other instance forgets it",
        )
    finally:
        redis.stop()


def test_a_reload_applies_a_changed_models_table(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = gateway_factory(env=ENV, config=config())
    config_file = Path(gw.argv[gw.argv.index("--config") + 1])
    assert chat(gw, "gpt-4o").headers["x-keygate-provider"] == "openai"
    changed = config()
    changed["models"] = {**MODELS, "gpt-4o": "xai/grok-2"}
    config_file.write_text(yaml.safe_dump(changed))
    mark = len(gw.log())
    gw.proc.send_signal(signal.SIGHUP)
    wait_log(gw, r"reload: .* re-read", mark)
    assert chat(gw, "gpt-4o").headers["x-keygate-provider"] == "xai"
    # a table naming an unknown provider is refused whole, the running one stays
    changed["models"] = {"gpt-4o": "nosuch/m"}
    config_file.write_text(yaml.safe_dump(changed))
    mark = len(gw.log())
    gw.proc.send_signal(signal.SIGHUP)
    tail = wait_log(gw, "reload refused", mark)
    assert "models.gpt-4o: unknown provider 'nosuch'" in tail
    assert chat(gw, "gpt-4o").headers["x-keygate-provider"] == "xai"


def test_anthropic_sdk_on_the_unified_endpoint(gw: Any, mock: MockUpstream) -> None:
    """/v1/messages routes by model too: `claude/…` reaches claude, prefix stripped; a target
    of the other family is reached through translation."""
    client = anthropic.Anthropic(base_url=gw.url, api_key=PASSWORD, max_retries=0, timeout=10)
    raw = client.messages.with_raw_response.create(
        model="claude/claude-3-5-haiku", max_tokens=32, messages=MESSAGES
    )
    assert raw.parse().content[0].text == "Hello from mock"
    assert raw.headers["x-keygate-provider"] == "claude"
    [rec] = mock.records()
    assert provider_of(rec) == "claude" and rec.headers["x-api-key"] == KEYS["claude"]
    assert json.loads(rec.body)["model"] == "claude-3-5-haiku"
    # a target of the other family: translated both ways (an OpenAI request reaches groq)
    raw = client.messages.with_raw_response.create(
        model="groq/llama-3.1-8b-instant", max_tokens=32, messages=MESSAGES
    )
    assert raw.parse().content[0].text == "Hello from mock"
    assert raw.headers["x-keygate-provider"] == "groq"
    rec = mock.records()[1]
    assert provider_of(rec) == "groq" and rec.path.endswith("/v1/chat/completions")
    assert json.loads(rec.body)["model"] == "llama-3.1-8b-instant"


@pytest.mark.parametrize("failure", ["timeout", "connection refused"])
def test_fallback_on_a_timeout_or_an_unreachable_provider(
    gateway_factory: Any, mock: MockUpstream, failure: str
) -> None:
    from harness import free_port

    groq: dict[str, Any] = {"timeout_first_byte_s": 0.3, "retries": 0}
    env = dict(ENV)
    if failure == "timeout":
        mock.set_behavior(KEYS["groq"], hang=True)
    else:
        from keygate.config.catalog import env_names

        env[env_names("groq", "BASE_URL")[0]] = f"http://127.0.0.1:{free_port()}"  # nobody there
    gw = gateway_factory(env=env, config=config(groq=groq))
    raw = chat(gw, "fast")
    assert raw.headers["x-keygate-provider"] == "cerebras"
    [last] = httpx.get(f"{gw.url}/api/requests", headers=gw.admin()).json()["requests"][:1]
    code = "upstream_timeout" if failure == "timeout" else "upstream_unreachable"
    assert last["route"] == f"groq/llama-3.1-8b-instant ({code}) → cerebras/llama3.1-8b"


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (b'data: {"error":{"message":"quota"}}\n\n', True),
        (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n', True),
        (b': keep-alive\n\ndata: {"error": {"code": 429}}\n\n', True),
        (b'\r\ndata:{"error":"x"}\r\n\r\n', True),
        (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk"}\n\n', False),
        (b"event: message_start\ndata: {}\n\n", False),
        (b'event: response.created\ndata: {"error": null}\n\n', False),
    ],
)
def test_first_event_judgement(head: bytes, error: bool) -> None:
    from keygate.proxy.firstevent import error_status, opens_with_error

    assert opens_with_error(head) is error
    if error:
        assert error_status(head) in (429, 500, 529)
    assert error_status(b'{"type":"overloaded_error"}') == 529
    assert error_status(b'{"error":{"code":"rate_limit_exceeded"}}') == 429
    assert error_status(b'{"error":{"message":"boom"}}') == 500


@pytest.mark.parametrize(
    ("event", "status"),
    [
        # the error's own type or code decides, as the same error sent as a status would
        (b'data: {"error":{"message":"quota service down","type":"server_error"}}\n\n', 500),
        (b'data: {"error":{"code":503,"message":"quota","status":"UNAVAILABLE"}}\n\n', 503),
        (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n', 529),
        (b'data: {"error":{"type":"authentication_error","message":"bad key"}}\n\n', 401),
        (b'data: {"error":{"code":"insufficient_quota","message":"pay up"}}\n\n', 429),
        (b'data: {"error":{"status":"RESOURCE_EXHAUSTED","message":"x"}}\n\n', 429),
        # nothing typed: the words of the message, as before
        (b'data: {"error":"rate limit reached"}\n\n', 429),
    ],
)
def test_an_error_event_is_judged_as_the_same_error_sent_as_a_status(
    event: bytes, status: int
) -> None:
    from keygate.control.base import Event
    from keygate.control.classify import classify
    from keygate.dialects.openai import OPENAI
    from keygate.proxy.firstevent import error_status

    assert error_status(event) == status
    if status >= 500:  # an overload or a server error is the provider's, never the key's
        verdict = classify(status, {}, event, None, OPENAI.reset_hint)
        assert verdict.event is Event.PROVIDER_ERROR and not verdict.key_fault


def test_fallback_passes_over_a_full_queue_at_once(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    from harness import admission

    gw = gateway_factory(env=ENV, config=config(groq={"max_conn": 1, "queue": 0}))
    mock.set_behavior(KEYS["groq"], delay_s=2.0)
    busy = threading.Thread(target=chat, args=(gw, "groq/held"))
    busy.start()
    try:
        eventually(lambda: admission(gw, "groq")["in_flight"] == 1, 5, "groq's one slot taken")
        started = time.monotonic()
        raw = chat(gw, "fast")
        assert raw.headers["x-keygate-provider"] == "cerebras"
        assert time.monotonic() - started < 1.0  # not after groq's slot frees
        [last] = httpx.get(f"{gw.url}/api/requests", headers=gw.admin()).json()["requests"][:1]
        assert last["route"] == "groq/llama-3.1-8b-instant (rate_limited) → cerebras/llama3.1-8b"
    finally:
        busy.join()


@pytest.mark.parametrize(
    ("body", "spliced"),
    [
        # the one top-level "model", spelt plainly: only its string changes, byte for byte
        (b'{"model" : "groq/m",\n "messages":[{"role":"user","content":"x"}], "n":1.50}', True),
        # escapes in the name, a second "model" (nested), a guess that is not the real one:
        # the parsed body is re-encoded instead
        (b'{"model": "groq/\\u006d", "messages": []}', False),
        (b'{"model": "groq/m", "metadata": {"model": "other"}, "messages": []}', False),
        (b'{"metadata": {"model": "x"}, "model": "groq/m", "messages": []}', False),
    ],
)
def test_a_routed_body_changes_only_its_model(body: bytes, spliced: bool) -> None:
    from types import SimpleNamespace

    from keygate.config.routing import ModelTable
    from keygate.proxy.unified import plan_route

    gw = SimpleNamespace(models=ModelTable({}, {"groq": None, "cerebras": None}))
    plan = plan_route(gw, "/v1/chat/completions", body)  # type: ignore[arg-type]
    assert plan is not None and plan.model == "groq/m"
    target = plan.route.targets[0]
    sent = plan.body_for(target, "")
    doc = json.loads(body)
    assert json.loads(sent) == {**doc, "model": "m"}
    assert (sent == body.replace(b'"groq/m"', b'"m"')) is spliced


def test_a_plain_routed_body_is_parsed_only_when_a_target_needs_it() -> None:
    """One plain "model" key and no \\u escape: the scan is what a parser reads, so the body
    is not parsed to route it; a target of another family parses it then, and a body that is
    no JSON object is refused there as the client's 400 (not a crash)."""
    from types import SimpleNamespace

    from keygate.config.routing import ModelTable
    from keygate.http.errors import GatewayError
    from keygate.proxy.unified import plan_route

    gw = SimpleNamespace(models=ModelTable({}, {"groq": None}))
    body = b'{"model":"groq/m","messages":[{"role":"user","content":"a\\nb \\"q\\""}]}'
    plan = plan_route(gw, "/v1/chat/completions", body)  # type: ignore[arg-type]
    assert plan is not None and plan.model == "groq/m" and plan._doc is None
    assert plan.body_for(plan.route.targets[0], "") == body.replace(b'"groq/m"', b'"m"')
    assert plan.doc == json.loads(body)
    broken = plan_route(gw, "/v1/chat/completions", b'{"model":"groq/m", oops')  # type: ignore[arg-type]
    assert broken is not None
    with pytest.raises(GatewayError) as err:
        _ = broken.doc
    assert err.value.status == 400
    # a \u escape anywhere could spell a second "model" key: parsed, routed by the real one
    spelt = b'{"\\u006dodel":"groq/real","messages":[{"model":"groq/m"}]}'
    plan = plan_route(gw, "/v1/chat/completions", spelt)  # type: ignore[arg-type]
    assert plan is not None and plan.model == "groq/real" and plan.span is None


# --- bounds of a group (issue 32, item 11) ------------------------------------------------------


def _targets(n: int, provider: str = "groq", tag: str = "m") -> list[str]:
    return [f"{provider}/{tag}{i}" for i in range(n)]


def test_a_group_holds_at_most_32_targets_from_the_admin_api(gw: Any) -> None:
    api = httpx.Client(base_url=gw.url, headers=gw.admin(), timeout=30)
    for n in (33, 10_000):
        r = api.put("/api/models/big", json={"strategy": "fallback", "targets": _targets(n)})
        assert r.status_code == 400, (n, r.text[:300])
        err = r.json()["error"]
        assert err["param"] == "models.big.targets", err
        assert err["message"].startswith("models.big.targets: at most 32 targets"), err
    assert api.get("/api/models").json()["routes"].get("big") is None, "nothing applied"
    r = api.put("/api/models/big", json={"strategy": "fallback", "targets": _targets(32)})
    assert r.status_code == 200, r.text
    assert len(r.json()["targets"]) == 32
    # an entry naming groups holds at most 32 targets once they are flattened
    other = {"strategy": "spread", "targets": _targets(20, "cerebras")}
    assert api.put("/api/models/other", json=other).status_code == 200
    r = api.put("/api/models/both", json={"targets": ["big", "other"]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "models.both", err
    assert "52 targets" in err["message"] and "at most 32" in err["message"], err
    r = api.put("/api/models/both", json={"target": "big"})  # an alias of a 32-target group
    assert r.status_code == 200, r.text
    # a group that would grow another entry past the bound is refused, naming that entry
    r = api.put("/api/models/other", json={"targets": _targets(13, "xai")})
    assert r.status_code == 200, r.text
    r = api.put("/api/models/big", json={"targets": [*_targets(31), "other"]})
    assert r.status_code == 400 and "models.big" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        ({"big": {"targets": _targets(33)}}, "models.big.targets: at most 32 targets"),
        (
            {
                "a": {"targets": _targets(20)},
                "b": {"targets": _targets(20, "cerebras")},
                "both": {"strategy": "spread", "targets": ["a", "b"]},
            },
            "models.both: ",
        ),
    ],
)
def test_config_check_refuses_a_group_of_more_than_32_targets(
    tmp_path: Any, models: Any, problem: str
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    proc = subprocess.run(
        [sys.executable, "-m", "keygate", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, proc.stdout
    [line] = proc.stderr.strip().splitlines()
    assert f"config file {path}: {problem}" in line, line
    assert "at most 32" in line


def test_a_chains_retry_budget_is_capped() -> None:
    from types import SimpleNamespace

    from keygate.proxy.unified import Plan

    def tries(n: int, retries: int = 2) -> list[Any]:
        rt = SimpleNamespace(cfg=SimpleNamespace(retries=retries))
        return [(rt, None, None) for _ in range(n)]

    assert Plan.budget(tries(3)) == 2 and Plan.budget(tries(3, retries=5)) == 5
    assert Plan.budget(tries(32)) == 31
    assert Plan.budget(tries(10_000)) == 31, "32 tries in all, however many targets"
    assert Plan.budget(tries(2, retries=10)) == 10


def test_a_chain_of_32_failing_targets_makes_32_tries(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    models = {"big": {"strategy": "fallback", "targets": _targets(32)}}
    gw = gateway_factory(env=ENV, config={**config(groq={"retries": 10}), "models": models})
    mock.set_behavior(None, status=500)
    with pytest.raises(openai.InternalServerError):
        chat(gw, "big")
    assert len(mock.records()) == 32
