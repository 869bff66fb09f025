"""Which answer a request to the mock gets: the scripted status or body, else the answer of the
API family (OpenAI, Anthropic, Gemini) and endpoint its path asks for; each provider's answers
are in ``mock_openai``, ``mock_anthropic`` and ``mock_gemini``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from keygate.testing.mock_anthropic import (
    _anthropic_count,
    _anthropic_message,
    _anthropic_model,
    _anthropic_models,
    _anthropic_stream,
)
from keygate.testing.mock_cache import PromptCache
from keygate.testing.mock_gemini import _google_error, gemini_native, gemini_native_answer
from keygate.testing.mock_openai import (
    _MODELS_BODY,
    _embeddings,
    _openai_completion,
    _openai_stream,
)
from keygate.testing.mock_wire import (
    _error_after,
    _error_body,
    _extract_key,
    _models_body,
    _parse_json,
    _send,
    _stream,
    _stream_error,
    _tokens,
)


def _offered_call(beh: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`tool_on_offer`: a call of the first scripted tool the request offers, while the
    conversation does not yet end with a tool result."""
    messages = data.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    content = last.get("content")
    answered = last.get("role") == "tool" or (
        isinstance(content, list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    )
    offered = {
        (t.get("function") or t).get("name") for t in data.get("tools") or () if isinstance(t, dict)
    }
    if answered:
        return beh
    for name, args in beh["tool_on_offer"].items():
        if name in offered:
            return {**beh, "tool_calls": ((name, args),), "text": ""}
    return beh


async def respond(
    request: web.BaseRequest,
    path: str,
    body: bytes,
    beh: dict[str, Any],
    state: dict[str, Any],
    ids: Iterator[int],
    cache: PromptCache | None = None,
    key: str | None = None,
) -> web.StreamResponse:
    """The answer `beh` (the request's effective knobs) gives: a scripted body or error, else
    the answer of the API family and endpoint the path asks for. `cache`: the mock's prompt
    cache, which `key`'s chat and messages requests read (their usage says what it held)."""
    status: int = beh["status"]
    gemini = gemini_native(request, path)
    anthropic = not gemini and (
        path.endswith(("/messages", "/messages/count_tokens"))
        or "anthropic-version" in request.headers
    )
    if beh["echo_key"]:
        echo = _extract_key(request) or ""
        beh = {**beh, "echo": echo, "text": f"{beh['text']} (your key: {echo})"}
        beh["headers"] = {**(beh["headers"] or {}), "X-Echo-Key": f"Bearer {echo}"}
    if beh["body"] is not None:
        return await _send(request, status, beh["body"], beh, state)
    if not 200 <= status < 300:
        message = f"Incorrect API key provided: {beh['echo']}." if beh["echo_key"] else None
        err = _google_error(status, message) if gemini else _error_body(status, anthropic, message)
        return await _send(request, status, err, beh, state)

    method = request.method
    if gemini:
        answer = await gemini_native_answer(request, path, body, beh, state, ids)
        if answer is not None:
            return answer
    elif anthropic:
        answer = await _anthropic_extra(request, path, body, beh, state)
        if answer is not None:
            return answer
    if method == "POST" and (path.endswith("/chat/completions") or path.endswith("/messages")):
        data = _parse_json(body)
        if data is None:
            err = _error_body(400, anthropic, "mock upstream: request body is not a JSON object")
            return await _send(request, 400, err, beh, state)
        model = data.get("model")
        if not isinstance(model, str):
            model = "mock-model"
        stream = data.get("stream") is True
        cached = 0
        if cache is not None:
            cached = min(cache.lookup(key, data, path.endswith("/messages")), _tokens(len(body)))
            if not cached and cache.miss_delay_s:
                await asyncio.sleep(cache.miss_delay_s)  # a cold prefix: the first byte later
        if stream and beh["stream_error"]:
            events = [_stream_error(path.endswith("/messages"))]
            return await _stream(request, status, events, 1, beh, state)
        if beh["tool_on_offer"]:
            beh = _offered_call(beh, data)
        if path.endswith("/chat/completions"):
            if stream:
                opts = data.get("stream_options")
                usage = isinstance(opts, dict) and opts.get("include_usage") is True
                events = _openai_stream(ids, model, body, beh, usage, cached)
                events = _error_after(events, 1, beh["error_after_chunks"], False)
                return await _stream(request, status, events, 1, beh, state)
            out = _openai_completion(
                ids, model, body, beh["text"], beh["tool_calls"], beh["finish"], cached
            )
        else:
            if stream:
                events = _anthropic_stream(ids, model, body, beh, cached)
                events = _error_after(events, 3, beh["error_after_chunks"], True)
                return await _stream(request, status, events, 3, beh, state)
            out = _anthropic_message(
                ids, model, body, beh["text"], beh["tool_calls"], beh["finish"], cached
            )
        return await _send(request, status, out, beh, state)
    if method == "GET" and path.endswith("/models"):
        listed = _MODELS_BODY if beh["models"] is None else _models_body(beh["models"])
        return await _send(request, status, listed, beh, state)
    if method == "POST" and path.endswith("/embeddings"):
        data = _parse_json(body)
        if data is None:
            err = _error_body(400, False, "mock upstream: request body is not a JSON object")
            return await _send(request, 400, err, beh, state)
        return await _send(request, status, _embeddings(data, body), beh, state)
    echo = orjson.dumps(
        {
            "method": method,
            "path": path,
            "query": request.query_string,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_len": len(body),
        }
    )
    return await _send(request, status, echo, beh, state)


async def _anthropic_extra(
    request: web.BaseRequest,
    path: str,
    body: bytes,
    beh: dict[str, Any],
    state: dict[str, Any],
) -> web.StreamResponse | None:
    """Anthropic's count_tokens and model list in its own shapes (None: not one of them)."""
    method = request.method
    status: int = beh["status"]
    if method == "POST" and path.endswith("/messages/count_tokens"):
        if _parse_json(body) is None:
            err = _error_body(400, True, "mock upstream: request body is not a JSON object")
            return await _send(request, 400, err, beh, state)
        return await _send(request, status, _anthropic_count(body), beh, state)
    if method != "GET" or not path.startswith("/v1/models"):
        return None
    listed = ["mock-model"] if beh["models"] is None else beh["models"]
    if path in ("/v1/models", "/v1/models/"):
        page = _anthropic_models(listed, request.query)
        if page is None:
            err = _error_body(400, True, "limit: must be between 1 and 1000")
            return await _send(request, 400, err, beh, state)
        return await _send(request, status, page, beh, state)
    model = path[len("/v1/models/") :]
    if beh["models"] is not None and model not in listed:
        err = _error_body(404, True, f"model: {model}")
        return await _send(request, 404, err, beh, state)
    return await _send(request, status, orjson.dumps(_anthropic_model(model)), beh, state)
