"""OpenAI-shaped answers: chat completions (whole and streamed), models, embeddings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import orjson

from keygate.testing.mock_wire import _split_text, _tokens

_MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}],
    }
)
_DONE = b"data: [DONE]\n\n"


@lru_cache(maxsize=256)
def _openai_tails(text: str, chunks: int) -> tuple[bytes, tuple[bytes, ...], bytes]:
    """Cached `"choices":...}` tails of chat.completion.chunk events: role, contents, final."""
    role = (
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"logprobs":null,"finish_reason":null}]}\n\n'
    )
    contents = tuple(
        b'"choices":[{"index":0,"delta":{"content":'
        + orjson.dumps(piece)
        + b'},"logprobs":null,"finish_reason":null}]}\n\n'
        for piece in _split_text(text, chunks)
    )
    final = b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
    return role, contents, final


def _openai_calls(tool_calls: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"call_mock{i}", "type": "function", "function": {"name": name, "arguments": args}}
        for i, (name, args) in enumerate(tool_calls or ())
    ]


def _openai_completion(
    ids: Iterator[int],
    model: str,
    body: bytes,
    text: str,
    tool_calls: Any = None,
    finish: str | None = None,
    cached: int = 0,
) -> bytes:
    pt, ct = _tokens(len(body)), _tokens(len(text))
    usage = _usage(pt, ct, cached)
    if tool_calls:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text or None,
            "refusal": None,
            "tool_calls": _openai_calls(tool_calls),
        }
        return orjson.dumps(
            {
                "id": f"chatcmpl-mock{next(ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finish or "tool_calls",
                    }
                ],
                "usage": usage,
            }
        )
    if finish:
        doc = orjson.loads(_openai_completion(ids, model, body, text, cached=cached))
        doc["choices"][0]["finish_reason"] = finish
        return orjson.dumps(doc)
    return orjson.dumps(
        {
            "id": f"chatcmpl-mock{next(ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
            "system_fingerprint": None,
        }
    )


def _usage(pt: int, ct: int, cached: int) -> dict[str, Any]:
    """Chat usage as OpenAI reports it: `cached_tokens` of the prompt read from its cache."""
    return {
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "total_tokens": pt + ct,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
    }


def _openai_stream(
    ids: Iterator[int],
    model: str,
    body: bytes,
    beh: dict[str, Any],
    include_usage: bool,
    cached: int = 0,
) -> list[bytes]:
    text: str = beh["text"]
    role, contents, final = _openai_tails(text, beh["chunks"])
    head = b"".join(
        (
            b'data: {"id":"chatcmpl-mock',
            str(next(ids)).encode(),
            b'","object":"chat.completion.chunk","created":',
            str(int(time.time())).encode(),
            b',"model":',
            orjson.dumps(model),
            b',"system_fingerprint":null,',
        )
    )
    events = [head + role]
    if text or not beh["tool_calls"]:  # a call-only answer has no content deltas
        events += [head + c for c in contents]
    events += [head + c for c in _openai_tool_deltas(beh["tool_calls"], beh["chunks"])]
    if beh["finish"] or beh["tool_calls"]:
        reason = beh["finish"] or "tool_calls"
        final = final.replace(b'"finish_reason":"stop"', b'"finish_reason":' + orjson.dumps(reason))
    events.append(head + final)
    if include_usage:
        usage = _usage(_tokens(len(body)), _tokens(len(text)), cached)
        events.append(head + b'"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n")
    events.append(_DONE)
    return events


def _openai_tool_deltas(tool_calls: Any, chunks: int) -> list[bytes]:
    """`"choices":...}` tails: each call's id and name, then its arguments in `chunks` pieces."""
    out = []
    for i, call in enumerate(_openai_calls(tool_calls)):
        first = {
            "index": i,
            **call,
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        out.append(_delta_tail({"tool_calls": [first]}))
        for piece in _split_text(call["function"]["arguments"], max(1, chunks)):
            if piece:
                out.append(
                    _delta_tail({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                )
    return out


def _delta_tail(delta: dict[str, Any]) -> bytes:
    return (
        b'"choices":[{"index":0,"delta":'
        + orjson.dumps(delta)
        + b',"logprobs":null,"finish_reason":null}]}\n\n'
    )


def _embeddings(data: dict[str, Any], body: bytes) -> bytes:
    inp = data.get("input")
    n = len(inp) if isinstance(inp, list) and inp and not isinstance(inp[0], int) else 1
    model = data.get("model") if isinstance(data.get("model"), str) else "mock-model"
    pt = _tokens(len(body))
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2, 0.3]}
                for i in range(n)
            ],
            "model": model,
            "usage": {"prompt_tokens": pt, "total_tokens": pt},
        }
    )
