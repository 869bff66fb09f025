"""Anthropic-shaped answers: messages, whole and as the event stream."""

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


def _anthropic_message(ids: Iterator[int], model: str, body: bytes, text: str) -> bytes:
    return orjson.dumps(
        {
            "id": f"msg_mock{next(ids)}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": _tokens(len(body)), "output_tokens": _tokens(len(text))},
        }
    )


def _anthropic_stream(
    ids: Iterator[int], model: str, body: bytes, beh: dict[str, Any]
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
                "usage": {"input_tokens": _tokens(len(body)), "output_tokens": 1},
            },
        },
    )
    delta = _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": _tokens(len(text))},
        },
    )
    return [start, *head, tail[0], delta, tail[1]]
