"""Tests for the mock LLM upstream: the gateway's tests and benchmark trust its behaviour."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anthropic
import httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors

from harness import eventually_async
from keygate.testing.mock_upstream import MockUpstream

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    """One threaded mock for the module (cheap); reset before every test."""
    m = MockUpstream().start()
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def _clean(mock: MockUpstream) -> None:
    mock.reset()


def chat_body(stream: bool = False, **extra: object) -> bytes:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    body.update(extra)
    return orjson.dumps(body)


async def test_key_from_each_header_style(mock: MockUpstream) -> None:
    async with aiohttp.ClientSession() as s:
        cases: list[tuple[dict[str, str], str, str | None]] = [
            ({"Authorization": "Bearer kb"}, "", "kb"),
            ({"x-api-key": "ka"}, "", "ka"),
            ({"x-goog-api-key": "kg"}, "", "kg"),
            ({}, "?alt=sse&key=kq", "kq"),
            ({}, "", None),
            ({"Authorization": "Bearer first", "x-api-key": "second"}, "?key=third", "first"),
            ({"Authorization": "Basic abc", "x-api-key": "second"}, "", "second"),
        ]
        for headers, query, _ in cases:
            async with s.post(mock.url + CHAT + query, data=chat_body(), headers=headers) as r:
                assert r.status == 200
                await r.read()
    recs = mock.records()
    assert [r.key for r in recs] == [c[2] for c in cases]
    first = recs[0]
    assert first.method == "POST" and first.path == CHAT and first.query == ""
    assert first.headers["authorization"] == "Bearer kb"  # names lower-cased
    assert orjson.loads(first.body)["model"] == "gpt-test"
    assert first.completed and not first.disconnected and first.status == 200
    assert first.started <= (first.ended or 0)
    assert recs[3].query == "alt=sse&key=kq"
    assert mock.count() == len(cases) and mock.count("second") == 1


async def test_push_once_then_fallback_and_precedence(mock: MockUpstream) -> None:
    mock.set_behavior(status=503)
    mock.push(status=429)
    mock.push("a", times=2, status=401)
    async with aiohttp.ClientSession() as s:

        async def status(key: str) -> int:
            async with s.get(mock.url + "/v1/models", headers={"x-api-key": key}) as r:
                await r.read()
                return r.status

        # key-specific pushes first (twice), then the key=None push, then set_behavior
        assert [await status("a") for _ in range(4)] == [401, 401, 429, 503]
        assert await status("b") == 503
        mock.set_behavior("b", status=200)
        assert (await status("b"), await status("a")) == (200, 503)
        mock.set_behavior()  # no knobs clears the default behaviour
        assert await status("a") == 200


async def test_429_retry_after_in_provider_error_shapes(mock: MockUpstream) -> None:
    mock.push(times=2, status=429, headers={"Retry-After": "1", "retry-after-ms": "300"})
    async with aiohttp.ClientSession() as s:
        async with s.post(mock.url + CHAT, data=chat_body()) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "1" and r.headers["retry-after-ms"] == "300"
            err = (await r.json())["error"]
            assert err["code"] == "rate_limit_exceeded" and err["message"] and err["type"]
        async with s.post(mock.url + MESSAGES, data=chat_body()) as r:
            assert r.status == 429
            body = await r.json()
            assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        mock.push(status=500, body={"custom": True}, headers={"X-Extra": "1"})
        async with s.post(mock.url + CHAT, data=chat_body()) as r:
            assert r.status == 500 and r.headers["X-Extra"] == "1"
            assert await r.json() == {"custom": True}
    assert [r.status for r in mock.records()] == [429, 429, 500]


async def test_hang_until_client_disconnects(mock: MockUpstream) -> None:
    mock.push(hang=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as s:
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(mock.url + CHAT, data=chat_body()) as r:
                await r.read()
    await eventually_async(
        lambda: bool(mock.records()) and mock.records()[0].ended is not None,
        3,
        "the request ended",
    )
    rec = mock.records()[0]
    assert rec.disconnected and not rec.completed and rec.status == 0
    await eventually_async(lambda: mock.inflight == 0, 3, "nothing in flight")


async def test_reset_after_chunks_breaks_stream(mock: MockUpstream) -> None:
    mock.push(chunks=5, reset_after_chunks=2)
    lines: list[bytes] = []
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.post(mock.url + CHAT, data=chat_body(stream=True)) as r:
                assert r.status == 200
                async for line in r.content:
                    lines.append(line)
    events = [orjson.loads(x[6:]) for x in lines if x.startswith(b"data: {")]
    contents = [e["choices"][0]["delta"].get("content") for e in events[1:]]
    assert len(events) == 3 and all(contents)  # role + 2 content chunks, then the reset
    assert b"data: [DONE]\n" not in lines
    await eventually_async(lambda: mock.records()[0].ended is not None, 3, "the request ended")
    rec = mock.records()[0]
    assert not rec.completed and not rec.disconnected and rec.status == 200


def test_reset_after_chunks_surfaces_in_sdk(mock: MockUpstream) -> None:
    mock.push(reset_after_chunks=1)
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="k", max_retries=0)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        list(stream)


async def test_gzip_content_encoding(mock: MockUpstream) -> None:
    mock.push(times=2, content_encoding="gzip")
    raw_session = aiohttp.ClientSession(auto_decompress=False)
    async with raw_session as s, s.post(mock.url + CHAT, data=chat_body()) as r:
        raw = await r.read()
        assert r.headers["Content-Encoding"] == "gzip"
        assert int(r.headers["Content-Length"]) == len(raw)
        body = orjson.loads(gzip.decompress(raw))
        assert body["choices"][0]["message"]["content"] == "Hello from mock"
    async with aiohttp.ClientSession() as s, s.post(mock.url + CHAT, data=chat_body()) as r:
        assert (await r.json())["object"] == "chat.completion"


async def test_chunk_spacing_observable(mock: MockUpstream) -> None:
    mock.push(chunks=3, chunk_interval_s=0.1, text="abcdef")
    stamps: list[float] = []
    payloads: list[bytes] = []
    async with aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.post(mock.url + CHAT, data=chat_body(stream=True)) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for line in r.content:
                if line.startswith(b"data: "):
                    stamps.append(time.monotonic())
                    payloads.append(line.strip())
    assert payloads[-1] == b"data: [DONE]"
    assert len(payloads) == 6  # role, 3 contents, finish, [DONE]
    assert stamps[0] - t0 < 0.09  # first event immediately
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) > 0.07, gaps
    events = [orjson.loads(p[6:]) for p in payloads[:-1]]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "abcdef"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_peak_inflight_with_concurrent_slow_requests(mock: MockUpstream) -> None:
    mock.set_behavior(delay_s=0.3)
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.post(mock.url + CHAT, data=chat_body()) as r:
                await r.read()
                return r.status

        tasks = [asyncio.create_task(one()) for _ in range(6)]
        await eventually_async(lambda: mock.inflight == 6, 3, "six requests in flight")
        assert await asyncio.gather(*tasks) == [200] * 6
    assert mock.peak_inflight == 6 and mock.inflight == 0
    mock.reset_peak()
    assert mock.peak_inflight == 0


def test_openai_sdk_parses_responses(mock: MockUpstream) -> None:
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="k", max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="gpt-x", messages=msgs)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "Hello from mock" and r.model == "gpt-x"
    assert r.choices[0].finish_reason == "stop" and r.usage and r.usage.total_tokens > 0

    mock.push(chunks=4, text="streamed text!")
    stream = client.chat.completions.create(
        model="gpt-x",
        messages=msgs,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed text!"
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.prompt_tokens > 0

    mock.push(status=429, headers={"Retry-After": "1"})
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-x", messages=msgs)  # type: ignore[arg-type]
    assert client.models.list().data[0].id == "mock-model"
    emb = client.embeddings.create(model="e", input=["a", "b"])
    assert len(emb.data) == 2
    assert {rec.key for rec in mock.records()} == {"k"}


def test_anthropic_sdk_parses_responses(mock: MockUpstream) -> None:
    client = anthropic.Anthropic(base_url=mock.url, api_key="k", max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    m = client.messages.create(model="claude-x", max_tokens=10, messages=msgs)  # type: ignore[arg-type]
    assert m.content[0].text == "Hello from mock"  # type: ignore[union-attr]
    assert m.model == "claude-x" and m.stop_reason == "end_turn" and m.usage.input_tokens > 0

    mock.push(chunks=5, text="anthropic stream")
    with client.messages.stream(model="claude-x", max_tokens=10, messages=msgs) as st:  # type: ignore[arg-type]
        assert "".join(st.text_stream) == "anthropic stream"
        final = st.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0

    raw = client.messages.create(model="claude-x", max_tokens=10, messages=msgs, stream=True)  # type: ignore[arg-type]
    types = [e.type for e in raw]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert types.count("content_block_delta") == 3

    mock.push(status=529)
    with pytest.raises(anthropic.APIStatusError) as exc:
        client.messages.create(model="claude-x", max_tokens=10, messages=msgs)  # type: ignore[arg-type]
    assert exc.value.status_code == 529
    assert mock.records()[0].headers.get("anthropic-version")


async def test_models_embeddings_echo_and_bad_bodies(mock: MockUpstream) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(mock.url + "/openai/v1/models") as r:
            assert (await r.json())["data"][0]["id"] == "mock-model"
        async with s.post(mock.url + "/v1beta/openai/chat/completions", data=chat_body()) as r:
            assert (await r.json())["model"] == "gpt-test"
        async with s.post(mock.url + "/v1/embeddings", json={"input": "x", "model": "e"}) as r:
            assert len((await r.json())["data"]) == 1
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            async with s.request(method, mock.url + "/x/y?z=1", data=b"abc") as r:
                echo = await r.json()
                assert echo["method"] == method and echo["path"] == "/x/y"
                assert echo["query"] == "z=1" and echo["body_len"] == 3
        async with s.head(mock.url + "/x") as r:
            assert r.status == 200
        async with s.post(mock.url + CHAT, data=b"{not json") as r:
            assert r.status == 400 and "error" in await r.json()
        async with s.post(mock.url + MESSAGES, data=b"[1, 2]") as r:
            assert r.status == 400 and (await r.json())["type"] == "error"
    assert mock.records()[-1].status == 400


async def test_control_endpoints(mock: MockUpstream) -> None:
    u = mock.url
    async with aiohttp.ClientSession() as s:
        async with s.post(u + "/_mock/behavior", json={"key": "z", "times": 1, "status": 418}):
            pass
        async with s.post(u + "/_mock/behavior", json={"status": 202}):
            pass
        async with s.post(u + "/_mock/behavior", json={"bogus": 1}) as r:
            assert r.status == 400
        statuses = []
        for _ in range(2):
            async with s.get(u + "/v1/models", headers={"Authorization": "Bearer z"}) as r:
                statuses.append(r.status)
        assert statuses == [418, 202]
        async with s.post(u + CHAT, data=b"\xff\xfe") as r:
            await r.read()
        async with s.get(u + "/_mock/requests") as r:
            recs = await r.json()
        assert [x["key"] for x in recs] == ["z", "z", None]
        assert recs[-1]["body"] == "\ufffd\ufffd" and recs[0]["completed"] is True
        async with s.get(u + "/_mock/stats") as r:
            assert await r.json() == {"inflight": 0, "peak_inflight": 1, "count": 3}
        async with s.post(u + "/_mock/reset") as r:
            assert r.status == 200
        async with s.get(u + "/_mock/stats") as r:
            assert (await r.json())["count"] == 0
    assert mock.count() == 0  # control requests are not recorded


async def test_start_async_no_record_and_limits() -> None:
    with pytest.raises(ValueError):
        MockUpstream(host="0.0.0.0")
    m = MockUpstream(record=False)
    with pytest.raises(TypeError):
        m.push(stauts=500)
    await m.start_async()
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.post(m.url + CHAT, data=chat_body(), headers={"x-api-key": "q"}) as r:
                    assert r.status == 200
                    await r.read()
        assert m.records() == [] and m.count() == 3 and m.count("q") == 3
    finally:
        await m.stop_async()

    capped = await MockUpstream(max_records=2).start_async()
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(4):
                async with s.get(capped.url + f"/r{i}") as r:
                    await r.read()
        assert [r.path for r in capped.records()] == ["/r2", "/r3"] and capped.count() == 4
    finally:
        await capped.stop_async()


async def test_command_line_process() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "keygate.testing.mock_upstream", "--port", "0", "--no-record"]
    proc = subprocess.Popen(
        [*cmd, "--chunks", "2", "--chunk-interval", "0.01"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
        assert line.startswith("mock upstream listening on http://127.0.0.1:")
        url = line.split()[-1]
        async with aiohttp.ClientSession() as s:
            async with s.post(url + CHAT, data=chat_body(stream=True)) as r:
                data = [x for x in (await r.read()).split(b"\n\n") if x]
            assert len(data) == 5  # role, 2 contents, finish, [DONE]
            async with s.get(url + "/_mock/stats") as r:
                assert (await r.json())["count"] == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# ---------------------------------------------------------------- each family's own shapes

GEMINI_MODEL_FIELDS = {
    "name",
    "displayName",
    "supportedGenerationMethods",
    "inputTokenLimit",
    "outputTokenLimit",
}


def genai_client(mock: MockUpstream) -> genai.Client:
    return genai.Client(api_key="gk", http_options={"base_url": mock.url})


def test_gemini_native_model_list_and_model_in_googles_shape(mock: MockUpstream) -> None:
    client = genai_client(mock)
    [model] = list(client.models.list())
    assert model.name == "models/mock-model" and model.display_name
    assert model.supported_actions and "generateContent" in model.supported_actions
    assert model.input_token_limit and model.output_token_limit
    got = client.models.get(model="gemini-2.0-flash")
    assert got.name == "models/gemini-2.0-flash" and got.input_token_limit

    mock.set_behavior(models=["gemini-a", "gemini-b", "text-embedding-c"])
    with httpx.Client(base_url=mock.url, headers={"x-goog-api-key": "gk"}) as http:
        first = http.get("/v1beta/models", params={"pageSize": 2}).json()
        assert set(first) == {"models", "nextPageToken"}
        assert [m["name"] for m in first["models"]] == ["models/gemini-a", "models/gemini-b"]
        assert all(set(m) >= GEMINI_MODEL_FIELDS for m in first["models"])
        rest = http.get(
            "/v1beta/models", params={"pageSize": 2, "pageToken": first["nextPageToken"]}
        ).json()
        assert set(rest) == {"models"}  # the last page has no token
        [embedder] = rest["models"]
        assert embedder["name"] == "models/text-embedding-c"
        assert "embedContent" in embedder["supportedGenerationMethods"]
        # `/v1/models` with a Google key is Gemini's list too; with a bearer, OpenAI's
        assert "models" in http.get("/v1/models").json()
        bearer = httpx.get(mock.url + "/v1/models", headers={"Authorization": "Bearer k"})
        assert bearer.json()["object"] == "list"
        missing = http.get("/v1beta/models/nosuch")
        assert missing.status_code == 404
        assert missing.json()["error"]["status"] == "NOT_FOUND"
    # the SDK follows the pages
    assert [m.name for m in client.models.list(config={"page_size": 2})] == [
        "models/gemini-a",
        "models/gemini-b",
        "models/text-embedding-c",
    ]


def test_gemini_native_embeddings_and_token_counts(mock: MockUpstream) -> None:
    client = genai_client(mock)
    emb = client.models.embed_content(model="text-embedding-004", contents=["a", "b", "c"])
    assert emb.embeddings is not None and len(emb.embeddings) == 3
    assert all(e.values and len(e.values) == 4 for e in emb.embeddings)
    counted = client.models.count_tokens(model="gemini-2.0-flash", contents="hello there")
    assert counted.total_tokens and counted.total_tokens > 0

    with httpx.Client(base_url=mock.url, headers={"x-goog-api-key": "gk"}) as http:
        one = http.post(
            "/v1beta/models/text-embedding-004:embedContent",
            json={"content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 8},
        ).json()
        assert set(one) == {"embedding"} and len(one["embedding"]["values"]) == 8
        batch = http.post(
            "/v1beta/models/text-embedding-004:batchEmbedContents",
            json={"requests": [{"content": {"parts": [{"text": t}]}} for t in "xy"]},
        ).json()
        assert set(batch) == {"embeddings"} and len(batch["embeddings"]) == 2
        body = {"contents": [{"role": "user", "parts": [{"text": "count me"}]}]}
        count = http.post("/v1beta/models/gemini-2.0-flash:countTokens", json=body).json()
        assert count["totalTokens"] == len(orjson.dumps(body)) // 4
        bad = http.post("/v1beta/models/text-embedding-004:batchEmbedContents", content=b"[")
        assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_gemini_native_usage_metadata_in_every_chunk(mock: MockUpstream) -> None:
    """As the API does: every streamed chunk carries usageMetadata with the totals so far, and
    the last one the whole answer's (the same as the unstreamed answer's)."""
    mock.set_behavior(text="four streamed pieces", chunks=4)
    client = genai_client(mock)
    whole = client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    usage = whole.usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    chunks = list(client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
    assert len(chunks) == 4
    metas = [c.usage_metadata for c in chunks]
    assert all(m is not None for m in metas)
    outputs = [m.candidates_token_count or 0 for m in metas if m is not None]
    assert outputs == sorted(outputs) and outputs[0] < outputs[-1]  # running totals
    assert outputs[-1] == usage.candidates_token_count
    assert {m.prompt_token_count for m in metas if m is not None} == {usage.prompt_token_count}
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == "STOP"


def test_gemini_native_errors_in_googles_shape(mock: MockUpstream) -> None:
    mock.push(status=429)
    client = genai_client(mock)
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    mock.push(status=503)
    r = httpx.get(mock.url + "/v1beta/models", headers={"x-goog-api-key": "gk"})
    assert r.status_code == 503
    assert r.json() == {
        "error": {"code": 503, "message": "mock upstream error (HTTP 503)", "status": "UNAVAILABLE"}
    }


def test_anthropic_count_tokens_and_models_in_anthropics_shape(mock: MockUpstream) -> None:
    client = anthropic.Anthropic(base_url=mock.url, api_key="k", max_retries=0)
    msgs = [{"role": "user", "content": "how many tokens is this?"}]
    counted = client.messages.count_tokens(model="claude-x", messages=msgs)  # type: ignore[arg-type]
    (rec,) = mock.records()
    assert rec.path == "/v1/messages/count_tokens"
    assert counted.input_tokens == len(rec.body) // 4

    mock.set_behavior(models=["claude-a", "claude-b", "claude-c"])
    raw = httpx.get(
        mock.url + "/v1/models",
        params={"limit": 2},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ).json()
    assert set(raw) == {"data", "has_more", "first_id", "last_id"}
    assert raw["has_more"] is True and (raw["first_id"], raw["last_id"]) == ("claude-a", "claude-b")
    assert all(set(m) == {"type", "id", "display_name", "created_at"} for m in raw["data"])
    assert all(m["type"] == "model" for m in raw["data"])
    # the SDK pages through with after_id, and reads one model
    assert [m.id for m in client.models.list(limit=2)] == ["claude-a", "claude-b", "claude-c"]
    model = client.models.retrieve("claude-b")
    assert model.type == "model" and model.display_name and model.created_at.year == 2025
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-z")
    # the same path with a bearer key is OpenAI's list
    plain = httpx.get(mock.url + "/v1/models", headers={"Authorization": "Bearer k"}).json()
    assert plain["object"] == "list" and plain["data"][0]["object"] == "model"
