"""Gemini's native answers: generateContent and streamGenerateContent."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from keygate.testing.mock_wire import _send, _split_text, _stream, _tokens


async def _gemini(
    request: web.BaseRequest,
    path: str,
    body: bytes,
    beh: dict[str, Any],
    state: dict[str, Any],
) -> web.StreamResponse:
    """Gemini's native generateContent, and streamGenerateContent as SSE (`alt=sse`) or as
    one JSON array, the two forms the Google SDKs and REST callers use."""
    model = path.rpartition("/models/")[2].partition(":")[0] or "mock-model"
    text: str = beh["text"]
    pt, ct = _tokens(len(body)), _tokens(len(text))

    def chunk(piece: str, last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": piece}], "role": "model"},
            "index": 0,
        }
        out: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
        if last:
            candidate["finishReason"] = "STOP"
            out["usageMetadata"] = {
                "promptTokenCount": pt,
                "candidatesTokenCount": ct,
                "totalTokenCount": pt + ct,
            }
        return out

    if path.endswith(":generateContent"):
        return await _send(request, beh["status"], orjson.dumps(chunk(text, True)), beh, state)
    pieces = _split_text(text, beh["chunks"])
    docs = [chunk(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)]
    if request.query.get("alt") != "sse":
        return await _send(request, beh["status"], orjson.dumps(docs), beh, state)
    events = [b"data: " + orjson.dumps(doc) + b"\r\n\r\n" for doc in docs]
    return await _stream(request, beh["status"], events, 0, beh, state)
