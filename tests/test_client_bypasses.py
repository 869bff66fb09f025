"""Ways around a client key's lists and limits (a hostile client, the real SDKs and raw bytes):
each must end in a refusal in the client's API shape with nothing sent upstream, or in the
request being served only as the lists allow and counted as the limits say."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors

from keygate.testing.mock_upstream import MockUpstream

KEYS = {
    "CEREBRAS_API_KEYS": "csk-cerebras-aaaa1111",
    "GEMINI_API_KEYS": "AIza-gemini-pool-0001",
    "GROQ_API_KEYS": "gsk-groq-pool-0001",
    "OPENAI_API_KEYS": "sk-openai-pool-0001",
    "OPENROUTER_API_KEYS": "sk-or-pool-0001",
}
PROVIDERS = ("cerebras", "gemini", "groq", "openai", "openrouter")
NO_WAIT = {name: {"rps": 0, "max_conn": 0, "retries": 0} for name in PROVIDERS}
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(env=KEYS, config={"providers": NO_WAIT})


def add_client(gw: Any, **doc: Any) -> tuple[int, str]:
    r = gw.api("POST", "/api/clients", json={"name": "mallory", **doc})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def oai(gw: Any, key: str, path: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}{path}", api_key=key, max_retries=0, timeout=10)


def refused(r: httpx.Response, status: int = 403) -> None:
    assert r.status_code == status, r.text
    if status == 403:  # model_not_allowed, in whichever family's shape
        assert "is not allowed for this client key" in r.text


# --- 1, 2: Gemini's native paths ---------------------------------------------------------


def test_gemini_native_model_is_the_paths_whatever_the_body_says(
    gw: Any, mock: MockUpstream
) -> None:
    _, key = add_client(gw, models=["gemini/gemini-2.0-flash"])
    client = genai.Client(api_key=key, http_options={"base_url": f"{gw.url}/gemini"})
    assert client.models.generate_content(model="gemini-2.0-flash", contents="hi").text
    assert mock.count() == 1
    with pytest.raises(genai_errors.ClientError) as exc:
        client.models.generate_content(model="gemini-2.5-pro", contents="hi")
    assert exc.value.code == 403
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        r = c.post(
            "/gemini/v1beta/models/gemini-2.5-pro:generateContent",
            json={"model": "gemini-2.0-flash", "contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": key},
        )
    refused(r)
    assert r.json()["error"]["status"] == "PERMISSION_DENIED"  # Google's own shape
    assert mock.count() == 1


def test_other_spellings_of_the_gemini_method_path_are_read_as_the_upstream_reads_them(
    gw: Any, mock: MockUpstream
) -> None:
    _, key = add_client(gw, models=["gemini/gemini-2.0-flash"])
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    with httpx.Client(base_url=gw.url, timeout=10, headers={"x-goog-api-key": key}) as c:
        for path in (
            "/gemini/v1beta/models//gemini-2.5-pro:generateContent",
            "/gemini/v1beta/models%2Fgemini-2.5-pro:generateContent",
            "/gemini/v1beta/models%2fgemini-2.5-pro%3AgenerateContent",
            "/gemini/v1beta/Models/gemini-2.5-pro:generateContent",
            "/gemini/v1beta/tunedModels/x:generateContent",
            "/gemini/v1beta/models/gemini-2.0-flash/../gemini-2.5-pro:generateContent",
        ):
            refused(c.post(path, json=body))
        assert mock.count() == 0
        # an allowed model in an odd spelling: the path checked is the path sent
        r = c.post("/gemini/v1beta/models%2F%2Fgemini-2.0-flash:generateContent", json=body)
        assert r.status_code == 200, r.text
    (rec,) = mock.records()
    assert rec.path == "/v1beta/models/gemini-2.0-flash:generateContent"


# --- 3: bodies only a lenient parser reads --------------------------------------------------


@pytest.mark.parametrize(
    "lists", [{"models": ["cerebras/llama3.1-8b"]}, {"providers": ["cerebras"]}]
)
def test_a_body_that_does_not_parse_strictly_is_400(
    gw: Any, mock: MockUpstream, lists: dict[str, Any]
) -> None:
    _, key = add_client(gw, **lists)
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    tricks = [
        b'{"model": "llama3.1-8b", "x": "\\ud800", "model": "gpt-oss-120b", "messages": []}',
        b'{"model": "llama3.1-8b", "t": NaN, "model": "gpt-oss-120b", "messages": []}',
        b'{"model": "llama3.1-8b", "t": 1e400, "messages": []}',
        b'{"model": "llama3.1-8b", "messages": [}',
    ]
    with httpx.Client(base_url=gw.url, timeout=10, headers=headers) as c:
        for body in tricks:
            for path in ("/cerebras/v1/chat/completions", "/v1/chat/completions"):
                r = c.post(path, content=body)
                assert r.status_code == 400, (path, body, r.text)
                assert r.json()["error"]["type"] == "invalid_request_error"
        # the Anthropic shape on an Anthropic path
        r = c.post("/cerebras/v1/messages", content=tricks[0])
        assert r.status_code == 400 and r.json()["type"] == "error", r.text
        # the same body from the master password is not keygate's to judge: it goes up
        assert mock.count() == 0


# --- 4: patterns name the provider that serves ----------------------------------------------


def test_a_provider_pattern_does_not_match_another_providers_model_ids(
    gw: Any, mock: MockUpstream
) -> None:
    _, key = add_client(gw, models=["openai/*"])
    with pytest.raises(openai.PermissionDeniedError):
        oai(gw, key, "/v1").chat.completions.create(
            model="openrouter/openai/gpt-4o", messages=MESSAGES
        )
    with pytest.raises(openai.PermissionDeniedError):
        oai(gw, key, "/openrouter/v1").chat.completions.create(
            model="openai/gpt-4o", messages=MESSAGES
        )
    assert mock.count() == 0
    raw = oai(gw, key, "/v1").chat.completions.with_raw_response.create(
        model="openai/gpt-4o", messages=MESSAGES
    )
    assert raw.headers["x-keygate-provider"] == "openai"
    assert [r.key for r in mock.records()] == [KEYS["OPENAI_API_KEYS"]]


# --- 5: the token estimate and streams without usage ----------------------------------------


def test_a_hidden_max_tokens_does_not_shrink_the_estimate(gw: Any, mock: MockUpstream) -> None:
    """The top-level max_tokens counts, not one nested in a tool's schema before it."""
    _, key = add_client(gw, tpd=3000)
    body = orjson.dumps(
        {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "max_tokens": 1}},
                }
            ],
            "model": "llama3.1-8b",
            "max_tokens": 100000,
            "stream": True,
            "messages": MESSAGES,
        }
    )
    assert body.index(b'"max_tokens":1') < body.index(b'"max_tokens":100000')
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    with httpx.Client(base_url=gw.url, timeout=10, headers=headers) as c:
        for _ in range(3):
            r = c.post("/cerebras/v1/chat/completions", content=body)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "client_quota_exceeded"
    assert mock.count() == 0


def test_a_token_limited_clients_stream_asks_for_usage_and_is_counted(
    gw: Any, mock: MockUpstream
) -> None:
    cid, key = add_client(gw, tpd=100000)
    stream = oai(gw, key, "/cerebras/v1").chat.completions.create(
        model="llama3.1-8b", messages=MESSAGES, max_tokens=50, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None  # what the upstream reported, relayed
    (rec,) = mock.records()
    sent = orjson.loads(rec.body)
    assert sent["stream_options"] == {"include_usage": True}
    assert rec.body.endswith(b"}") and sent["max_tokens"] == 50
    usage = chunks[-1].usage
    listed = {c["id"]: c for c in gw.api("GET", "/api/clients").json()["clients"]}
    today = listed[cid]["usage"]["today"]
    assert (today["tokens_in"], today["tokens_out"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_an_answer_without_usage_is_counted_at_its_estimate(gw: Any, mock: MockUpstream) -> None:
    cid, key = add_client(gw, tpd=100000)
    sse = (
        b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        b'{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    mock.set_behavior(body=sse, headers={"Content-Type": "text/event-stream"})
    stream = oai(gw, key, "/cerebras/v1").chat.completions.create(
        model="llama3.1-8b", messages=MESSAGES, max_tokens=700, stream=True
    )
    assert [c.choices[0].delta.content for c in stream] == ["hi"]
    listed = {c["id"]: c for c in gw.api("GET", "/api/clients").json()["clients"]}
    today = listed[cid]["usage"]["today"]
    assert today["tokens_in"] + today["tokens_out"] >= 700  # the estimate: prompt/4 + 700


# --- 6: the key scrub sees what the client receives -----------------------------------------


def test_a_key_joined_by_translation_never_reaches_the_client(gw: Any, mock: MockUpstream) -> None:
    """/v1/responses on a Chat provider: the upstream quotes the pool key across two content
    deltas; the Responses events that assemble the text must not carry it whole."""
    pool_key = KEYS["CEREBRAS_API_KEYS"]
    mock.set_behavior(text=f"the key is {pool_key} ok", chunks=4)
    client = oai(gw, gw.password, "/cerebras/v1")
    with client.responses.with_streaming_response.create(
        model="llama3.1-8b", input="hi", stream=True
    ) as resp:
        streamed = resp.read()
    assert b"output_text.done" in streamed
    assert pool_key.encode() not in streamed
    assert pool_key[:4].encode() in streamed  # the masked form is there instead
    whole = client.responses.with_raw_response.create(model="llama3.1-8b", input="hi")
    assert pool_key.encode() not in whole.http_response.content
    # the key did come from the upstream in pieces: the test would see it otherwise
    (rec, _) = mock.records()
    assert rec.key == pool_key


# --- 9, 10: what a model list implies ---------------------------------------------------


def test_the_model_list_shows_a_restricted_client_only_what_it_may_use(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    models = {"fast": {"strategy": "fallback", "targets": ["groq/llama", "openai/gpt-4o"]}}
    models["slow"] = "groq/llama-big"
    gw = gateway_factory(env=KEYS, config={"providers": NO_WAIT, "models": models})
    mock.set_behavior(models=["gpt-4o", "llama", "llama-big"])
    _, key = add_client(gw, models=["openai/*"])
    ids = {m.id for m in oai(gw, key, "/v1").models.list()}
    assert "openai/gpt-4o" in ids and "fast" in ids  # fast reaches openai/gpt-4o
    assert not {"groq/llama", "slow", "llama3.1-8b", "gpt-4o"} & ids
    assert not any(i.startswith(("groq/", "openrouter/", "gemini/")) for i in ids)
    everything = {m.id for m in oai(gw, gw.password, "/v1").models.list()}
    assert {"groq/llama", "slow", "fast", "openai/gpt-4o"} <= everything


def test_a_model_less_request_goes_only_to_providers_the_lists_imply(
    gw: Any, mock: MockUpstream
) -> None:
    _, key = add_client(gw, models=["openai/*"])
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gw.url, timeout=10, headers=headers) as c:
        refused(c.get("/groq/v1/models"))
        refused(c.post("/groq/v1/chat/completions", json={"messages": MESSAGES}))
        refused(c.get("/gemini/v1beta/models"))
        assert mock.count() == 0
        assert c.get("/openai/v1/models").status_code == 200
    assert [r.key for r in mock.records()] == [KEYS["OPENAI_API_KEYS"]]


# --- what the fuzz run of the lists found -----------------------------------------------


def test_a_gemini_path_that_names_no_model_has_its_body_read(gw: Any, mock: MockUpstream) -> None:
    """Spellings that Gemini's dialect takes for native paths naming no model (`//openai`,
    `OpenAI`, `V1`) still carry a body whose model the upstream reads."""
    _, key = add_client(gw, models=["gemini/gemini-2.0-flash"])
    body = {"model": "gemini-2.5-pro", "messages": MESSAGES}
    with httpx.Client(base_url=gw.url, timeout=10, headers={"x-goog-api-key": key}) as c:
        for path in (
            "/gemini/v1beta//openai/chat/completions",
            "/gemini/v1beta/OpenAI/chat/completions",
            "/gemini/V1/chat/completions",
            "/gemini//v1/embeddings",
        ):
            refused(c.post(path, json=body))
        assert mock.count() == 0
        ok = c.post(
            "/gemini/v1beta//openai/chat/completions", json={**body, "model": "gemini-2.0-flash"}
        )
        assert ok.status_code != 403, ok.text


def test_a_model_key_spelt_with_escapes_counts_as_a_second_model(
    gw: Any, mock: MockUpstream
) -> None:
    _, key = add_client(gw, models=["cerebras/llama3.1-8b"])
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    with httpx.Client(base_url=gw.url, timeout=10, headers=headers) as c:
        for path, body in (
            (
                "/cerebras/v1/chat/completions",
                b'{"\\u006dodel": "gpt-oss-120b", "model": "llama3.1-8b", "messages": []}',
            ),
            (
                "/v1/embeddings",
                b'{"model": "openai/gpt-4o", "input": "hi", "mod\\u0065l": "llama3.1-8b"}',
            ),
        ):
            r = c.post(path, content=body)
            assert r.status_code == 400, (path, r.text)
    assert mock.count() == 0


def test_a_body_whose_model_cannot_be_read_is_refused_to_a_client_with_a_model_list(
    gw: Any, mock: MockUpstream
) -> None:
    _, key = add_client(gw, models=["cerebras/llama3.1-8b"])
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gw.url, timeout=10, headers=auth) as c:
        refused(c.post("/cerebras/v1/audio/transcriptions", data={"model": "gpt-oss-120b"}))
        refused(
            c.post(
                "/cerebras/v1/audio/transcriptions",
                files={"file": ("a.wav", b"RIFF")},
                data={"model": "gpt-oss-120b"},
            )
        )
        chat = orjson.dumps({"model": "gpt-oss-120b", "messages": []})
        for raw in (b"\xef\xbb\xbf" + chat, chat.decode().encode("utf-16"), b"[" + chat + b"]"):
            r = c.post("/cerebras/v1/chat/completions", content=raw)
            assert r.status_code in (400, 403), r.text
    assert mock.count() == 0
    # a client limited by provider only may still send what it likes there
    _, wide = add_client(gw, providers=["cerebras"])
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        r = c.post(
            "/cerebras/v1/audio/transcriptions",
            data={"model": "whisper"},
            headers={"Authorization": f"Bearer {wide}"},
        )
    assert mock.count() == 1 and r.status_code != 403
