"""Anthropic-shaped answers: messages, whole and as the event stream; count_tokens; the model
list (paged by `limit`, `after_id`, `before_id`) and one model."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import orjson

from keygate.testing.mock_wire import _split_text, _sse, _tokens


@lru_cache(maxsize=256)
def _anthropic_static(text: str, chunks: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """Cached Anthropic events that do not depend on the request: (before deltas+deltas, after)."""
    head = [
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _sse("ping", {"type": "ping"}),
    ]
    head += [
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in _split_text(text, chunks)
    ]
    tail = (
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_stop", {"type": "message_stop"}),
    )
    return tuple(head), tail


_CREATED_AT = "2025-01-01T00:00:00Z"


def _anthropic_model(model_id: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id.replace("-", " ").title(),
        "created_at": _CREATED_AT,
    }


def _anthropic_models(ids: list[str], query: Any) -> bytes | None:
    """`{"data", "has_more", "first_id", "last_id"}`: `limit` models (default 20, at most
    1000) after `after_id` or before `before_id` (None: a bad `limit`)."""
    try:
        limit = int(query.get("limit") or 20)
    except ValueError:
        return None
    if not 1 <= limit <= 1000:
        return None
    after, before = query.get("after_id"), query.get("before_id")
    if before in ids:
        end = ids.index(before)
        page = ids[max(0, end - limit) : end]
        more = end - limit > 0
    else:
        start = ids.index(after) + 1 if after in ids else 0
        page = ids[start : start + limit]
        more = start + limit < len(ids)
    return orjson.dumps(
        {
            "data": [_anthropic_model(m) for m in page],
            "has_more": more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
    )


def _anthropic_count(body: bytes) -> bytes:
    """count_tokens: the body's tokens, counted as every usage this mock reports."""
    return orjson.dumps({"input_tokens": _tokens(len(body))})


def _anthropic_message(
    ids: Iterator[int],
    model: str,
    body: bytes,
    text: str,
    tool_calls: Any = None,
    finish: str | None = None,
    cached: int = 0,
) -> bytes:
    content: list[dict[str, Any]] = (
        [{"type": "text", "text": text}] if text or not tool_calls else []
    )
    content += [
        {"type": "tool_use", "id": f"toolu_mock{i}", "name": name, "input": orjson.loads(args)}
        for i, (name, args) in enumerate(tool_calls or ())
    ]
    return orjson.dumps(
        {
            "id": f"msg_mock{next(ids)}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": finish or ("tool_use" if tool_calls else "end_turn"),
            "stop_sequence": None,
            "usage": _usage(_tokens(len(body)), _tokens(len(text)), cached),
        }
    )


def _usage(prompt: int, output: int, cached: int) -> dict[str, Any]:
    """Messages usage as Anthropic reports it: `input_tokens` is what was not read from the
    cache (`cache_read_input_tokens`)."""
    return {
        "input_tokens": max(1, prompt - cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output,
    }


def _anthropic_stream(
    ids: Iterator[int], model: str, body: bytes, beh: dict[str, Any], cached: int = 0
) -> list[bytes]:
    text: str = beh["text"]
    head, tail = _anthropic_static(text, beh["chunks"])
    start = _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": f"msg_mock{next(ids)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _usage(_tokens(len(body)), 1, cached),
            },
        },
    )
    calls = beh["tool_calls"]
    stop = beh["finish"] or ("tool_use" if calls else "end_turn")
    delta = _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": _tokens(len(text))},
        },
    )
    if not calls:
        return [start, *head, tail[0], delta, tail[1]]
    events = [start, *head, tail[0]] if text else [start]
    first = 1 if text else 0
    for i, (name, args) in enumerate(calls):
        index = first + i
        block = {"type": "tool_use", "id": f"toolu_mock{i}", "name": name, "input": {}}
        events.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        for piece in _split_text(args, max(1, beh["chunks"])):
            if piece:
                events.append(
                    _sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return [*events, delta, tail[1]]
