"""The translators on their own (no gateway): the mapping tables, request and answer mappings,
the SSE parser, the stream state machines, and which requests translate at all.

The tables below are the documentation of the mappings: a row per value, checked against the
translator that uses it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from keygate.config.settings import ProviderConfig
from keygate.dialects.anthropic import ANTHROPIC
from keygate.dialects.gemini import GEMINI
from keygate.dialects.openai import OPENAI
from keygate.http.errors import GatewayError
from keygate.proxy.translated import translate_request
from keygate.translate import (
    Untranslatable,
    adapter_for,
    chat_messages,
    client_family,
    messages_chat,
    responses_chat,
)
from keygate.translate.count import estimate
from keygate.translate.sse import SSEParser
from keygate.translate.tables import anthropic_error_type, openai_error_type

# ------------------------------------------------------------------------- the tables, as rows

STOP_REASONS = [
    # (Chat finish_reason, Anthropic stop_reason it becomes, back to Chat)
    ("stop", "end_turn", "stop"),
    ("length", "max_tokens", "length"),
    ("tool_calls", "tool_use", "tool_calls"),
    ("content_filter", "refusal", "content_filter"),
]
ANTHROPIC_ONLY_STOPS = [("stop_sequence", "stop"), ("pause_turn", "stop")]


@pytest.mark.parametrize(("finish", "stop", "back"), STOP_REASONS)
def test_stop_reasons(finish: str, stop: str, back: str) -> None:
    chat = {"id": "x", "choices": [{"message": {"content": "hi"}, "finish_reason": finish}]}
    assert messages_chat.answer(chat, "m")["stop_reason"] == stop
    msg = {"id": "m", "content": [{"type": "text", "text": "hi"}], "stop_reason": stop}
    assert chat_messages.answer(msg, "m")["choices"][0]["finish_reason"] == back


@pytest.mark.parametrize(("stop", "finish"), ANTHROPIC_ONLY_STOPS)
def test_anthropic_only_stop_reasons(stop: str, finish: str) -> None:
    msg = {"id": "m", "content": [], "stop_reason": stop}
    assert chat_messages.answer(msg, "m")["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    ("finish", "status", "reason"),
    [
        ("stop", "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", "max_output_tokens"),
        ("content_filter", "incomplete", "content_filter"),
    ],
)
def test_responses_status(finish: str, status: str, reason: str | None) -> None:
    chat = {"choices": [{"message": {"content": "hi"}, "finish_reason": finish}]}
    out = responses_chat.answer(chat, {"model": "m"})
    assert out["status"] == status
    assert out["incomplete_details"] == ({"reason": reason} if reason else None)


ROLES = [
    # (Chat message, the Anthropic request's system / messages it becomes)
    ({"role": "system", "content": "S"}, "S", []),
    ({"role": "developer", "content": "D"}, "D", []),
    (
        {"role": "user", "content": "U"},
        None,
        [{"role": "user", "content": [{"type": "text", "text": "U"}]}],
    ),
    (
        {"role": "tool", "tool_call_id": "c1", "content": "R"},
        None,
        [
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "R"}],
            }
        ],
    ),
]


@pytest.mark.parametrize(("message", "system", "messages"), ROLES)
def test_roles_chat_to_anthropic(message: Any, system: str | None, messages: Any) -> None:
    out, _ = chat_messages.request({"model": "m", "messages": [message]})
    assert out.get("system") == system
    assert out["messages"] == messages


PARTS = [
    # (Anthropic user block, the Chat part it becomes)
    ({"type": "text", "text": "hi"}, {"type": "text", "text": "hi"}),
    (
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
    ),
    (
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
    ),
]


@pytest.mark.parametrize(("block", "part"), PARTS)
def test_content_parts_both_ways(block: Any, part: Any) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/b.png"}}
    chat = messages_chat.request(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [block, image]}]}
    )
    assert chat["messages"][0]["content"][0] == part
    back, _ = chat_messages.request({"model": "m", "messages": chat["messages"]})
    assert back["messages"][0]["content"][0] == block


UNTRANSLATABLE = [
    # (direction, request, the field the 400 names)
    (
        "anthropic",
        {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
        "messages[0].content[0].type",
    ),
    ("anthropic", {"messages": [], "top_k": 5}, "top_k"),
    (
        "anthropic",
        {"messages": [], "tools": [{"type": "web_search_20250305", "name": "w"}]},
        "tools[0].type",
    ),
    (
        "anthropic",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        },
        "messages[0].content[0].source.type",
    ),
    (
        "openai",
        {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        "messages[0].content[0].type",
    ),
    ("openai", {"messages": [], "n": 3}, "n"),
    ("openai", {"messages": [], "logprobs": True}, "logprobs"),
    (
        "openai",
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "f", "arguments": "{oops"}}
                    ],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    ("openai", {"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ("responses", {"input": "x", "store": True}, "store"),
    ("responses", {"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ("responses", {"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ("responses", {"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    (
        "responses",
        {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
        "input[0].content[0].type",
    ),
]


@pytest.mark.parametrize(("family", "doc", "field"), UNTRANSLATABLE)
def test_untranslatable_names_the_field(family: str, doc: Any, field: str) -> None:
    translate: Any = {
        "anthropic": messages_chat.request,
        "openai": chat_messages.request,
        "responses": responses_chat.request,
    }[family]
    with pytest.raises(Untranslatable) as info:
        translate({"model": "m", **doc})
    assert info.value.field == field


@pytest.mark.parametrize(
    ("status", "anthropic_type", "openai_type"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (403, "permission_error", "permission_error"),
        (404, "not_found_error", "not_found_error"),
        (413, "request_too_large", "invalid_request_error"),
        (429, "rate_limit_error", "rate_limit_error"),
        (500, "api_error", "server_error"),
        (503, "overloaded_error", "service_unavailable"),
        (529, "overloaded_error", "overloaded_error"),
        (418, "invalid_request_error", "invalid_request_error"),
        (599, "api_error", "server_error"),
    ],
)
def test_error_types(status: int, anthropic_type: str, openai_type: str) -> None:
    assert anthropic_error_type(status) == anthropic_type
    assert openai_error_type(status) == openai_type


def test_upstream_error_bodies_change_shape() -> None:
    adapter: Any = adapter_for("anthropic", OPENAI, "/v1/messages")
    body = b'{"error":{"message":"Rate limit reached for key sk-...","type":"requests","code":"rate_limit_exceeded"}}'
    out, headers = adapter.error(429, body, [(b"retry-after", b"7"), (b"content-type", b"x")])
    assert orjson.loads(out) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached for key sk-..."},
    }
    assert (b"retry-after", b"7") in headers and (b"content-type", b"application/json") in headers
    adapter = adapter_for("openai", ANTHROPIC, "/v1/chat/completions")
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    out, _ = adapter.error(529, body, [])
    assert orjson.loads(out)["error"] == {
        "message": "Overloaded",
        "type": "overloaded_error",
        "param": None,
        "code": "overloaded_error",
    }
    out, _ = adapter.error(502, b"<html>bad gateway</html>", [])
    assert orjson.loads(out)["error"]["message"] == "<html>bad gateway</html>"


# ---------------------------------------------------------------------- which requests translate

WHERE = [
    # (client path, provider dialect, provider name, label or None: passes as it is)
    ("/v1/messages", OPENAI, "cerebras", "anthropic→openai"),
    ("/v1/messages/count_tokens", OPENAI, "groq", "anthropic→openai"),
    ("/v1/messages", GEMINI, "gemini", "anthropic→openai"),
    ("/v1/chat/completions", ANTHROPIC, "claude", "openai→anthropic"),
    ("/v1/responses", OPENAI, "cerebras", "responses→openai"),
    ("/v1/responses", ANTHROPIC, "claude", "responses→anthropic"),
    ("/v1/responses", OPENAI, "openai", None),  # speaks Responses itself
    ("/v1/chat/completions", OPENAI, "cerebras", None),
    ("/v1/messages", ANTHROPIC, "claude", None),
    ("/v1/messages/count_tokens", ANTHROPIC, "claude", None),
    ("/v1/embeddings", OPENAI, "cerebras", None),
    ("/v1/models", ANTHROPIC, "claude", None),
]


@pytest.mark.parametrize(("path", "dialect", "name", "label"), WHERE)
def test_where_translation_applies(path: str, dialect: Any, name: str, label: str | None) -> None:
    adapter = adapter_for(client_family(path), dialect, path, name)
    assert (adapter.label if adapter else None) == label


def test_gemini_upstream_path() -> None:
    adapter: Any = adapter_for("anthropic", GEMINI, "/v1/messages", "gemini")
    assert adapter.path == "/v1beta/openai/chat/completions"
    assert adapter.wire is OPENAI


def test_default_model_filled_once() -> None:
    adapter: Any = adapter_for("anthropic", OPENAI, "/v1/messages")
    body = adapter.request(b'{"max_tokens":5,"messages":[]}', "llama", False)
    assert orjson.loads(body)["model"] == "llama"
    adapter = adapter_for("anthropic", OPENAI, "/v1/messages")
    body = adapter.request(b'{"model":"x","max_tokens":5,"messages":[]}', "llama", True)
    assert orjson.loads(body)["model"] == "llama"


def test_count_tokens_estimate_grows_with_content() -> None:
    base = estimate({"messages": [{"role": "user", "content": "hi"}]})
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    with_image = estimate({"messages": [{"role": "user", "content": [image]}]})
    text = "word " * 400
    assert base < 10 and with_image >= 1600
    assert 400 < estimate({"messages": [{"role": "user", "content": text}]}) < 700


# ----------------------------------------------------------------------------------- SSE parser


def test_sse_parser_fields_and_line_ends() -> None:
    raw = (
        b': comment\r\nevent: a\r\ndata: {"x":1}\r\n\r\n'
        b"data: line1\ndata: line2\n\n"
        b"event: only-name\n\n"
        b"id: 5\ndata:[DONE]\n\n"
    )
    events = list(SSEParser().feed(raw))
    assert events == [("a", b'{"x":1}'), (None, b"line1\nline2"), (None, b"[DONE]")]


def test_sse_parser_unterminated_last_event() -> None:
    parser = SSEParser()
    assert list(parser.feed(b"data: tail")) == []
    assert list(parser.close()) == [(None, b"tail")]


def test_stream_memory_stays_constant() -> None:
    adapter: Any = adapter_for("anthropic", OPENAI, "/v1/messages")
    adapter.request(b'{"model":"m","max_tokens":5,"messages":[],"stream":true}')
    translator = adapter.stream()
    chunk = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"word "}}]}\n\n'
    for _ in range(20000):
        translator.feed(chunk[:30])
        assert translator.feed(chunk[30:])
    assert len(translator.parser._buf) < 100
    assert translator.writer.buf == []


# --------------------------------------------------------- streams: any byte split, same events


def _chat_stream(tool_calls: bool, crlf: bool) -> bytes:
    head = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    events = [head + '[{"index":0,"delta":{"role":"assistant","content":""}}]}']
    events += [
        head + f'[{{"index":0,"delta":{{"content":"pi\\u00e9ce {i} "}}}}]}}' for i in range(3)
    ]
    if tool_calls:
        for n in range(2):
            events.append(
                head + f'[{{"index":0,"delta":{{"tool_calls":[{{"index":{n},"id":"call_{n}",'
                f'"type":"function","function":{{"name":"f{n}","arguments":""}}}}]}}}}]}}'
            )
            for piece in ('{"a', '":', f"{n}}}"):
                events.append(
                    head + f'[{{"index":0,"delta":{{"tool_calls":[{{"index":{n},"function":'
                    f'{{"arguments":{orjson.dumps(piece).decode()}}}}}]}}}}]}}'
                )
    finish = "tool_calls" if tool_calls else "stop"
    events.append(head + f'[{{"index":0,"delta":{{}},"finish_reason":"{finish}"}}]}}')
    events.append(head + '[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}')
    end = "\r\n" if crlf else "\n"
    return "".join(f"data: {e}{end}{end}" for e in [*events, "[DONE]"]).encode()


def _anthropic_stream(tool_calls: bool) -> bytes:
    def ev(name: str, data: Any) -> str:
        return f"event: {name}\ndata: {orjson.dumps(data).decode()}\n\n"

    out = ev(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "model": "c",
                "usage": {"input_tokens": 9, "output_tokens": 1},
            },
        },
    )
    out += ev(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    out += ev("ping", {"type": "ping"})
    for word in ("héllo ", "wörld"):
        out += ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": word},
            },
        )
    out += ev("content_block_stop", {"type": "content_block_stop", "index": 0})
    stop = "end_turn"
    if tool_calls:
        stop = "tool_use"
        out += ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            },
        )
        for piece in ('{"ci', 'ty": "Pa', 'ris"}'):
            out += ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
        out += ev("content_block_stop", {"type": "content_block_stop", "index": 1})
    out += ev(
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 12}},
    )
    out += ev("message_stop", {"type": "message_stop"})
    return out.encode()


STREAM_REQUESTS = {
    "anthropic": b'{"model":"m","max_tokens":9,"messages":[],"stream":true}',
    "openai": b'{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}',
    "responses": b'{"model":"m","input":"x","stream":true}',
}
_IDS = re.compile(rb'"(?:resp|msg|fc|rs|call|toolu|chatcmpl)[_-][0-9a-zA-Z_-]*"')
_TIMES = re.compile(rb'"(created|created_at)":\d+')


def _translate(client: str, dialect: Any, path: str, upstream: bytes, cuts: list[int]) -> bytes:
    adapter: Any = adapter_for(client, dialect, path)
    adapter.request(STREAM_REQUESTS[client])
    translator = adapter.stream()
    out = b""
    last = 0
    for cut in sorted(cuts):
        out += translator.feed(upstream[last:cut])
        last = cut
    out += translator.feed(upstream[last:]) + translator.end()
    assert not translator.failed
    return _TIMES.sub(rb'"\1":0', _IDS.sub(b'"ID"', out))


CASES = [
    ("anthropic", OPENAI, "/v1/messages", _chat_stream(True, False)),
    ("anthropic", OPENAI, "/v1/messages", _chat_stream(False, True)),
    ("openai", ANTHROPIC, "/v1/chat/completions", _anthropic_stream(True)),
    ("responses", OPENAI, "/v1/responses", _chat_stream(True, True)),
    ("responses", ANTHROPIC, "/v1/responses", _anthropic_stream(True)),
]


@pytest.mark.parametrize(("client", "dialect", "path", "upstream"), CASES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_byte_split_same_events(
    client: str, dialect: Any, path: str, upstream: bytes, data: Any
) -> None:
    whole = _translate(client, dialect, path, upstream, [])
    cuts = data.draw(st.lists(st.integers(0, len(upstream)), max_size=40))
    assert _translate(client, dialect, path, upstream, cuts) == whole
    one_by_one = list(range(len(upstream)))
    if data.draw(st.booleans()):
        assert _translate(client, dialect, path, upstream, one_by_one) == whole


def test_chat_stream_to_anthropic_events() -> None:
    out = _translate("anthropic", OPENAI, "/v1/messages", _chat_stream(True, False), [])
    events = [
        (m[0].decode(), orjson.loads(m[1]))
        for m in re.findall(rb"event: (\S+)\ndata: (.*)\n\n", out)
    ]
    names = [e[0] for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use", "tool_use"]
    assert [b["name"] for b in starts[1:]] == ["f0", "f1"]
    args: dict[int, str] = {}
    for n, d in events:
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta":
            args[d["index"]] = args.get(d["index"], "") + d["delta"]["partial_json"]
    assert {i: orjson.loads(a) for i, a in args.items()} == {1: {"a": 0}, 2: {"a": 1}}
    assert names.count("content_block_stop") == 3
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {"input_tokens": 11, "output_tokens": 7}


def test_anthropic_stream_to_chat_chunks() -> None:
    out = _translate("openai", ANTHROPIC, "/v1/chat/completions", _anthropic_stream(True), [])
    assert out.endswith(b"data: [DONE]\n\n")
    chunks = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "héllo wörld"
    calls = [
        t for c in chunks if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls[0]["id"] == "ID" and calls[0]["function"]["name"] == "f"
    assert orjson.loads("".join(t["function"]["arguments"] for t in calls)) == {"city": "Paris"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize(
    ("client", "dialect", "path", "upstream", "ending"),
    [
        ("anthropic", OPENAI, "/v1/messages", _chat_stream(False, False), b"event: error\n"),
        ("openai", ANTHROPIC, "/v1/chat/completions", _anthropic_stream(False), b'data: {"error"'),
        (
            "responses",
            OPENAI,
            "/v1/responses",
            _chat_stream(False, False),
            b"event: response.failed\n",
        ),
    ],
)
def test_cut_stream_ends_as_an_error(
    client: str, dialect: Any, path: str, upstream: bytes, ending: bytes
) -> None:
    adapter: Any = adapter_for(client, dialect, path)
    adapter.request(STREAM_REQUESTS[client])
    translator = adapter.stream()
    out = translator.feed(upstream[: len(upstream) // 2]) + translator.end()
    assert translator.failed
    assert ending in out
    assert b"[DONE]" not in out and b"message_stop" not in out and b"response.completed" not in out
    assert translator.abort == (client != "anthropic")  # OpenAI SDKs: no [DONE], a cut connection


def test_reasoning_becomes_thinking_only_when_asked() -> None:
    chat = {"choices": [{"message": {"content": "A", "reasoning_content": "hmm"}}]}
    assert [b["type"] for b in messages_chat.answer(chat, "m")["content"]] == ["text"]
    asked = messages_chat.answer(chat, "m", thinking=True)["content"]
    assert asked[0] == {"type": "thinking", "thinking": "hmm", "signature": ""}
    adapter: Any = adapter_for("anthropic", OPENAI, "/v1/messages")
    adapter.request(
        b'{"model":"m","max_tokens":99,"messages":[],"stream":true,'
        b'"thinking":{"type":"enabled","budget_tokens":50}}'
    )
    head = b'data: {"id":"c","choices":[{"index":0,"delta":'
    upstream = (
        head
        + b'{"reasoning_content":"let me see"}}]}\n\n'
        + head
        + b'{"content":"42"}}]}\n\n'
        + head
        + b'{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    translator = adapter.stream()
    out = translator.feed(upstream) + translator.end()
    starts = re.findall(rb'"content_block":\{"type":"(\w+)"', out)
    assert starts == [b"thinking", b"text"]
    assert b'"thinking_delta","thinking":"let me see"' in out


def test_max_tokens_field_per_provider() -> None:
    body = b'{"model":"m","max_tokens":99,"messages":[]}'
    for provider, field in (("openai", "max_completion_tokens"), ("groq", "max_tokens")):
        adapter: Any = adapter_for("anthropic", OPENAI, "/v1/messages", provider)
        assert orjson.loads(adapter.request(body))[field] == 99


def test_responses_tools_hosted_left_out_namespaces_flattened() -> None:
    shell = {"type": "function", "name": "exec_command", "parameters": {"type": "object"}}
    spawn = {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}
    tools = [
        shell,
        {"type": "web_search"},
        {"type": "namespace", "name": "agents", "tools": [spawn]},
    ]
    chat, echo = responses_chat.request({"model": "m", "input": "x", "tools": tools})
    assert [t["function"]["name"] for t in chat["tools"]] == ["exec_command", "spawn_agent"]
    answer = {
        "choices": [
            {
                "message": {
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "spawn_agent", "arguments": "{}"}},
                        {"id": "c2", "function": {"name": "exec_command", "arguments": "{}"}},
                    ]
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    first, second = responses_chat.answer(answer, echo)["output"]
    assert first["namespace"] == "agents" and "namespace" not in second


def test_mid_conversation_system_turn() -> None:
    chat = messages_chat.request(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "system", "content": [{"type": "text", "text": "note"}]},
            ],
        }
    )
    assert chat["messages"][1] == {"role": "system", "content": "note"}


def test_request_doc_leaves_the_parsed_body_alone() -> None:
    doc = {
        "model": "fast",
        "max_tokens": 5,
        "system": "s",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
    }
    before = orjson.dumps(doc)
    for target in ("llama3.1-8b", "llama-3.1-8b-instant"):
        adapter: Any = adapter_for("anthropic", OPENAI, "/v1/messages")
        assert orjson.loads(adapter.request_doc(doc, model=target))["model"] == target
        assert adapter.model == target
    assert orjson.dumps(doc) == before


@pytest.mark.parametrize("client", ["anthropic", "responses"])
def test_whole_calls_at_one_index_stay_apart(client: str) -> None:
    # some providers send each call whole, every one at index 0 (or with no index)
    head = b'data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":['
    upstream = b"".join(
        head + b'{"index":0,"id":"call_' + n + b'","type":"function","function":{"name":"f",'
        b'"arguments":"{\\"n\\":' + n + b'}"}}]}}]}\n\n'
        for n in (b"1", b"2")
    )
    upstream += (
        b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
    )
    adapter: Any = adapter_for(client, OPENAI, "/v1/messages")
    adapter.request(STREAM_REQUESTS[client])
    translator = adapter.stream()
    out = translator.feed(upstream) + translator.end()
    assert not translator.failed
    if client == "anthropic":
        assert out.count(b'"type":"tool_use"') == 2
        assert b'"partial_json":"{\\"n\\":2}"' in out
    else:
        done = [e for e in out.split(b"\n\n") if b"response.output_item.done" in e]
        assert len(done) == 2 and b'"call_id":"call_2"' in done[1]


def test_chat_reasoning_as_responses_reasoning_summary() -> None:
    head = b'data: {"id":"c","choices":[{"index":0,"delta":'
    upstream = (
        head
        + b'{"reasoning_content":"think "}}]}\n\n'
        + head
        + b'{"reasoning_content":"hard"}}]}\n\n'
        + head
        + b'{"content":"42"}}]}\n\n'
        + head
        + b'{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    adapter: Any = adapter_for("responses", OPENAI, "/v1/responses")
    adapter.request(STREAM_REQUESTS["responses"])
    translator = adapter.stream()
    out = translator.feed(upstream) + translator.end()
    events = [
        (m[0].decode(), orjson.loads(m[1]))
        for m in re.findall(rb"event: (\S+)\ndata: (.*)\n\n", out)
    ]
    names = [n for n, _ in events]
    assert names.count("response.reasoning_summary_text.delta") == 2
    final = events[-1][1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["summary"] == [{"type": "summary_text", "text": "think hard"}]
    assert [i["output_index"] for n, i in events if n == "response.output_item.done"] == [0, 1]


# ------------------------------------------------ whatever arrives: a 400, a 502 or an error event

_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "role",
                    "content",
                    "text",
                    "source",
                    "tool_calls",
                    "function",
                    "index",
                    "arguments",
                    "name",
                    "id",
                    "input",
                    "delta",
                    "choices",
                    "message",
                    "usage",
                    "content_block",
                    "partial_json",
                    "finish_reason",
                    "stop_reason",
                    "tools",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=15,
)
_PROVIDER = ProviderConfig(name="p", base_url="http://127.0.0.1:9")
# the roles of the messages a translated request sends: Chat's (False) or Anthropic's (True)
_ROLES_SENT = {False: ("system", "user", "assistant", "tool"), True: ("user", "assistant")}
_PAIRS = [
    ("anthropic", OPENAI),
    ("openai", ANTHROPIC),
    ("responses", OPENAI),
    ("responses", ANTHROPIC),
    ("anthropic-count", OPENAI),
]


@settings(max_examples=150, deadline=None)
@given(
    pair=st.sampled_from(_PAIRS),
    doc=st.dictionaries(
        st.sampled_from(["model", "messages", "system", "tools", "tool_choice", "input", "stop"]),
        _VALUE,
    ),
)
@example(pair=("anthropic", OPENAI), doc={"messages": 5})
@example(pair=("openai", ANTHROPIC), doc={"model": "m"})
@example(pair=("responses", ANTHROPIC), doc={"input": {"type": None}})
@example(pair=("anthropic-count", OPENAI), doc={"messages": {"role": "user"}})
def test_odd_requests_are_400s(pair: Any, doc: Any) -> None:
    """What the request path makes of any request body: the 400 `untranslatable` that names
    what cannot go, or a well-formed request for the upstream (never a 500). A body without
    its family's list of messages (a Responses `input`: a list or a text) is always a 400."""
    client, dialect = pair
    field, shapes = ("input", (list, str)) if client == "responses" else ("messages", (list,))
    adapter: Any = adapter_for(client, dialect, "")
    try:
        out = translate_request(adapter, orjson.dumps(doc), _PROVIDER)
    except GatewayError as exc:
        assert (exc.status, exc.code) == (400, "untranslatable")
        assert exc.message.startswith("cannot translate this request for provider 'p': ")
        return
    assert isinstance(doc.get(field), shapes), f"went upstream without a valid {field}: {doc}"
    if client == "anthropic-count":  # answered by keygate itself, nothing goes upstream
        assert out == b"" and orjson.loads(adapter.local)["input_tokens"] >= 0
        return
    sent = orjson.loads(out)
    roles = _ROLES_SENT[dialect is ANTHROPIC]
    assert isinstance(sent["messages"], list)
    assert all(isinstance(m, dict) and m.get("role") in roles for m in sent["messages"]), sent


# each client family's stream, ended: its last event when the answer completed or failed
_STREAM_ENDS = {
    "anthropic": (b"event: message_stop", b"event: error"),
    "openai": (b"data: [DONE]",),  # a failed one is cut short instead (`abort`)
    "responses": (
        b"event: response.completed",
        b"event: response.incomplete",
        b"event: response.failed",
    ),
}


@settings(max_examples=150, deadline=None)
@given(pair=st.sampled_from(_PAIRS[:4]), doc=_VALUE, events=st.lists(_VALUE, max_size=4))
def test_odd_upstream_answers_and_events(pair: Any, doc: Any, events: list[Any]) -> None:
    """Whatever the upstream answers: a whole answer in the client's family or a ValueError
    (the relay's 502); a stream that ends in the client's family, as an error if it must."""
    client = pair[0]
    adapter: Any = adapter_for(client, pair[1], "")
    adapter.request(STREAM_REQUESTS[client])
    try:
        answer = orjson.loads(adapter.answer(orjson.dumps(doc)))
    except ValueError:
        pass  # the relay answers 502
    else:
        if client == "anthropic":
            assert answer["type"] == "message" and isinstance(answer["content"], list)
        elif client == "openai":
            assert isinstance(answer["choices"], list) and answer["choices"]
        else:
            assert answer["object"] == "response" and isinstance(answer["output"], list)
    translator = adapter.stream()
    out = b"".join(
        translator.feed(b"event: x\ndata: " + orjson.dumps(event) + b"\n\n") for event in events
    )
    out += translator.end()  # never raises: the stream ends, as an error if it must
    assert translator.closed
    frames = [f for f in out.split(b"\n\n") if f]
    for frame in frames:  # every event well formed: (a name and) a JSON object
        *name, data = frame.split(b"\n")
        assert data.startswith(b"data: ") and len(name) == (client != "openai"), frame
        assert data == b"data: [DONE]" or isinstance(orjson.loads(data[6:]), dict), frame
    if client == "openai" and translator.failed:
        assert translator.abort and b"[DONE]" not in out, "a broken stream is cut, not ended"
    else:
        assert frames and frames[-1].startswith(_STREAM_ENDS[client]), frames[-1:]
        failed_end = frames[-1].startswith((b"event: error", b"event: response.failed"))
        assert translator.failed == failed_end


@pytest.mark.parametrize(
    ("client", "events"),
    [
        ("anthropic", [{"choices": [{"finish_reason": ["stop"]}]}]),
        ("responses", [{"choices": [{"finish_reason": {"why": "stop"}}]}]),
        ("responses", [{"choices": [{"finish_reason": "stop"}, {"delta": {"content": 1}}]}]),
    ],
    ids=["list-finish", "object-finish", "number-after-finish"],
)
def test_a_chat_stream_with_a_non_text_value_ends_as_an_error(
    client: str, events: list[Any]
) -> None:
    """A value `feed()` takes in is only used up by `end()`, which must end the client's
    stream as an error as `feed()` would (it let a TypeError out; found by
    test_odd_upstream_answers_and_events)."""
    adapter: Any = adapter_for(client, OPENAI, "")
    adapter.request(STREAM_REQUESTS[client])
    translator = adapter.stream()
    for event in events:
        translator.feed(b"data: " + orjson.dumps(event) + b"\n\n")
    translator.end()
    assert translator.closed and translator.failed
