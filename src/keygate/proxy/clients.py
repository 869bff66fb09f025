"""The request path's three calls for client keys (`proxy.handler`): who is asking, may this
client send this request now, and what it used. Nothing here touches the store; the limits
are the gateway's `client_limits` (`clients.fleet`: on Redis when the fleet shares one)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from keygate.clients.fleet import Reservation, has_limits
from keygate.clients.registry import Client
from keygate.control.quota import estimate_tokens
from keygate.proxy.auth import password_ok, presented_credential, refused
from keygate.proxy.errors import GatewayError, retry_after_headers

if TYPE_CHECKING:
    from keygate.gateway import Gateway
    from keygate.proxy.exchange import Exchange

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


def checked_model(found: str, path: str, body: bytes) -> str:
    """The model the upstream will act on, for a client whose models are restricted.

    `find_model`'s scan (`found`) is trusted when the body names `"model"` exactly once with
    no escapes: every ordinary request. Anything that could make the scan and the upstream's
    parser disagree (a nested or repeated `"model"`, a key spelt with backslash-u escapes, a
    value the scan gives up on) is parsed properly, once, and only then. Gemini's native paths
    carry the model in the path (`/v1beta/models/NAME:generateContent`)."""
    if body and (body.count(b'"model"') != 1 or b"\\u" in body or not found):
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and "model" in doc:
            value = doc["model"]
            return value if isinstance(value, str) else orjson.dumps(value).decode()
        if doc is not None:
            found = ""
    if not found and "/models/" in path:
        found = path.split("/models/", 1)[1].split(":", 1)[0].split("/", 1)[0]
    return found


async def admit(gw: Gateway, ex: Exchange, provider: str, path: str, body: bytes) -> None:
    """403 `model_not_allowed` or 429 `client_quota_exceeded` before anything goes upstream;
    otherwise the request is counted against the client's limits (`charge`)."""
    client: Client = ex.client
    model = ex.model if client.any_model else checked_model(ex.model, path, body)
    if not client.allows(provider, model):
        what = f"model '{model}' of provider '{provider}'" if model else f"provider '{provider}'"
        raise _not_allowed(what)
    await charge(gw, ex, body, gw.providers[provider].cfg.default_max_tokens)


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


async def charge(gw: Gateway, ex: Exchange, body: bytes, default_max_tokens: int) -> None:
    """Count the request against the client's limits, or a 429 `client_quota_exceeded` until
    the limit resets. Tokens are estimated as the per-key quotas do (`estimate_tokens`: prompt
    bytes / 4 + the completion allowed) and corrected by `account`."""
    if not has_limits(ex.client):
        return  # nothing to count against: no estimate, no window, no round trip
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
    """Usage counted in memory (flushed by sync.py); the token reservation settled."""
    client: Client = ex.client
    tokens_in, tokens_out = ex.usage
    client.usage.count(now, tokens_in, tokens_out, ex.status >= 400)
    if ex.reserved is not None:
        gw.client_limits.settle(client, ex.reserved, tokens_in + tokens_out)
