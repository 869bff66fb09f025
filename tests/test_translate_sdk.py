"""Format translation (SPEC §11) driven by the real SDKs through a gateway on loopback.

The Anthropic SDK talks to an OpenAI-format provider (cerebras, the mock speaking OpenAI), the
OpenAI SDK to `claude` (the mock speaking Anthropic), and the Responses API to a provider that
speaks only Chat Completions. The mock's records tell what really went upstream.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from harness import wait_log
from keygate.testing.mock_upstream import MockUpstream, Recorded

PASSWORD = "gw-test-password"
CEREBRAS_KEY = "csk-cerebras-aaaa1111"
CLAUDE_KEY = "sk-ant-api03-bbbb2222"
ENV = {"CEREBRAS_API_KEYS": CEREBRAS_KEY, "CLAUDE_API_KEYS": CLAUDE_KEY}
CONFIG = {
    "providers": {
        "cerebras": {"rps": 0, "max_conn": 0, "retries": 0},
        "claude": {"rps": 0, "max_conn": 0, "retries": 0},
    }
}
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
OAI_WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": WEATHER["input_schema"],
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(env=ENV, config=CONFIG)


def claude_on(gw: Any, prefix: str = "/cerebras", **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", PASSWORD)
    return anthropic.Anthropic(base_url=f"{gw.url}{prefix}", max_retries=0, timeout=10, **kw)


def oai_on(gw: Any, prefix: str = "/claude/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}{prefix}", api_key=PASSWORD, max_retries=0, timeout=10)


def sent(rec: Recorded) -> Any:
    return orjson.loads(rec.body)


def assert_no_password(rec: Recorded) -> None:
    everything = "".join(f"{k}: {v}\n" for k, v in rec.headers.items()).encode() + rec.body
    assert PASSWORD.encode() not in everything


# ----------------------------------------------------------------- Anthropic SDK on OpenAI format


def test_messages_create_on_openai_provider(gw: Any, mock: MockUpstream) -> None:
    msg = claude_on(gw).messages.create(
        model="llama3.1-8b",
        max_tokens=64,
        system="You are terse.",
        stop_sequences=["END"],
        extra_body={"temperature": 0.2, "top_p": 0.9},
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Say hello"},
        ],
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from mock"
    assert msg.stop_reason == "end_turn"
    assert msg.model == "llama3.1-8b"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    [rec] = mock.records()
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["authorization"] == f"Bearer {CEREBRAS_KEY}"
    assert "x-api-key" not in rec.headers
    assert_no_password(rec)
    body = sent(rec)
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Say hello"},
    ]
    assert body["max_tokens"] == 64 and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["stop"] == ["END"]
    assert "stream" not in body


def test_messages_stream_on_openai_provider(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=4, text="alpha beta gamma delta")
    with claude_on(gw).messages.stream(
        model="llama3.1-8b", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "alpha beta gamma delta"
    assert len(pieces) == 4  # event by event, not merged
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == "alpha beta gamma delta"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    [rec] = mock.records()
    body = sent(rec)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}  # asked for the streamed usage


def test_tool_use_on_openai_provider(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(text="", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    client = claude_on(gw)
    msg = client.messages.create(
        model="m",
        max_tokens=64,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert msg.stop_reason == "tool_use"
    [block] = msg.content
    assert block.type == "tool_use"
    assert block.name == "get_weather" and block.input == {"city": "Paris"}
    body = sent(mock.records()[0])
    assert body["tools"] == [OAI_WEATHER]  # tools as functions
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    # the round trip: the call and its result go back as an assistant call and a tool message
    mock.set_behavior(text="It is sunny")
    msg2 = client.messages.create(
        model="m",
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": msg.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": "sunny, 21C"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    assert msg2.content[0].text == "It is sunny"
    history = sent(mock.records()[1])["messages"]
    assert history[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": block.id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert history[2] == {"role": "tool", "tool_call_id": block.id, "content": "sunny, 21C"}
    assert history[3] == {"role": "user", "content": "Thanks"}


def test_streamed_parallel_tool_calls_on_openai_provider(gw: Any, mock: MockUpstream) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}},
    ]
    mock.set_behavior(text="Let me check.", tool_calls=calls, chunks=5)
    with claude_on(gw).messages.stream(
        model="m",
        max_tokens=64,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    text, first, second = final.content
    assert text.type == "text" and text.text == "Let me check."
    assert (first.type, first.name, first.input) == ("tool_use", "get_weather", {"city": "Paris"})
    assert second.input == {"city": "Tokyo", "unit": "celsius"}
    assert first.id != second.id
    assert kinds.count("input_json") > 2  # the arguments came in pieces


def test_image_input_on_openai_provider(gw: Any, mock: MockUpstream) -> None:
    claude_on(gw).messages.create(
        model="m",
        max_tokens=16,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    [message] = sent(mock.records()[0])["messages"]
    assert message["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
        {"type": "text", "text": "What is this?"},
    ]


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, anthropic.AuthenticationError), (429, anthropic.RateLimitError)],
)
def test_upstream_errors_as_anthropic_exceptions(
    gw: Any, mock: MockUpstream, status: int, error: type[Exception]
) -> None:
    mock.set_behavior(status=status, headers={"Retry-After": "7"})
    with pytest.raises(error) as info:
        claude_on(gw).messages.create(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        )
    exc: Any = info.value
    assert exc.status_code == status
    assert exc.body["type"] == "error"
    expected = {401: "authentication_error", 429: "rate_limit_error"}[status]
    assert exc.body["error"]["type"] == expected
    assert "mock upstream error" in exc.body["error"]["message"]
    if status == 429:
        assert exc.response.headers["retry-after"] == "7"


def test_untranslatable_content_is_a_400_naming_the_field(gw: Any, mock: MockUpstream) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude_on(gw).messages.create(
            model="m",
            max_tokens=16,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                        }
                    ],
                }
            ],
        )
    assert "messages[0].content[0].type" in info.value.body["error"]["message"]
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert mock.records() == []


def test_count_tokens_locally(gw: Any, mock: MockUpstream) -> None:
    client = claude_on(gw)
    short = client.messages.count_tokens(
        model="m", messages=[{"role": "user", "content": "Hi"}]
    ).input_tokens
    long = client.messages.count_tokens(
        model="m",
        system="You are a helpful assistant.",
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Tell me a long story about a cat. " * 40}],
    ).input_tokens
    assert 0 < short < 20
    assert long > 300
    assert mock.records() == []  # nothing went upstream


def test_mid_stream_reset_is_an_anthropic_error(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=5, reset_after_chunks=2)
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        claude_on(gw).messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert "upstream" in str(info.value)


def test_error_event_mid_stream_is_an_anthropic_error(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=5, error_after_chunks=2)
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        claude_on(gw).messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert "mock upstream failed mid-stream" in str(info.value)


def test_translation_in_access_log_and_recent_requests(gw: Any, mock: MockUpstream) -> None:
    claude_on(gw).messages.create(
        model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    wait_log(gw, "translated=anthropic→openai", 0)
    recent = gw.api("GET", "/api/requests").json()["requests"]
    assert recent[0]["translated"] == "anthropic→openai"
    assert recent[0]["path"] == "/cerebras/v1/messages"


def test_keygate_errors_in_the_clients_shape(
    gw: Any, mock: MockUpstream, gateway_factory: Any
) -> None:
    # a wrong password: the shape of the client's family, not of the provider's
    with pytest.raises(openai.AuthenticationError) as oai_info:
        openai.OpenAI(
            base_url=f"{gw.url}/claude/v1", api_key="wrong", max_retries=0
        ).chat.completions.create(model="c", messages=[{"role": "user", "content": "x"}])
    assert oai_info.value.body["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as info:
        claude_on(gw, api_key="wrong").messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    # no key configured: keygate's own 503, still in the client's shape
    bare = gateway_factory(env={}, config=CONFIG)
    with pytest.raises(anthropic.InternalServerError) as info2:
        claude_on(bare).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info2.value.body["type"] == "error"  # type: ignore[index]
    assert "no API key configured" in info2.value.body["error"]["message"]  # type: ignore[index]
    assert mock.records() == []


def test_client_query_parameters_stay_behind(gw: Any, mock: MockUpstream) -> None:
    claude_on(gw).messages.create(
        model="m",
        max_tokens=5,
        messages=[{"role": "user", "content": "x"}],
        extra_query={"beta": "true"},
    )
    [rec] = mock.records()
    assert rec.path == "/v1/chat/completions" and rec.query == ""


def test_same_family_stays_byte_for_byte(gw: Any, mock: MockUpstream) -> None:
    raw = b'{"model": "m",  "messages": [{"role":"user","content":"x"}], "odd_field": 1}'
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {PASSWORD}"}) as c:
        r = c.post("/cerebras/v1/chat/completions", content=raw)
        assert r.status_code == 200
        r = c.post("/claude/v1/messages", content=raw)
        assert r.status_code == 200
    chat, messages = mock.records()
    assert chat.body == raw and messages.body == raw
    assert messages.path == "/v1/messages"


# -------------------------------------------------------------------- OpenAI SDK on Claude


def test_chat_on_claude(gw: Any, mock: MockUpstream) -> None:
    out = oai_on(gw).chat.completions.create(
        model="claude-test",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        max_tokens=32,
        stop="END",
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.content == "Hello from mock"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    [rec] = mock.records()
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == CLAUDE_KEY
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in rec.headers
    body = sent(rec)
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}
    ]
    assert body["max_tokens"] == 32 and body["stop_sequences"] == ["END"]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop")],
)
def test_finish_reason_mapping_on_claude(
    gw: Any, mock: MockUpstream, stop_reason: str, finish_reason: str
) -> None:
    mock.set_behavior(finish=stop_reason)
    client = oai_on(gw)
    out = client.chat.completions.create(model="c", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].finish_reason == finish_reason
    stream = client.chat.completions.create(
        model="c", messages=[{"role": "user", "content": "x"}], stream=True
    )
    finishes = [c.choices[0].finish_reason for c in stream if c.choices]
    assert finishes[-1] == finish_reason


def test_streaming_on_claude_with_usage(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=4, text="one two three four")
    stream = oai_on(gw).chat.completions.create(
        model="c",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == "one two three four" and len(pieces) == 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 0
    assert "stream_options" not in sent(mock.records()[0])
    # without include_usage there is no usage chunk
    plain = list(
        oai_on(gw).chat.completions.create(
            model="c", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    assert all(c.choices for c in plain)


def test_tool_calls_on_claude(gw: Any, mock: MockUpstream) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
    ]
    mock.set_behavior(text="", tool_calls=calls, chunks=4)
    client = oai_on(gw)
    out = client.chat.completions.create(
        model="c",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[OAI_WEATHER],
        tool_choice="required",
        parallel_tool_calls=True,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    args = [orjson.loads(t.function.arguments) for t in choice.message.tool_calls]
    assert args == [{"city": "Paris"}, {"city": "Oslo"}]
    body = sent(mock.records()[0])
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": WEATHER["input_schema"],
        }
    ]
    assert body["tool_choice"] == {"type": "any"}

    # streamed: argument deltas per tool_calls index
    stream = client.chat.completions.create(
        model="c",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[OAI_WEATHER],
        stream=True,
    )
    by_index: dict[int, str] = {}
    names: dict[int, str] = {}
    finish = None
    deltas = 0
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for call in chunk.choices[0].delta.tool_calls or ():
            if call.function and call.function.name:
                names[call.index] = call.function.name
            if call.function and call.function.arguments:
                by_index[call.index] = by_index.get(call.index, "") + call.function.arguments
                deltas += 1
    assert finish == "tool_calls"
    assert names == {0: "get_weather", 1: "get_weather"}
    assert [orjson.loads(by_index[i]) for i in (0, 1)] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert deltas > 2

    # the round trip: tool messages become tool_result blocks in one user turn
    first, second = choice.message.tool_calls
    mock.set_behavior(text="Sunny and cold")
    client.chat.completions.create(
        model="c",
        tools=[OAI_WEATHER],
        messages=[
            {"role": "user", "content": "Weather?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": first.id, "content": "sunny"},
            {"role": "tool", "tool_call_id": second.id, "content": "cold"},
        ],
    )
    history = sent(mock.records()[-1])["messages"]
    assert history[1]["role"] == "assistant"
    assert [b["input"] for b in history[1]["content"]] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert history[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": first.id, "content": "sunny"},
            {"type": "tool_result", "tool_use_id": second.id, "content": "cold"},
        ],
    }


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (401, openai.AuthenticationError, "authentication_error"),
        (429, openai.RateLimitError, "rate_limit_error"),
    ],
)
def test_upstream_errors_on_claude_as_openai_exceptions(
    gw: Any, mock: MockUpstream, status: int, error: type[Exception], kind: str
) -> None:
    mock.push(status=status, headers={"retry-after": "3"})
    with pytest.raises(error) as info:
        oai_on(gw).chat.completions.create(model="c", messages=[{"role": "user", "content": "x"}])
    exc: Any = info.value
    assert exc.status_code == status
    assert exc.type == kind and exc.code == kind  # the Anthropic type kept as the code
    assert "mock upstream error" in exc.message
    assert exc.response.headers["retry-after"] == "3"


def test_mid_stream_failures_on_claude_end_as_openai_errors(gw: Any, mock: MockUpstream) -> None:
    mock.push(chunks=5, reset_after_chunks=2)
    stream = oai_on(gw).chat.completions.create(
        model="c", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    mock.push(chunks=5, error_after_chunks=2)
    stream = oai_on(gw).chat.completions.create(
        model="c", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        for _ in stream:
            pass


def test_unneutral_parameter_on_claude_is_a_400(gw: Any, mock: MockUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai_on(gw).chat.completions.create(
            model="c", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert "n:" in info.value.message
    assert mock.records() == []


# ------------------------------------------------------------- Responses on Chat Completions


def test_responses_plain_on_chat_provider(gw: Any, mock: MockUpstream) -> None:
    client = oai_on(gw, "/cerebras/v1")
    resp = client.responses.create(
        model="llama3.1-8b", instructions="Be brief.", input="Say hello", max_output_tokens=50
    )
    assert resp.object == "response" and resp.status == "completed"
    assert resp.output_text == "Hello from mock"
    assert resp.usage is not None and resp.usage.input_tokens > 0
    [rec] = mock.records()
    assert rec.path == "/v1/chat/completions"
    body = sent(rec)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]
    assert body["max_tokens"] == 50


def test_responses_stream_on_chat_provider(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=3, text="one two three")
    client = oai_on(gw, "/v1")  # the unified endpoint: the default provider, cerebras
    stream = client.responses.create(model="m", input="Count", stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 3
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.output_item.done",
    ):
        assert expected in kinds
    final: Any = events[-1]
    assert final.response.output_text == "one two three"
    assert final.response.usage.output_tokens > 0
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert sent(mock.records()[0])["stream_options"] == {"include_usage": True}


def test_responses_function_tool_on_chat_provider(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(text="", tool_calls=[{"name": "get_weather", "arguments": {"city": "Rome"}}])
    client = oai_on(gw, "/cerebras/v1")
    tool: Any = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": WEATHER["input_schema"],
    }
    resp = client.responses.create(model="m", input="Weather in Rome?", tools=[tool])
    [call] = resp.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"city": "Rome"}
    assert sent(mock.records()[0])["tools"] == [OAI_WEATHER]

    with client.responses.stream(model="m", input="Weather in Rome?", tools=[tool]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    [streamed] = final.output
    assert streamed.type == "function_call"
    assert orjson.loads(streamed.arguments) == {"city": "Rome"}

    # the call's output goes back as a tool message
    mock.set_behavior(text="Warm")
    resp2 = client.responses.create(
        model="m",
        tools=[tool],
        input=[
            {"role": "user", "content": "Weather in Rome?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "get_weather",
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "warm, 28C"},
        ],
    )
    assert resp2.output_text == "Warm"
    history = sent(mock.records()[-1])["messages"]
    assert history[1]["tool_calls"][0]["id"] == call.call_id
    assert history[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "warm, 28C"}


@pytest.mark.parametrize(
    "extra", [{"store": True}, {"previous_response_id": "resp_123"}], ids=["store", "previous"]
)
def test_responses_stateful_is_refused(gw: Any, mock: MockUpstream, extra: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai_on(gw, "/cerebras/v1").responses.create(model="m", input="x", **extra)
    assert next(iter(extra)) in info.value.message
    assert "stateless" in info.value.message or "keeps no responses" in info.value.message
    assert mock.records() == []


def test_responses_on_claude(gw: Any, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=2, text="via claude")
    client = oai_on(gw, "/claude/v1")
    assert client.responses.create(model="c", input="hi").output_text == "via claude"
    events = list(client.responses.create(model="c", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert all(r.path == "/v1/messages" for r in mock.records())


def test_responses_native_on_openai(gw: Any, mock: MockUpstream, gateway_factory: Any) -> None:
    gw2 = gateway_factory(env={"OPENAI_API_KEYS": "sk-openai-x"}, config=None)
    # what OpenAI's own Responses API answers (it keeps responses: `store` is its to honour)
    answer = b'{"id":"resp_native","object":"response","status":"completed","store":true}'
    mock.set_behavior(body=answer)
    with httpx.Client(base_url=gw2.url, headers={"Authorization": f"Bearer {PASSWORD}"}) as c:
        raw = b'{"model":"gpt","input":"x","store":true}'
        r = c.post("/openai/v1/responses", content=raw)
    [rec] = mock.records()
    assert rec.path == "/v1/responses" and rec.body == raw  # passed as it is
    assert r.status_code == 200 and r.content == answer, r.text  # and so is the answer


def test_mid_stream_reset_ends_a_responses_stream_with_an_error(
    gw: Any, mock: MockUpstream
) -> None:
    mock.push(chunks=5, reset_after_chunks=2)
    stream = oai_on(gw, "/cerebras/v1").responses.create(model="m", input="x", stream=True)
    kinds: list[str] = []
    with pytest.raises(openai.APIError):
        for event in stream:
            kinds.append(event.type)
    assert kinds[-1] == "response.failed"


def test_silent_upstream_mid_stream_is_an_sdk_error_not_a_hang(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    config = {"providers": {"cerebras": {"rps": 0, "max_conn": 0, "timeout_idle_s": 1}}}
    gw = gateway_factory(env=ENV, config=config)
    mock.set_behavior(chunks=3, chunk_interval_s=3)
    started = time.monotonic()
    with (
        pytest.raises(anthropic.APIStatusError, match="went silent"),
        claude_on(gw).messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert time.monotonic() - started < 2.5  # cut at the idle timeout, long before the mock


def test_provider_key_masked_in_translated_answers(gw: Any, mock: MockUpstream) -> None:
    # one content event: the echoed key is split across two reads (the scrubber's job), not
    # spread over two events' texts, which no byte-level scrub sees (plain relays alike)
    mock.set_behavior(echo_key=True, chunks=1)
    client = claude_on(gw)
    whole = client.messages.create(
        model="m", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    )
    with client.messages.stream(
        model="m", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        streamed = "".join(stream.text_stream)
    mock.set_behavior(status=401, echo_key=True)
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "x"}]
        )
    for text in (whole.content[0].text, streamed, str(info.value.body)):  # type: ignore[union-attr]
        assert CEREBRAS_KEY not in text
        assert "csk-" in text  # the masked form is there instead
