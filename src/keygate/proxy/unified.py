"""The unified endpoint's route step: which targets a `/v1/...` request's model stands for, in
which order, and the body each is sent (`routing` holds the table).

Nothing here runs for a model that routes nowhere (a plain name: the default provider, the body
as it came). For one that does, the body is parsed once, to verify the cheap guess of its model
and to rewrite the model for each target actually tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from keygate.dialects import Dialect
from keygate.dialects.anthropic import ANTHROPIC
from keygate.dialects.openai import OPENAI
from keygate.proxy.errors import GatewayError
from keygate.proxy.route import find_model
from keygate.routing import ROUTED_PATHS, Route, Target
from keygate.translate import Adapter, adapter_for, client_family

if TYPE_CHECKING:
    from keygate.gateway import Gateway
    from keygate.runtime import ProviderRuntime


@dataclass(slots=True)
class Failure:
    """Why one provider could not answer: what `_give_up` answers with, unless the chain moves
    on. `last` is the last upstream refusal (status, raw headers, body, injected key),
    `last_error` keygate's own error; `wait` is how long until a key is usable (None: never by
    itself); `retryable`: another target may do better (not a 400, say)."""

    rt: ProviderRuntime
    last: tuple[int, Any, bytes, bytes] | None
    last_error: GatewayError | None
    wait: float | None
    retryable: bool
    quota: bool = False  # no key's quota can cover the request (`wait`: the earliest reset)

    def reason(self) -> str:
        """A few words for the route shown in recent requests and the access log."""
        if self.last is not None:
            return str(self.last[0])
        if self.last_error is not None:
            return self.last_error.code or str(self.last_error.status)
        if self.wait is None:
            return "no usable key"
        return "quota spent" if self.quota else "keys cooling"


class Plan:
    """A routed request: its route, the client's body, and that body parsed (once)."""

    __slots__ = ("body", "doc", "model", "path", "route")

    def __init__(self, route: Route, path: str, body: bytes, doc: dict[str, Any], model: str):
        self.route = route
        self.path = path
        self.body = body
        self.doc = doc
        self.model = model

    def body_for(self, target: Target, forced: str) -> bytes:
        """The body for `target`: the client's bytes when its model stays, else re-encoded
        with the model changed. `forced`: the provider's forced default model, if any."""
        model = forced or target.model
        if model == self.model:
            return self.body
        return orjson.dumps({**self.doc, "model": model})

    def client_dialect(self) -> Dialect:
        """The family whose shape the client reads keygate's own errors in."""
        family = client_family(self.path)
        return ANTHROPIC if family is not None and family.startswith("anthropic") else OPENAI

    def budget(self, targets: int, rts: list[ProviderRuntime]) -> int:
        """One retry budget for the whole chain: enough to reach every target, and at least
        what the most patient provider would allow on its own."""
        return max(targets - 1, max((rt.cfg.retries for rt in rts), default=0))

    async def order(self, gw: Gateway) -> list[tuple[ProviderRuntime, Target, Adapter | None]]:
        """The targets to try, in order: as written (fallback), or the freest provider first
        (spread); each with the adapter that translates for it when it speaks another API
        family than the client (None: the body passes as it is)."""
        tries = []
        for target in self.route.targets:
            rt = gw.providers.get(target.provider)
            if rt is None:
                continue  # removed since the table was built (a reload)
            tries.append((rt, target, adapter_for(None, rt.dialect, self.path, rt.cfg.name)))
        if not tries:
            names = ", ".join(str(t) for t in self.route.targets)
            raise GatewayError(
                503, f"model '{self.model}' routes to {names}: no such provider", "no_route"
            )
        if self.route.strategy == "spread" and len(tries) > 1:
            scores = [await rt.admission.capacity() for rt, _, _ in tries]
            usable = [rt.pool.usable_now() for rt, _, _ in tries]
            ranked = sorted(
                range(len(tries)), key=lambda i: (usable[i], scores[i].score()), reverse=True
            )
            tries = [tries[i] for i in ranked]
        return tries


def plan_route(gw: Gateway, path: str, body: bytes) -> Plan | None:
    """The plan for a unified-endpoint request whose model routes somewhere; None leaves the
    request to the default provider, its body untouched."""
    if path not in ROUTED_PATHS:
        return None
    model = find_model(body)
    if not model:
        return None
    route = gw.models.resolve(model)
    if route is None and body.find(b'"model"', body.find(b'"model"') + 7) < 0:
        return None  # one "model" in the body, naming nothing routed: the usual case
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # not ours to judge: the default provider answers a malformed body
    real = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(real, str):
        return None
    if real != model:  # the guess found a nested "model": route by the real one
        model, route = real, gw.models.resolve(real)
    if route is None:
        return None
    return Plan(route, path, body, doc, model)
