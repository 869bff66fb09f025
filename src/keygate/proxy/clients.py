"""The request path's three calls for client keys (`proxy.handler`): who is asking, may this
client send this request now, and what it used. Nothing here touches the store; the limits
are the gateway's `client_limits` (`clients.fleet`: on Redis when the fleet shares one)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from keygate.clients.fleet import Reservation, has_limits
from keygate.clients.registry import Client
from keygate.control.quota import estimate_parsed, estimate_tokens
from keygate.http.errors import GatewayError, retry_after_headers
from keygate.proxy.auth import password_ok, presented_credential, refused

if TYPE_CHECKING:
    from keygate.proxy.exchange import Exchange
    from keygate.runtime.gateway import Gateway

T = TypeVar("T", bound=tuple[Any, ...])


def authenticate(gw: Gateway, scope: dict[str, Any], query_key: bytes | None) -> Client | None:
    """The client whose key was presented; None for the master password (unrestricted) or an
    open proxy (no password and no client keys). Anything else is a 401 (or the throttle's
    429). The passwords are compared first, in constant time; a client key is then found by
    its hash (a timing difference there tells nothing about the key, only about its hash)."""
    clients = gw.clients
    if not gw.passwords and not clients:
        return None
    credential = presented_credential(scope["headers"], query_key)
    if gw.passwords and password_ok(credential, gw.passwords):
        return None
    client = clients.find(credential) if credential and clients else None
    if client is None:
        raise refused(gw, scope, query_key)
    why = client.refusal(time.time())
    if why:
        raise GatewayError(401, why, "invalid_api_key", retry=False)
    return client


def read_strictly(body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> dict[str, Any] | None:
    """The JSON body as every upstream parser reads it, for a client whose lists or token
    limits depend on it; None for no body, or one that is not JSON (an audio upload).

    A body that only a lenient parser takes (a lone surrogate, `NaN`, a number past a double)
    or that names its model twice could be read one way here and another way upstream (some
    parsers keep the first key, most the last): it is refused with a 400 instead."""
    if not body or not _looks_json(body, headers):
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        return None
    # a second model key, plain or spelt with escapes (`"mod\u0065l"`)
    if (body.count(b'"model"') > 1 or b"\\u" in body) and _models_named(body) > 1:
        raise GatewayError(400, "request body names more than one model", "invalid_request")
    return doc


def read_request(
    client: Client, body: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> dict[str, Any] | None:
    """`read_strictly` for `client`: a body whose model cannot be read (a form, an upload, JSON
    in another encoding, a top-level array) is refused when the client's models are listed."""
    doc = read_strictly(body, headers)
    if doc is None and body and not client.any_model:
        raise _not_allowed("a request body that is not a JSON object")
    return doc


def _looks_json(body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type" and b"json" in value.lower():
            return True
    return body.lstrip()[:1] in (b"{", b"[")


def _models_named(body: bytes) -> int:
    """How many different models the top-level object names (orjson keeps only the last
    `model` key; another parser may keep the first)."""
    named: list[set[bytes]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        # objects close inner first: the top level's is the last call
        named.append({orjson.dumps(value) for key, value in items if key == "model"})
        return dict(items)

    json.loads(body, object_pairs_hook=pairs)
    return len(named[-1]) if named else 0


def model_of(doc: dict[str, Any] | None) -> str:
    """The model a parsed body names ('' for none); a value that is not a string is named
    as its JSON, which no list allows."""
    value = doc.get("model") if doc is not None else None
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def ask_for_usage(body: bytes, doc: dict[str, Any], path: str) -> bytes:
    """An OpenAI-style stream reports its usage only when asked: for a client with token
    limits it is asked (`stream_options.include_usage`), so the stream is counted at what it
    used. `doc` is updated to match the body."""
    if doc.get("stream") is not True or not path.endswith(_USAGE_PATHS):
        return body
    opts = doc.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return body
    if opts is None:  # the one field put in front, every other byte kept
        doc["stream_options"] = {"include_usage": True}
        at = body.index(b"{") + 1
        return body[:at] + b'"stream_options":{"include_usage":true},' + body[at:]
    doc["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return orjson.dumps(doc)


_USAGE_PATHS = ("/chat/completions", "/completions")


async def admit(
    gw: Gateway,
    ex: Exchange,
    provider: str,
    path: str,
    body: bytes,
    doc: dict[str, Any] | None,
    headers: Sequence[tuple[bytes, bytes]],
) -> tuple[str, bytes]:
    """403 `model_not_allowed` or 429 `client_quota_exceeded` before anything goes upstream;
    otherwise the request is counted against the client's limits (`charge`). Answers the
    path and body to send: for a client whose lists or limits read the request, the model
    checked is the one the upstream will act on (`read_strictly`; a Gemini native path's
    own model, the path sent as it was read), and a stream is asked for its usage."""
    client: Client = ex.client
    cfg = gw.providers[provider].cfg
    if not client.checks_body:
        await charge(gw, ex, body, cfg.default_max_tokens)
        return path, body
    assert ex.wire is not None
    try:
        named = ex.wire.path_model(path)
    except ValueError:
        what = f"a model named unreadably in the path of provider '{provider}'"
        raise _not_allowed(what) from None
    if named is not None and named[1]:
        path, model = named
        ex.model = model
        doc = None
    else:
        if named is not None:  # a path that names no model: the body may (or nothing does)
            path = named[0]
        if doc is None:
            doc = read_request(client, body, headers)
        model = model_of(doc)
    if not client.allows(provider, model):
        what = f"model '{model}' of provider '{provider}'" if model else f"provider '{provider}'"
        raise _not_allowed(what)
    if client.token_limited and doc is not None:
        body = ask_for_usage(body, doc, path)
    await charge(gw, ex, body, cfg.default_max_tokens, doc)
    return path, body


def allowed_targets(client: Client, name: str, tries: list[T]) -> list[T]:
    """A routed request's targets (`(runtime, target, …)` tuples) this client may use: every
    one when it may use the alias or group `name` itself, else those its lists allow; a 403
    when none is left."""
    if client.any_model and client.provider_set is None:
        return tries
    named = name in client.model_names
    kept = [
        t
        for t in tries
        if (named and client.provider_allowed(t[1].provider))
        or client.allows(t[1].provider, t[1].model)
    ]
    if not kept:
        raise _not_allowed(f"model '{name}'")
    return kept


async def charge(
    gw: Gateway,
    ex: Exchange,
    body: bytes,
    default_max_tokens: int,
    doc: dict[str, Any] | None = None,
) -> None:
    """Count the request against the client's limits, or a 429 `client_quota_exceeded` until
    the limit resets. Tokens are estimated as the per-key quotas do (prompt bytes / 4 + the
    completion allowed, read from `doc`, the parsed body, when there is one) and corrected
    by `account`."""
    if not has_limits(ex.client):
        return  # nothing to count against: no estimate, no window, no round trip
    if doc is not None:
        estimate = estimate_parsed(doc, len(body), default_max_tokens)
    else:
        estimate = estimate_tokens(body, default_max_tokens) if body else 0
    decision = await gw.client_limits.check(ex.client, estimate)
    if not isinstance(decision, Reservation):
        limit, wait = decision
        raise GatewayError(
            429,
            f"client key over its {limit} limit; it resets in {math.ceil(wait)}s",
            "client_quota_exceeded",
            retry_after_headers(wait),
            retry=False,  # the SDK's own retries would only hit the same limit
        )
    ex.reserved = decision


def _not_allowed(what: str) -> GatewayError:
    return GatewayError(
        403, f"{what} is not allowed for this client key", "model_not_allowed", retry=False
    )


def account(gw: Gateway, ex: Exchange, now: float) -> None:
    """Usage counted in memory (flushed by sync.py); the token reservation settled. An answer
    that reported no usage is counted at its estimate, which stays reserved."""
    client: Client = ex.client
    tokens_in, tokens_out = ex.usage
    if not (tokens_in or tokens_out) and ex.reserved is not None and ex.status < 400:
        tokens_in = ex.reserved.tokens  # the estimate, not split into prompt and answer
    client.usage.count(now, tokens_in, tokens_out, ex.status >= 400)
    if ex.reserved is not None:
        gw.client_limits.settle(client, ex.reserved, tokens_in + tokens_out)
