"""Gemini's native API through keygate with the real google-genai client on its default settings
(api_key = the gateway password, base_url = the gateway's /gemini), against the mock upstream.

The SDK sends `/v1/models/{m}:generateContent` (or `/v1beta/…`, whichever version it defaults to)
with `x-goog-api-key`: that must reach the upstream unchanged, with the pool key in
x-goog-api-key, while the OpenAI-compatible `/gemini/v1/chat/completions` keeps its rewrite.
Errors keygate makes on native paths come in Google's shape, which the SDK turns into a
`ClientError` with code and status.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors

from harness import PASSWORD, eventually
from keygate.testing.mock_upstream import MockUpstream

POOL_KEY = "AIza-native-pool-key-0001"
MODEL = "gemini-2.0-flash"


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(
        env={"GEMINI_API_KEYS": POOL_KEY},
        config={"providers": {"gemini": {"rps": 0, "max_conn": 0, "retries": 0}}},
    )


def sdk(gw: Any, api_key: str = PASSWORD) -> genai.Client:
    return genai.Client(api_key=api_key, http_options={"base_url": f"{gw.url}/gemini"})


def assert_native(rec: Any, action: str) -> None:
    """The request reached the upstream as the SDK wrote it, with the pool key injected."""
    version, _, rest = rec.path.lstrip("/").partition("/")
    assert version in ("v1", "v1beta", "v1alpha"), rec.path
    assert rest == f"models/{MODEL}:{action}", rec.path
    assert rec.headers["x-goog-api-key"] == POOL_KEY
    assert "authorization" not in rec.headers
    assert PASSWORD not in str(rec.headers) and PASSWORD not in rec.query


def test_generate_content_with_default_settings(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(text="native hello")
    client = sdk(gw)  # kept: a collected Client closes its HTTP session
    reply = client.models.generate_content(model=MODEL, contents="hi")
    assert reply.text == "native hello"
    (rec,) = mock.records()
    assert rec.method == "POST"
    assert_native(rec, "generateContent")
    assert b'"hi"' in rec.body


def test_generate_content_stream_with_default_settings(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(text="streamed native hello", chunks=3)
    client = sdk(gw)
    pieces = [
        chunk.text for chunk in client.models.generate_content_stream(model=MODEL, contents="hi")
    ]
    assert len(pieces) == 3
    assert "".join(pieces) == "streamed native hello"
    (rec,) = mock.records()
    assert_native(rec, "streamGenerateContent")
    assert rec.query == "alt=sse"


@pytest.mark.parametrize("version", ["v1", "v1beta", "v1alpha"])
def test_native_method_paths_pass_whatever_the_version(
    gw: Any, mock: MockUpstream, version: str
) -> None:
    # a bearer password and no x-goog-api-key: the `models/…:action` path alone decides
    path = f"/gemini/{version}/models/{MODEL}:generateContent"
    r = httpx.post(gw.url + path, json={"contents": []}, headers=gw.auth())
    assert r.status_code == 200, r.text
    (rec,) = mock.records()
    assert rec.path == path.removeprefix("/gemini")
    assert rec.headers["x-goog-api-key"] == POOL_KEY
    assert "authorization" not in rec.headers


def test_openai_compatible_paths_keep_the_rewrite(gw: Any, mock: MockUpstream) -> None:
    for method, path, upstream in (
        ("POST", "/gemini/v1/chat/completions", "/v1beta/openai/chat/completions"),
        ("GET", "/gemini/v1/models", "/v1beta/openai/models"),
        ("POST", "/gemini/v1/embeddings", "/v1beta/openai/embeddings"),
    ):
        mock.reset()
        body = {"model": MODEL, "messages": [], "input": "x"} if method == "POST" else None
        r = httpx.request(method, gw.url + path, json=body, headers=gw.auth())
        assert r.status_code == 200, (path, r.text)
        (rec,) = mock.records()
        assert rec.path == upstream, path
        assert rec.headers["authorization"] == f"Bearer {POOL_KEY}"
        assert "x-goog-api-key" not in rec.headers

    # the same model list asked for by a Google client (x-goog-api-key) is the native one
    mock.reset()
    r = httpx.get(gw.url + "/gemini/v1/models", headers={"x-goog-api-key": PASSWORD})
    assert r.status_code == 200
    (rec,) = mock.records()
    assert rec.path == "/v1/models"
    assert rec.headers["x-goog-api-key"] == POOL_KEY


def test_gateway_errors_on_native_paths_have_googles_shape(
    gw: Any, gateway_factory: Any, mock: MockUpstream
) -> None:
    client = sdk(gw, api_key="wrong-password")
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == 401
    assert caught.value.status == "UNAUTHENTICATED"
    assert "password" in (caught.value.message or "")
    assert mock.records() == []

    r = httpx.post(
        f"{gw.url}/gemini/v1beta/models/{MODEL}:generateContent",
        json={},
        headers={"x-goog-api-key": "wrong"},
    )
    assert r.status_code == 401
    error = r.json()["error"]
    assert set(error) == {"code", "message", "status"}
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")

    # no key configured: 503 UNAVAILABLE in Google's shape, through the SDK too
    empty = gateway_factory(config={"providers": {"gemini": {"rps": 0, "max_conn": 0}}})
    client = sdk(empty)
    with pytest.raises(genai_errors.ServerError) as caught_503:
        client.models.generate_content(model=MODEL, contents="hi")
    assert caught_503.value.code == 503
    assert caught_503.value.status == "UNAVAILABLE"

    # the OpenAI-compatible path keeps OpenAI's shape
    r = httpx.post(
        f"{gw.url}/gemini/v1/chat/completions", json={}, headers={"authorization": "Bearer x"}
    )
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_native_usage_is_counted_whole_and_streamed(gw: Any, mock: MockUpstream) -> None:
    """usageMetadata is the usage of Gemini's own API: a whole answer's and a stream's (whose
    every chunk repeats the running totals: the last counts, not their sum) reach the
    provider's and the key's token counters as the upstream reported them."""
    mock.set_behavior(text="counted native answer, in four pieces", chunks=4)
    client = sdk(gw)
    whole = client.models.generate_content(model=MODEL, contents="count this prompt")
    streamed = list(
        client.models.generate_content_stream(model=MODEL, contents="and count this one too")
    )
    assert len(streamed) == 4
    reported = [whole.usage_metadata, streamed[-1].usage_metadata]
    assert all(u is not None and u.prompt_token_count for u in reported)
    tokens_in = sum(u.prompt_token_count or 0 for u in reported if u is not None)
    tokens_out = sum(u.candidates_token_count or 0 for u in reported if u is not None)
    assert tokens_out > 4  # more than one token per chunk: a sum of the running totals differs
    summed = sum(
        (c.usage_metadata.candidates_token_count or 0) for c in streamed if c.usage_metadata
    )
    assert summed > reported[1].candidates_token_count  # type: ignore[union-attr]

    def gemini_stats() -> dict[str, Any]:
        return gw.api("GET", "/api/stats").json()["providers"].get("gemini", {})

    eventually(lambda: gemini_stats().get("requests") == 2, 10, "both answers accounted")
    stats = gemini_stats()
    assert (stats["tokens_in"], stats["tokens_out"]) == (tokens_in, tokens_out)
    [key] = gw.api("GET", "/api/keys", params={"provider": "gemini"}).json()["keys"]
    assert (key["tokens_in"], key["tokens_out"]) == (tokens_in, tokens_out)
