"""Gemini's native answers, in the shapes of Google's API: generateContent and
streamGenerateContent (with `usageMetadata`, repeated with running totals in every streamed
chunk), countTokens, embedContent, batchEmbedContents, the model list and one model, and
Google's error shape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from keygate.testing.mock_wire import _parse_json, _send, _split_text, _stream, _tokens

# `/v1beta/models`, `/v1/models/gemini-2.0-flash:generateContent`, `/v1alpha/models/x`
_VERSION_RE = re.compile(r"^/(v\d+(?:alpha|beta)?\d*)/")
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_PAGE_SIZE = 50  # the API's default page of models (at most 1000)
_EMBEDDING = (0.0, 0.1, 0.2, 0.3)  # the values every embedding starts with (as the OpenAI mock)


def gemini_native(request: web.BaseRequest, path: str) -> bool:
    """Whether a request speaks Gemini's own API rather than its OpenAI-compatible one: a
    method call (`models/m:action`), anything under models in a beta or alpha version, and
    `/v1/models…` asked for with a Google key (OpenAI's `/v1/models` carries a bearer)."""
    version = _VERSION_RE.match(path)
    if version is None:
        return False
    rest = path[version.end() :]
    if not (rest == "models" or rest.startswith("models/")):
        return False
    if ":" in rest.rpartition("/")[2] or version.group(1) != "v1":
        return True
    headers = request.headers
    if "x-goog-api-key" in headers:
        return True
    return "Authorization" not in headers and "key" in request.query


def _google_error(status: int, message: str | None = None) -> bytes:
    """`{"error": {"code", "message", "status"}}`, as Google's APIs answer."""
    return orjson.dumps(
        {
            "error": {
                "code": status,
                "message": message or f"mock upstream error (HTTP {status})",
                "status": _GOOGLE_STATUS.get(status)
                or ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
            }
        }
    )


def _usage(prompt: int, candidates: int) -> dict[str, Any]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }


async def _gemini(
    request: web.BaseRequest,
    path: str,
    body: bytes,
    beh: dict[str, Any],
    state: dict[str, Any],
    ids: Iterator[int],
) -> web.StreamResponse:
    """Gemini's native generateContent, and streamGenerateContent as SSE (`alt=sse`) or as
    one JSON array, the two forms the Google SDKs and REST callers use. Every streamed chunk
    carries `usageMetadata` with the totals so far (the API repeats it, it does not add up)."""
    model = path.rpartition("/models/")[2].partition(":")[0] or "mock-model"
    text: str = beh["text"]
    pt = _tokens(len(body))
    response_id = f"mock-response-{next(ids)}"

    def chunk(piece: str, so_far: int, last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": piece}], "role": "model"},
            "index": 0,
        }
        if last:
            candidate["finishReason"] = "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": _usage(pt, _tokens(so_far)),
            "modelVersion": model,
            "responseId": response_id,
        }

    if path.endswith(":generateContent"):
        doc = chunk(text, len(text), True)
        return await _send(request, beh["status"], orjson.dumps(doc), beh, state)
    pieces = _split_text(text, beh["chunks"])
    docs, so_far = [], 0
    for i, piece in enumerate(pieces):
        so_far += len(piece)
        docs.append(chunk(piece, so_far, i == len(pieces) - 1))
    if request.query.get("alt") != "sse":
        return await _send(request, beh["status"], orjson.dumps(docs), beh, state)
    events = [b"data: " + orjson.dumps(doc) + b"\r\n\r\n" for doc in docs]
    return await _stream(request, beh["status"], events, 0, beh, state)


def _model(model_id: str) -> dict[str, Any]:
    """One entry of the model list, with the fields Google's API gives every model."""
    embedding = "embedding" in model_id
    out: dict[str, Any] = {
        "name": f"models/{model_id}",
        "version": "001",
        "displayName": model_id.replace("-", " ").title(),
        "description": f"Mock upstream model {model_id}",
        "inputTokenLimit": 2048 if embedding else 1_048_576,
        "outputTokenLimit": 1 if embedding else 8192,
        "supportedGenerationMethods": (
            ["embedContent", "countTextTokens", "countTokens"]
            if embedding
            else ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]
        ),
    }
    if not embedding:
        out.update({"temperature": 1.0, "topP": 0.95, "topK": 64, "maxTemperature": 2.0})
    return out


def _models_page(ids: list[str], query: Any) -> bytes | None:
    """`{"models": [...], "nextPageToken"?}`: `pageSize` models from `pageToken` on (None: a
    token this mock did not hand out)."""
    try:
        size = int(query.get("pageSize") or _PAGE_SIZE)
    except ValueError:
        return None
    size = min(max(size, 1), 1000) if size > 0 else _PAGE_SIZE
    token = query.get("pageToken") or ""
    if token and not (token.startswith("mock-page-") and token[10:].isdigit()):
        return None
    start = int(token[10:]) if token else 0
    doc: dict[str, Any] = {"models": [_model(m) for m in ids[start : start + size]]}
    if start + size < len(ids):
        doc["nextPageToken"] = f"mock-page-{start + size}"
    return orjson.dumps(doc)


def _values(dimensions: Any) -> list[float]:
    n = dimensions if isinstance(dimensions, int) and 0 < dimensions <= 3072 else len(_EMBEDDING)
    return [_EMBEDDING[i % len(_EMBEDDING)] for i in range(n)]


async def gemini_native_answer(
    request: web.BaseRequest,
    path: str,
    body: bytes,
    beh: dict[str, Any],
    state: dict[str, Any],
    ids: Iterator[int],
) -> web.StreamResponse | None:
    """The answer to a native Gemini request (None: no such method here, the caller echoes).
    The model list is the `models` knob's (default: `mock-model`); getting a model outside a
    scripted list is NOT_FOUND, as it would be upstream (methods answer for any model, as the
    other families' do)."""
    status: int = beh["status"]
    method = request.method
    rest = path[path.index("/models") + 1 :]  # `models`, `models/m`, `models/m:action`
    name, _, action = rest.partition("/")[2].partition(":")
    listed = ["mock-model"] if beh["models"] is None else beh["models"]
    if method == "GET" and rest == "models":
        page = _models_page(listed, request.query)
        if page is None:
            return await _send(
                request, 400, _google_error(400, "Invalid page token or size."), beh, state
            )
        return await _send(request, status, page, beh, state)
    if method == "GET" and name and not action:
        if beh["models"] is not None and name not in listed:
            version = path.split("/")[1]
            message = f"models/{name} is not found for API version {version}"
            return await _send(request, 404, _google_error(404, message), beh, state)
        return await _send(request, status, orjson.dumps(_model(name)), beh, state)
    if method != "POST" or action not in (
        "generateContent",
        "streamGenerateContent",
        "countTokens",
        "embedContent",
        "batchEmbedContents",
    ):
        return None
    if action in ("generateContent", "streamGenerateContent"):
        return await _gemini(request, path, body, beh, state, ids)
    data = _parse_json(body)
    if data is None:
        err = _google_error(400, "mock upstream: request body is not a JSON object")
        return await _send(request, 400, err, beh, state)
    if action == "countTokens":
        n = _tokens(len(body))
        out: dict[str, Any] = {
            "totalTokens": n,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}],
        }
    elif action == "embedContent":
        out = {"embedding": {"values": _values(data.get("outputDimensionality"))}}
    else:
        requests = data.get("requests")
        if not isinstance(requests, list) or not requests:
            err = _google_error(400, "* BatchEmbedContentsRequest.requests: must not be empty")
            return await _send(request, 400, err, beh, state)
        out = {
            "embeddings": [
                {"values": _values(r.get("outputDimensionality") if isinstance(r, dict) else None)}
                for r in requests
            ]
        }
    return await _send(request, status, orjson.dumps(out), beh, state)
