"""The mock's behaviour model: the knobs a test scripts, and what it records per request."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Knob names and their defaults; a behaviour is a partial dict of these.
_DEFAULTS: dict[str, Any] = {
    "status": 200,
    "body": None,
    "headers": None,
    "delay_s": 0.0,
    "hang": False,
    "chunks": 3,
    "chunk_interval_s": 0.0,
    "reset_after_chunks": None,
    "content_encoding": None,
    "text": "Hello from mock",
    # like real providers: the key it was sent comes back in error messages, in an
    # `x-echo-key` header, in 2xx text, and in a stream event split across two writes
    "echo_key": False,
    # a 200 stream whose first event is an error (as some providers report quota or overload)
    "stream_error": False,
    # the model ids GET .../models answers (None: the one `mock-model`)
    "models": None,
    # tool calls the model "makes": [{"name": ..., "arguments": {...} or "json text"}], whole
    # and streamed (the arguments split over `chunks` deltas); the answer's finish/stop reason
    # (OpenAI finish_reason or Anthropic stop_reason, verbatim; None: the natural one); an
    # error event in the family's shape after this many content chunks, then the stream ends
    "tool_calls": None,
    # {tool name: arguments}: call the first of these the request offers, unless the
    # conversation already ends with a tool result (an agent's round trip: call, then text)
    "tool_on_offer": None,
    "finish": None,
    "error_after_chunks": None,
}


@dataclass
class Recorded:
    """One request as the mock saw it; mutated in place until the response ends."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    key: str | None
    started: float
    ended: float | None = None
    completed: bool = False
    disconnected: bool = False
    status: int = 0  # 0 until a status line was decided (stays 0 for hang)
    raw_path: str = ""  # the path as it came on the request line, still percent-encoded

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (body decoded leniently) for the control endpoint."""
        d = dataclasses.asdict(self)
        d["body"] = self.body.decode("utf-8", errors="replace")
        return d


def _to_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


def _tool_calls(value: Any) -> tuple[tuple[str, str], ...] | None:
    """[(name, arguments as JSON text)], hashable so the answers can be cached."""
    if value is None:
        return None
    out = []
    for call in value:
        args = call.get("arguments", {})
        out.append(
            (str(call["name"]), args if isinstance(args, str) else orjson.dumps(args).decode())
        )
    return tuple(out)


def _normalize_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Validate knob names/values early so a typo fails in the test, not silently."""
    out: dict[str, Any] = {}
    for name, value in knobs.items():
        if name not in _DEFAULTS:
            raise TypeError(f"unknown mock knob {name!r}; known: {sorted(_DEFAULTS)}")
        if name == "body":
            value = None if value is None else _to_bytes(value)
        elif name == "headers":
            value = {str(k): str(v) for k, v in (value or {}).items()}
        elif name == "content_encoding":
            if value not in (None, "gzip"):
                raise ValueError("content_encoding must be 'gzip' or None")
        elif name in ("status", "chunks"):
            value = int(value)
            if value < 0 or (name == "status" and not 100 <= value <= 999):
                raise ValueError(f"bad {name}: {value}")
        elif name in ("reset_after_chunks", "error_after_chunks"):
            value = None if value is None else max(0, int(value))
        elif name == "tool_calls":
            value = _tool_calls(value)
        elif name == "tool_on_offer":
            value = (
                None
                if value is None
                else dict(
                    _tool_calls([{"name": k, "arguments": v} for k, v in value.items()]) or ()
                )
            )
        elif name == "finish":
            value = None if value is None else str(value)
        elif name in ("delay_s", "chunk_interval_s"):
            value = max(0.0, float(value))
        elif name == "models":
            value = None if value is None else [str(m) for m in value]
        elif name in ("hang", "echo_key", "stream_error"):
            value = bool(value)
        elif name == "text":
            value = str(value)
        out[name] = value
    return out
