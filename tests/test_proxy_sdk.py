"""The gateway driven by the real `openai` and `anthropic` SDKs, as users point them at it.

The SDKs get the gateway password as their api_key; the mock upstream tells what actually left
the gateway: the provider's key in the provider's header, never the password or a cookie.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from keygate.testing.mock_upstream import MockUpstream, Recorded

PASSWORD = "gw-test-password"  # gateway_factory's default gateway password
CEREBRAS_KEY = "csk-cerebras-aaaa1111"
CLAUDE_KEY = "sk-ant-api03-bbbb2222"
GEMINI_KEY = "AIzaSy-gemini-cccc3333"
COOKIE = "session=client-cookie-secret"
ENV = {
    "CEREBRAS_API_KEYS": CEREBRAS_KEY,
    "CLAUDE_API_KEYS": CLAUDE_KEY,
    "GEMINI_API_KEYS": GEMINI_KEY,
}
NO_WAIT = {name: {"rps": 0, "max_conn": 0} for name in ("cerebras", "claude", "gemini")}
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(env=ENV, config={"providers": NO_WAIT})


def oai(gw: Any, path: str, **kw: Any) -> openai.OpenAI:
    kw.setdefault("api_key", PASSWORD)
    kw.setdefault("max_retries", 0)
    kw.setdefault("default_headers", {"Cookie": COOKIE})
    return openai.OpenAI(base_url=f"{gw.url}{path}", timeout=10, **kw)


def claude(gw: Any, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", PASSWORD)
    kw.setdefault("max_retries", 0)
    kw.setdefault("default_headers", {"Cookie": COOKIE})
    return anthropic.Anthropic(base_url=f"{gw.url}/claude", timeout=10, **kw)


def assert_clean(rec: Recorded) -> None:
    """What the upstream got carries no gateway password and no client cookie."""
    everything = (
        rec.path + "?" + rec.query + "".join(f"\n{k}: {v}" for k, v in rec.headers.items())
    ).encode() + rec.body
    assert PASSWORD.encode() not in everything
    assert b"client-cookie-secret" not in everything
    assert "cookie" not in rec.headers
    assert rec.headers["accept-encoding"] == "identity"


def assert_bearer(rec: Recorded, key: str) -> None:
    assert rec.headers["authorization"] == f"Bearer {key}"
    assert "x-api-key" not in rec.headers
    assert "x-goog-api-key" not in rec.headers
    assert_clean(rec)


@pytest.mark.parametrize("path", ["/cerebras/v1", "/v1"])
def test_openai_chat(gw: Any, mock: MockUpstream, path: str) -> None:
    client = oai(gw, path)
    out = client.chat.completions.create(model="llama3.1-8b", messages=MESSAGES)
    assert out.choices[0].message.content == "Hello from mock"
    assert out.model == "llama3.1-8b"
    assert out.usage is not None and out.usage.total_tokens > 0
    [rec] = mock.records()
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert_bearer(rec, CEREBRAS_KEY)
    assert rec.headers["content-type"] == "application/json"


@pytest.mark.parametrize("path", ["/cerebras/v1", "/v1"])
def test_openai_streaming(gw: Any, mock: MockUpstream, path: str) -> None:
    mock.set_behavior(chunks=5, text="one two three four five")
    client = oai(gw, path)
    stream = client.chat.completions.create(
        model="llama3.1-8b",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == "one two three four five"
    assert len(pieces) == 5  # chunk by chunk, not merged
    assert usage is not None and usage.completion_tokens > 0
    [rec] = mock.records()
    assert rec.path == "/v1/chat/completions"
    assert rec.completed
    assert_bearer(rec, CEREBRAS_KEY)


def test_openai_models(gw: Any, mock: MockUpstream) -> None:
    models = oai(gw, "/cerebras/v1").models.list()
    assert [m.id for m in models.data] == ["mock-model"]
    [rec] = mock.records()
    assert (rec.method, rec.path) == ("GET", "/v1/models")
    assert_bearer(rec, CEREBRAS_KEY)


def test_openai_models_on_the_unified_endpoint(gw: Any, mock: MockUpstream) -> None:
    """SPEC §10: the merged list, each provider's fetched with its own key in its own style."""
    models = oai(gw, "/v1").models.list()
    assert [m.id for m in models.data] == ["mock-model", "claude/mock-model", "gemini/mock-model"]
    got = {rec.key: rec for rec in mock.records()}
    assert set(got) == {CEREBRAS_KEY, CLAUDE_KEY, GEMINI_KEY}
    assert got[CEREBRAS_KEY].headers["authorization"] == f"Bearer {CEREBRAS_KEY}"
    assert got[CLAUDE_KEY].headers["x-api-key"] == CLAUDE_KEY
    assert got[GEMINI_KEY].path == "/v1beta/models"
    for rec in got.values():  # keygate's own request: nothing of the client's in it
        assert PASSWORD not in str(rec.headers) and "cookie" not in rec.headers


async def test_openai_async_streaming(gw: Any, mock: MockUpstream) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{gw.url}/cerebras/v1", api_key=PASSWORD, max_retries=0, timeout=10
    )
    async with client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from mock"
    assert_bearer(mock.records()[0], CEREBRAS_KEY)


def test_openai_sdk_on_gemini(gw: Any, mock: MockUpstream) -> None:
    client = oai(gw, "/gemini/v1")
    out = client.chat.completions.create(model="gemini-2.0-flash", messages=MESSAGES)
    assert out.choices[0].message.content == "Hello from mock"
    assert [m.id for m in client.models.list().data] == ["mock-model"]
    chat, models = mock.records()
    assert chat.path == "/v1beta/openai/chat/completions"
    assert models.path == "/v1beta/openai/models"
    assert_bearer(chat, GEMINI_KEY)
    assert_bearer(models, GEMINI_KEY)


def test_anthropic_messages(gw: Any, mock: MockUpstream) -> None:
    msg = claude(gw).messages.create(model="claude-test-model", max_tokens=64, messages=MESSAGES)
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Hello from mock"
    assert msg.model == "claude-test-model"
    [rec] = mock.records()
    assert (rec.method, rec.path) == ("POST", "/v1/messages")
    assert rec.headers["x-api-key"] == CLAUDE_KEY
    assert rec.headers["anthropic-version"]  # the SDK's own, kept
    assert "authorization" not in rec.headers
    assert_clean(rec)


def test_anthropic_streaming(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=4, text="alpha beta gamma delta")
    with claude(gw).messages.stream(
        model="claude-test-model", max_tokens=64, messages=MESSAGES
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "alpha beta gamma delta"
    assert len(pieces) == 4
    assert final.stop_reason == "end_turn"
    [rec] = mock.records()
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == CLAUDE_KEY
    assert rec.headers["anthropic-version"]
    assert_clean(rec)


def test_anthropic_version_added_when_client_omits_it(gw: Any, mock: MockUpstream) -> None:
    # An OpenAI-style client on the claude prefix sends no anthropic-version: keygate adds it.
    client = oai(gw, "/claude")
    client.post(
        "/v1/messages", body={"model": "c", "max_tokens": 5, "messages": MESSAGES}, cast_to=object
    )
    [rec] = mock.records()
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.headers["x-api-key"] == CLAUDE_KEY
    assert "authorization" not in rec.headers
    assert_clean(rec)


def test_openai_wrong_password(gw: Any, mock: MockUpstream) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        oai(gw, "/cerebras/v1", api_key="not-the-password").chat.completions.create(
            model="m", messages=MESSAGES
        )
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.type == "authentication_error"
    assert mock.records() == []


def test_anthropic_wrong_password(gw: Any, mock: MockUpstream) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        claude(gw, api_key="not-the-password").messages.create(
            model="c", max_tokens=5, messages=MESSAGES
        )
    assert info.value.status_code == 401
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "authentication_error"
    assert mock.records() == []


def test_sdk_sees_gateway_timeout(gateway_factory: Any, mock: MockUpstream) -> None:
    fast = {"retries": 0, "timeout_first_byte_s": 0.5}
    gw = gateway_factory(env=ENV, config={"providers": {"cerebras": fast, "claude": fast}})
    mock.set_behavior(hang=True)
    with pytest.raises(openai.InternalServerError) as info:
        oai(gw, "/cerebras/v1").chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 504
    assert info.value.type == "timeout_error"
    with pytest.raises(anthropic.InternalServerError) as ainfo:
        claude(gw).messages.create(model="c", max_tokens=5, messages=MESSAGES)
    assert ainfo.value.status_code == 504
    assert isinstance(ainfo.value.body, dict)
    assert ainfo.value.body["error"]["type"] == "timeout_error"


def test_sdk_sees_no_keys_as_503(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = gateway_factory(env={})
    with pytest.raises(openai.InternalServerError) as info:
        oai(gw, "/v1").chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.code == "no_keys"
    assert mock.records() == []
