"""The exact response cache (SPEC §19): a repeated request is answered from memory, byte for
byte, and the upstream sees it once; what must not be stored never is.

The gateway runs as a subprocess against the mock upstream on loopback (`gateway_factory`,
`mock`); the OpenAI and Anthropic SDKs are the clients. The store's bound and TTL are held by
unit tests with a fake clock.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from keygate.config.provider_config import CacheSettings, ProviderConfig, coerce_field
from keygate.proxy.cache import cache_key, directive
from keygate.runtime.cache import ResponseCache
from keygate.testing.mock_upstream import MockUpstream

PASSWORD = "gw-test-password"  # gateway_factory's default gateway password
ENV = {
    "CEREBRAS_API_KEYS": "csk-cerebras-aaaa1111",
    "CLAUDE_API_KEYS": "sk-ant-api03-bbbb2222",
    "GROQ_API_KEYS": "gsk-groq-cccc3333",
}
PROVIDERS: dict[str, Any] = {
    "cerebras": {"rps": 0, "max_conn": 0, "cache": {"ttl_s": 600}},
    "claude": {"rps": 0, "max_conn": 0, "cache": {}},
    "groq": {"rps": 0, "max_conn": 0},  # no cache
}
MESSAGES: Any = [{"role": "user", "content": "Translate: bonjour"}]


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(env=ENV, config={"providers": PROVIDERS})


def oai(gw: Any, prefix: str = "/cerebras/v1", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}{prefix}", api_key=PASSWORD, max_retries=0, timeout=10, **kw
    )


def claude(gw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{gw.url}/claude", api_key=PASSWORD, max_retries=0, timeout=10
    )


def chat(client: openai.OpenAI, **kw: Any) -> tuple[str | None, bytes]:
    kw.setdefault("model", "llama3.1-8b")
    kw.setdefault("messages", MESSAGES)
    raw = client.chat.completions.with_raw_response.create(**kw)
    return raw.headers.get("x-keygate-cache"), raw.http_response.read()


def chat_stream(client: openai.OpenAI, **kw: Any) -> tuple[str | None, list[str]]:
    with client.chat.completions.with_streaming_response.create(
        model="llama3.1-8b", messages=MESSAGES, stream=True, **kw
    ) as r:
        return r.headers.get("x-keygate-cache"), list(r.iter_lines())


def post(gw: Any, path: str, body: Any, **headers: str) -> httpx.Response:
    with gw.client() as c:
        return c.post(path, json=body, headers={**gw.auth(), **headers})


# --- served from the cache ------------------------------------------------------------------


def test_openai_whole_answer_is_served_from_the_cache(gw: Any, mock: MockUpstream) -> None:
    client = oai(gw)
    first = chat(client)
    second = chat(client)
    assert first[0] == "miss" and second[0] == "hit"
    assert second[1] == first[1]
    assert len(mock.records()) == 1
    stats = gw.api("GET", "/api/stats").json()["cache"]
    assert (stats["hits"], stats["misses"]) == (1, 1)
    assert stats["bytes"] > len(first[1])
    assert stats["providers"]["cerebras"]["tokens_saved"] > 0
    metrics = gw.api("GET", "/metrics").text
    assert 'keygate_cache_total{provider="cerebras",result="hit"} 1.0' in metrics


def test_openai_stream_is_replayed_as_the_same_events(gw: Any, mock: MockUpstream) -> None:
    client = oai(gw)
    tag1, events1 = chat_stream(client)
    tag2, events2 = chat_stream(client)
    assert (tag1, tag2) == ("miss", "hit")
    assert events2 == events1 and any(e.startswith("data: {") for e in events1)
    assert [e for e in events1 if e][-1] == "data: [DONE]"
    # a stream and a whole answer are different entries
    assert chat(client)[0] == "miss"
    assert len(mock.records()) == 2
    # the SDK reads the replay as a stream
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="llama3.1-8b", messages=MESSAGES, stream=True)
        if c.choices
    )
    assert text == "Hello from mock"
    assert len(mock.records()) == 2


def test_anthropic_whole_and_streamed(gw: Any, mock: MockUpstream) -> None:
    client = claude(gw)
    kw: Any = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": MESSAGES}
    raws = [client.messages.with_raw_response.create(**kw) for _ in range(2)]
    assert [r.headers.get("x-keygate-cache") for r in raws] == ["miss", "hit"]
    assert raws[0].http_response.read() == raws[1].http_response.read()
    assert raws[1].parse().content[0].text == "Hello from mock"  # type: ignore[union-attr]
    streams = []
    for _ in range(2):
        with client.messages.with_streaming_response.create(stream=True, **kw) as r:
            streams.append((r.headers.get("x-keygate-cache"), list(r.iter_lines())))
    assert [s[0] for s in streams] == ["miss", "hit"]
    assert streams[0][1] == streams[1][1]
    assert any(line == "event: message_stop" for line in streams[1][1])
    assert len(mock.records()) == 2


def test_a_translated_answer_is_cached_in_the_client_family(gw: Any, mock: MockUpstream) -> None:
    """An Anthropic client on an OpenAI provider: the stored answer is the translated one, and
    an OpenAI client of the same provider never gets it."""
    client = anthropic.Anthropic(
        base_url=f"{gw.url}/cerebras", api_key=PASSWORD, max_retries=0, timeout=10
    )
    kw: Any = {"model": "llama3.1-8b", "max_tokens": 50, "messages": MESSAGES}
    raws = [client.messages.with_raw_response.create(**kw) for _ in range(2)]
    assert [r.headers.get("x-keygate-cache") for r in raws] == ["miss", "hit"]
    assert raws[0].http_response.read() == raws[1].http_response.read()
    assert raws[1].parse().type == "message"
    assert chat(oai(gw), model="llama3.1-8b")[0] == "miss"
    assert len(mock.records()) == 2


def test_reordered_keys_share_an_entry(gw: Any, mock: MockUpstream) -> None:
    a = post(gw, "/cerebras/v1/chat/completions", {"model": "m", "messages": MESSAGES})
    with gw.client() as c:
        b = c.post(
            "/cerebras/v1/chat/completions",
            content=b'{ "messages" : [{"content":"Translate: bonjour","role":"user"}],'
            b' "model":"m"}',
            headers={**gw.auth(), "content-type": "application/json"},
        )
    assert (a.headers["x-keygate-cache"], b.headers["x-keygate-cache"]) == ("miss", "hit")
    assert a.content == b.content
    assert len(mock.records()) == 1


# --- what never shares an entry -------------------------------------------------------------


def test_different_bodies_models_paths_and_scopes_miss(gw: Any, mock: MockUpstream) -> None:
    body = {"model": "m", "messages": MESSAGES}
    assert post(gw, "/cerebras/v1/chat/completions", body).headers["x-keygate-cache"] == "miss"
    other_text = {"model": "m", "messages": [{"role": "user", "content": "other"}]}
    other_model = {**body, "model": "n"}
    for path, b in (
        ("/cerebras/v1/chat/completions", other_text),
        ("/cerebras/v1/chat/completions", other_model),
        ("/cerebras/v1/completions", body),
    ):
        assert post(gw, path, b).headers["x-keygate-cache"] == "miss"
    # a client key is a scope of its own (answers are shared only behind the password)
    made = gw.api("POST", "/api/clients", json={"name": "alice"})
    assert made.status_code in (200, 201), made.text
    secret = made.json()["key"]
    with gw.client() as c:
        own = c.post(
            "/cerebras/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
        )
    assert own.status_code == 200 and own.headers["x-keygate-cache"] == "miss"
    assert post(gw, "/cerebras/v1/chat/completions", body).headers["x-keygate-cache"] == "hit"
    assert len(mock.records()) == 5


def test_cache_control_no_store_bypasses_and_no_cache_refreshes(
    gw: Any, mock: MockUpstream
) -> None:
    body = {"model": "m", "messages": MESSAGES}
    path = "/cerebras/v1/chat/completions"
    bypass = post(gw, path, body, **{"Cache-Control": "no-store"})
    assert bypass.headers["x-keygate-cache"] == "bypass"
    assert post(gw, path, body).headers["x-keygate-cache"] == "miss"  # nothing was stored
    refresh = post(gw, path, body, **{"Cache-Control": "no-cache"})
    assert refresh.headers["x-keygate-cache"] == "miss"
    assert post(gw, path, body, **{"x-keygate-cache": "off"}).headers["x-keygate-cache"] == (
        "bypass"
    )
    assert post(gw, path, body).headers["x-keygate-cache"] == "hit"
    assert len(mock.records()) == 4


# --- what is never stored -------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500])
def test_an_error_is_not_stored(gw: Any, mock: MockUpstream, status: int) -> None:
    mock.push(status=status, times=10)
    body = {"model": "m", "messages": MESSAGES}
    bad = post(gw, "/cerebras/v1/chat/completions", body)
    assert bad.status_code == status and bad.headers["x-keygate-cache"] == "miss"
    stats = gw.api("GET", "/api/stats").json()["cache"]
    assert (stats["misses"], stats["entries"], stats["bytes"]) == (1, 0, 0)


def test_a_cut_stream_is_not_stored(gw: Any, mock: MockUpstream) -> None:
    mock.push(reset_after_chunks=1)
    body = {"model": "llama3.1-8b", "messages": MESSAGES, "stream": True}
    path = "/cerebras/v1/chat/completions"
    with gw.client() as c:
        with (
            pytest.raises(httpx.RemoteProtocolError),
            c.stream("POST", path, json=body, headers=gw.auth()) as r,
        ):
            assert r.headers["x-keygate-cache"] == "miss"
            r.read()
        whole = c.post(path, json=body, headers=gw.auth())
        assert whole.headers["x-keygate-cache"] == "miss"
        assert whole.text.rstrip().endswith("data: [DONE]")
        assert c.post(path, json=body, headers=gw.auth()).headers["x-keygate-cache"] == "hit"
    assert len(mock.records()) == 2


def test_a_stream_ending_in_an_error_event_is_not_stored(gw: Any, mock: MockUpstream) -> None:
    mock.push(error_after_chunks=1)
    client = oai(gw)
    tag, events = chat_stream(client)
    assert tag == "miss" and any('"error"' in e for e in events)
    tag, events = chat_stream(client)
    assert tag == "miss" and not any('"error"' in e for e in events)
    assert chat_stream(client)[0] == "hit"
    assert len(mock.records()) == 2


def test_a_provider_without_the_cache_shows_nothing_and_stores_nothing(
    gw: Any, mock: MockUpstream
) -> None:
    client = oai(gw, "/groq/v1")
    tags = [chat(client)[0] for _ in range(2)]
    assert tags == [None, None]
    assert len(mock.records()) == 2
    assert gw.api("GET", "/api/stats").json()["cache"]["entries"] == 0


def test_delete_api_cache_empties_it(gw: Any, mock: MockUpstream) -> None:
    client = oai(gw)
    chat(client)
    assert chat(client)[0] == "hit"
    assert gw.api("DELETE", "/api/cache", params={"provider": "nope"}).status_code == 404
    gone = gw.api("DELETE", "/api/cache", params={"provider": "cerebras"})
    assert gone.status_code == 200 and gone.json() == {"removed": 1}
    assert chat(client)[0] == "miss"
    assert gw.api("DELETE", "/api/cache").json() == {"removed": 1}
    assert gw.api("GET", "/api/stats").json()["cache"]["entries"] == 0


def test_cache_settings_via_the_admin_api(gw: Any, mock: MockUpstream) -> None:
    bad = gw.api("PATCH", "/api/providers/groq", json={"cache": {"ttl_s": -1}})
    assert bad.status_code == 400 and "cache.ttl_s" in bad.json()["error"]["message"]
    ok = gw.api("PATCH", "/api/providers/groq", json={"cache": {"max_mb": 1}})
    assert ok.status_code == 200
    assert ok.json()["cache"] == {"ttl_s": 3600.0, "max_mb": 1.0}
    client = oai(gw, "/groq/v1")
    assert [chat(client)[0] for _ in range(2)] == ["miss", "hit"]
    scope = gw.api("PATCH", "/api/providers/groq", json={"cache_scope": "everyone"})
    assert scope.status_code == 400 and "cache_scope" in scope.json()["error"]["message"]
    shared = gw.api("PATCH", "/api/providers/groq", json={"cache_scope": "shared"})
    assert shared.status_code == 200 and shared.json()["cache_scope"] == "shared"
    off = gw.api("PATCH", "/api/providers/groq", json={"cache": None})
    assert off.status_code == 200 and off.json()["cache"] is None
    assert chat(client)[0] is None


# --- units: settings, key, storage ----------------------------------------------------------


def test_off_by_default() -> None:
    assert ProviderConfig(name="x", base_url="http://127.0.0.1:1").cache is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("yes", "must be a mapping"),
        ({"ttl": 5}, "unknown field(s) ttl"),
        ({"max_mb": 0}, ".max_mb: must be > 0"),
        ({"ttl_s": "soon"}, ".ttl_s: must be a number"),
    ],
)
def test_cache_setting_refusals(value: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        coerce_field("cache", value)
    with pytest.raises(ValueError, match="must be one of key, shared"):
        coerce_field("cache_scope", "everyone")


def test_config_file_error_names_file_provider_and_field(tmp_path: Any) -> None:
    from keygate.config.settings import ConfigError, load_settings

    path = tmp_path / "keygate.yaml"
    path.write_text("providers:\n  groq:\n    cache: {ttl_s: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config_path=path, env={})
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "providers.groq.cache.ttl_s: must be > 0" in message


def test_directives() -> None:
    assert directive([]) == "on"
    assert directive([(b"cache-control", b"max-age=0, No-Store")]) == "off"
    assert directive([(b"cache-control", b"no-cache")]) == "refresh"
    assert directive([(b"x-keygate-cache", b"refresh")]) == "refresh"
    assert directive([(b"x-keygate-cache", b"off")]) == "off"


def test_key_is_canonical_and_carries_no_credential() -> None:
    parts = ("POST", "/p/v1/chat", "", "/v1/chat", "p", "m", "")
    a = cache_key(parts, b'{"a":1,"b":[1,2]}', [])
    assert a == cache_key(parts, b'{ "b": [1, 2], "a": 1 }', [])
    assert a != cache_key(parts, b'{"a":1,"b":[2,1]}', [])
    assert a != cache_key((*parts[:-1], "7"), b'{"a":1,"b":[1,2]}', [])
    assert len(a) == 20  # a digest: nothing of the request can be read back from it


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ttl_expires_entries() -> None:
    clock = Clock()
    cache = ResponseCache(clock)
    cache.put("p", b"k", 200, [], b"body", 3, ttl_s=10, max_bytes=1 << 20)
    clock.now += 9.9
    assert cache.get("p", b"k") is not None
    clock.now += 0.2
    assert cache.get("p", b"k") is None
    assert cache.snapshot()["entries"] == 0


def test_byte_bound_evicts_least_recently_used() -> None:
    cache = ResponseCache(Clock())
    body = b"x" * 1000
    bound = 3 * (len(body) + 64 + 2) + 10  # three entries fit, not four
    for key in (b"k1", b"k2", b"k3"):
        assert cache.put("p", key, 200, [], body, 0, 60, bound)
    assert cache.get("p", b"k1") is not None  # k1 used: k2 is now the oldest
    cache.put("p", b"k4", 200, [], body, 0, 60, bound)
    assert cache.get("p", b"k2") is None
    assert all(cache.get("p", k) is not None for k in (b"k1", b"k3", b"k4"))
    assert cache.snapshot()["bytes"] <= bound
    # an answer larger than the bound is not stored (and pushes nothing out)
    assert not cache.put("p", b"big", 200, [], b"y" * bound, 0, 60, bound)
    assert len(cache.stores["p"].entries) == 3


def test_settings_are_a_plain_mapping() -> None:
    s = CacheSettings(ttl_s=5, max_mb=2)
    assert s == {"ttl_s": 5, "max_mb": 2} and s.max_bytes == 2 * 1024 * 1024


def test_a_hit_spends_no_rate_token_and_no_key_quota(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    """One token in the bucket and one request a minute for the one key: the repeat is still
    answered (from the cache), a different request is refused."""
    limited = {"rps": 0.001, "burst": 1, "queue": 0, "key_rpm": 1, "retries": 0, "cache": {}}
    gw = gateway_factory(env=ENV, config={"providers": {"groq": limited}})
    body = {"model": "m", "messages": MESSAGES}
    path = "/groq/v1/chat/completions"
    first = post(gw, path, body)
    assert first.status_code == 200 and first.headers["x-keygate-cache"] == "miss"
    for _ in range(3):
        again = post(gw, path, body)
        assert again.status_code == 200 and again.headers["x-keygate-cache"] == "hit"
        assert again.content == first.content
    other = post(gw, path, {**body, "model": "n"})
    assert other.status_code == 429
    assert len(mock.records()) == 1


def test_shared_scope_serves_every_caller(gateway_factory: Any, mock: MockUpstream) -> None:
    shared = {"rps": 0, "max_conn": 0, "cache": {}, "cache_scope": "shared"}
    gw = gateway_factory(env=ENV, config={"providers": {"groq": shared}})
    body = {"model": "m", "messages": MESSAGES}
    path = "/groq/v1/chat/completions"
    assert post(gw, path, body).headers["x-keygate-cache"] == "miss"
    secret = gw.api("POST", "/api/clients", json={"name": "bob"}).json()["key"]
    with gw.client() as c:
        own = c.post(path, json=body, headers={"Authorization": f"Bearer {secret}"})
    assert own.status_code == 200 and own.headers["x-keygate-cache"] == "hit"
    assert len(mock.records()) == 1


def test_a_client_never_gets_from_the_cache_what_it_may_not_ask(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    shared = {"rps": 0, "max_conn": 0, "cache": {}, "cache_scope": "shared"}
    gw = gateway_factory(env=ENV, config={"providers": {"groq": shared}})
    path = "/groq/v1/chat/completions"
    for model in ("m", "n"):
        assert post(gw, path, {"model": model, "messages": MESSAGES}).status_code == 200
    made = gw.api("POST", "/api/clients", json={"name": "carol", "models": ["groq/m"]})
    assert made.status_code == 201, made.text
    auth = {"Authorization": f"Bearer {made.json()['key']}"}
    with gw.client() as c:
        refused = c.post(path, json={"model": "n", "messages": MESSAGES}, headers=auth)
        allowed = c.post(path, json={"model": "m", "messages": MESSAGES}, headers=auth)
    assert refused.status_code == 403
    assert allowed.status_code == 200 and allowed.headers["x-keygate-cache"] == "hit"
    assert len(mock.records()) == 2
