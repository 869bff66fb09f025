"""Did you mean: the model names closest to one a provider does not have, from what keygate
knows of the models (each provider's cached upstream list and config `models:`, the aliases
and groups), for an upstream's 404 and for a `strict_models` provider's own refusal.

Only an answer that is already a refusal gets here: a request that goes well pays nothing, and
no list is fetched for a suggestion (a strict provider's check fetches its own list).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from keygate.http.errors import GatewayError
from keygate.proxy.models import allowed_entries

if TYPE_CHECKING:
    from keygate.clients.registry import Client
    from keygate.runtime.gateway import Gateway
    from keygate.runtime.provider import ProviderRuntime

SUGGEST_MAX = 3
CUTOFF = 0.6  # difflib's similarity below which a name is no suggestion


def closest(name: str, names: Iterable[str], n: int = SUGGEST_MAX) -> list[str]:
    """Up to `n` of `names` closest to `name` (case aside), best first. A `provider/model` name
    is also compared by its model part, so `gtp-4o` finds `groq/gpt-4o` too; ties go to the
    closer whole name."""
    want = name.lower()
    want_tail = want.rpartition("/")[2]
    matcher = difflib.SequenceMatcher(autojunk=False)
    scored: list[tuple[float, float, int, str]] = []
    seen: set[str] = set()
    for candidate in names:
        low = candidate.lower()
        if low == want or candidate in seen:
            continue
        seen.add(candidate)
        matcher.set_seqs(want, low)
        whole = matcher.ratio() if matcher.real_quick_ratio() >= CUTOFF else 0.0
        tail = low.rpartition("/")[2]
        part = whole
        if tail != low or want_tail != want:
            matcher.set_seqs(want_tail, tail)
            if matcher.real_quick_ratio() >= CUTOFF:
                part = max(part, matcher.ratio())
        if part >= CUTOFF:
            scored.append((-part, -whole, len(scored), candidate))
    scored.sort()
    return [candidate for *_, candidate in scored[:n]]


def did_you_mean(names: list[str]) -> str:
    return f"did you mean: {', '.join(names)}?"


def known_names(
    gw: Gateway, rt: ProviderRuntime, unified: bool, client: Client | None
) -> list[str]:
    """The names a client could have meant: on the unified endpoint the merged list as it
    takes them (the default provider's plain, the others' as provider/model, the aliases),
    as far as the client's lists let it; on a provider's prefix, that provider's models."""
    lists = gw.model_lists
    if not unified:
        return lists.provider_models(rt)
    entries: list[dict[str, Any]]
    if client is not None and not (client.any_model and client.provider_set is None):
        entries = allowed_entries(gw, client)
    else:
        entries = lists.entries()
    return [item["id"] for item in entries]


def suggest(
    gw: Gateway, rt: ProviderRuntime, model: str, unified: bool, client: Client | None
) -> list[str]:
    """The closest names to `model`; none when `model` is one of them (the upstream's 404 is
    then about something else)."""
    if not model:
        return []
    names = known_names(gw, rt, unified, client)
    if model in names:
        return []
    return closest(model, names)


def with_suggestions(body: bytes, names: list[str]) -> bytes | None:
    """An upstream's error answer with "did you mean" added to its message (every family's
    error carries `error.message`); None when the body has no such message."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(error, dict) or not isinstance(message, str):
        return None
    error["message"] = f"{message.rstrip()} ({did_you_mean(names)})"
    return orjson.dumps(doc)


async def check_listed(
    gw: Gateway, rt: ProviderRuntime, model: str, unified: bool, client: Client | None
) -> None:
    """`strict_models`: a model the provider does not list is refused here, 404
    `model_not_found`, before anything is sent. A provider whose list cannot be had (no
    usable key, a failed fetch, nothing under its config `models:`) is not judged."""
    known = await gw.model_lists.known(rt)
    if known is None or model in known:
        return
    names = suggest(gw, rt, model, unified, client)
    hint = f"; {did_you_mean(names)}" if names else ""
    raise GatewayError(
        404,
        f"provider '{rt.cfg.name}' has no model '{model}'{hint}",
        "model_not_found",
    )
