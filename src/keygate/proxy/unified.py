"""The unified endpoint's route step: which targets a `/v1/...` request's model stands for, in
which order, and the body each is sent (`routing` holds the table).

Nothing here runs for a model that routes nowhere (a plain name: the default provider, the body
as it came). For one that does, the body is parsed once, to verify the cheap guess of its model
and to rewrite the model for each target actually tried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from keygate.config.routing import ROUTED_PATHS, TARGETS_MAX, Route, Target
from keygate.control.quota import Ticket
from keygate.dialects import Dialect
from keygate.dialects.anthropic import ANTHROPIC
from keygate.dialects.openai import OPENAI
from keygate.http.errors import GatewayError
from keygate.proxy import clients
from keygate.proxy.affinity import conversation
from keygate.proxy.attempt import Outgoing
from keygate.proxy.route import MODEL_VALUE
from keygate.proxy.suggest import check_listed, did_you_mean, suggest
from keygate.proxy.translated import translate_doc
from keygate.translate import Adapter, adapter_for, client_family

if TYPE_CHECKING:
    from keygate.proxy.exchange import Exchange
    from keygate.runtime.gateway import Gateway
    from keygate.runtime.provider import ProviderRuntime

    # a target with its provider and adapter (no target: the prefix route's one provider)
    Try = tuple[ProviderRuntime, Target | None, Adapter | None]


def _client_dialect(path: str) -> Dialect:
    family = client_family(path)
    return ANTHROPIC if family is not None and family.startswith("anthropic") else OPENAI


_CLIENT_DIALECTS = {path: _client_dialect(path) for path in ROUTED_PATHS}


class Plan:
    """A routed request: its route, the client's body, and that body parsed (once, when a
    target needs it or the model's place in it was not certain)."""

    __slots__ = ("_doc", "body", "headers", "legs", "model", "path", "qs", "route", "span")

    def __init__(
        self,
        route: Route,
        path: str,
        body: bytes,
        doc: dict[str, Any] | None,
        model: str,
        span: tuple[int, int] | None = None,
    ) -> None:
        self.route = route
        self.path = path
        self.body = body
        self._doc = doc
        self.model = model
        self.span = span  # where the model's name lies in `body` (inside its quotes), if certain
        self.headers: list[tuple[bytes, bytes]] = []  # the client's, for every target
        self.qs = ""  # the client's query string, for a target of its own family
        self.legs: list[Try] = []  # the targets to try, once `resolve` chose them

    @property
    def parsed(self) -> dict[str, Any] | None:
        """The body parsed, if it was (a client whose lists or limits read it)."""
        return self._doc

    @property
    def doc(self) -> dict[str, Any]:
        """The body parsed, for a target of another API family (its translation)."""
        if self._doc is None:
            try:
                doc = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                doc = None
            if not isinstance(doc, dict):
                raise GatewayError(
                    400,
                    "cannot translate this request: body must be a JSON object",
                    "untranslatable",
                )
            self._doc = doc
        return self._doc

    def _parse(self) -> dict[str, Any] | None:
        """The body parsed, as `doc` (kept for every target), or None if it cannot be."""
        try:
            return self.doc
        except GatewayError:
            return None

    def body_for(self, target: Target, forced: str) -> bytes:
        """The body for `target`: the client's bytes when its model stays, else the same
        bytes with only the model's string replaced (re-encoded from the parsed body when
        where it lies is not certain). `forced`: the provider's forced default model."""
        model = forced or target.model
        if model == self.model:
            return self.body
        if self.span is not None:
            start, end = self.span
            return self.body[: start - 1] + orjson.dumps(model) + self.body[end + 1 :]
        return orjson.dumps({**self.doc, "model": model})

    @property
    def client_dialect(self) -> Dialect:
        """The family whose shape the client reads keygate's own errors in."""
        return _CLIENT_DIALECTS.get(self.path, OPENAI)

    @staticmethod
    def budget(tries: list[Try]) -> int:
        """One retry budget for the whole chain: enough to reach every target, and at least
        what the most patient provider would allow on its own; never more than TARGETS_MAX
        tries in all, however the chain came to be."""
        wanted = max(len(tries) - 1, max((rt.cfg.retries for rt, _, _ in tries), default=0))
        return min(wanted, TARGETS_MAX - 1)

    def order(self, gw: Gateway) -> list[Try]:
        """The targets to try, as written; each with the adapter that translates for it when
        it speaks another API family than the client (None: the body passes as it is). A
        `spread` route is then ranked by `spread`."""
        tries: list[Try] = []
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
        return tries

    async def resolve(self, gw: Gateway, ex: Exchange) -> None:
        """The targets to try, in order (`spread`: the freest first), those the client may
        use; the client's limits charged here (403/429 before anything goes upstream)."""
        ex.wire = self.client_dialect  # until a target is tried: errors in the client's shape
        tries = self.order(gw)
        for rt, _, _ in tries:
            if rt.cfg.strict_models:  # a strict provider's target must name a listed model
                tries = await self.listed(gw, ex, tries)
                break
        if self.route.strategy == "spread" and len(tries) > 1:
            tries = await self.spread(tries)
        if ex.client is not None:
            tries = clients.allowed_targets(ex.client, self.model, tries)
            cfg = tries[0][0].cfg
            await clients.charge(gw, ex, self.body, cfg.default_max_tokens, self._doc)
        self.legs = tries

    def prepare(self, leg: Try, ex: Exchange) -> Outgoing | None:
        """The exchange set up for `leg` and what it is sent: the client's body with only the
        model changed, or (another API family) the parsed body translated; None when the
        adapter answers itself (count_tokens)."""
        rt, target, adapter = leg
        assert target is not None
        cfg = rt.cfg
        ex.runtime = rt
        ex.adapter = adapter
        ex.model = cfg.default_model if cfg.force_model and cfg.default_model else target.model
        if adapter is None:
            up_path, ex.wire = rt.dialect.route(self.path, self.headers)
            body = self.body_for(target, ex.model if cfg.force_model else "")
            url = cfg.base_url + up_path + self.qs
        else:
            ex.wire = adapter.wire
            body = translate_doc(adapter, self.doc, cfg, ex.model)
            url = cfg.base_url + adapter.path
        off = cfg.affinity == "off"
        ex.serve(cfg.name, ex.model, off)
        if adapter is not None and adapter.local is not None:
            return None
        # the conversation's name for this target (its provider and model are in it), from
        # the body parsed once for every target
        ex.conv = None if off else conversation(cfg.affinity, cfg.name, self.headers, self._parse())
        reserved = ex.reserved.tokens if ex.reserved is not None else -1
        ex.ticket = Ticket(body, cfg.default_max_tokens, ex.usage, reserved)
        return Outgoing("POST", url, self.headers, body)

    async def listed(self, gw: Gateway, ex: Exchange, tries: list[Try]) -> list[Try]:
        """Without the targets whose `strict_models` provider does not list their model; none
        left: the last such refusal (404 `model_not_found`, nothing sent)."""
        kept: list[Try] = []
        refusal: GatewayError | None = None
        for leg in tries:
            rt, target, _ = leg
            if target is not None and rt.cfg.strict_models and not rt.cfg.force_model:
                try:
                    await check_listed(gw, rt, target.model, False, ex.client)
                except GatewayError as exc:
                    refusal = exc
                    ex.via.append(f"{target.name} (not listed)")
                    continue
            kept.append(leg)
        if not kept and refusal is not None:
            # the client named `self.model`: suggest what it could have named instead
            names = suggest(gw, tries[-1][0], self.model, True, ex.client)
            hint = f"; {did_you_mean(names)}" if names else ""
            rt, target, _ = tries[0]
            what = (
                f"provider '{rt.cfg.name}' has no model '{target.model}'"
                if len(tries) == 1 and target is not None
                else f"no provider of model '{self.model}' lists its target"
            )
            raise GatewayError(404, what + hint, "model_not_found")
        return kept

    @staticmethod
    async def spread(tries: list[Try]) -> list[Try]:
        """The freest provider first: usable keys now, then free capacity."""
        scores = [await rt.admission.capacity() for rt, _, _ in tries]
        usable = [rt.pool.usable_now() for rt, _, _ in tries]
        ranked = sorted(
            range(len(tries)), key=lambda i: (usable[i], scores[i].score()), reverse=True
        )
        return [tries[i] for i in ranked]


def plan_route(
    gw: Gateway, path: str, body: bytes, doc: dict[str, Any] | None = None
) -> Plan | None:
    """The plan for a unified-endpoint request whose model routes somewhere; None leaves the
    request to the default provider, its body untouched. `doc`: the body already parsed
    strictly (a client whose lists read it), whose top-level model is then the one routed."""
    if path not in ROUTED_PATHS:
        return None
    if doc is not None:
        return _parsed_plan(gw, path, body, doc)
    found = MODEL_VALUE.search(body)
    if found is None:
        return None
    raw = found.group(1)
    model = raw.decode("utf-8", "replace")
    route = gw.models.resolve(model)
    once = body.count(b'"model"') == 1
    if once and body.find(b"\\u") < 0 and raw.find(b"\\") < 0:
        # One "model" key in the body and no \u escape that could spell another: what a JSON
        # parser reads as the model is these bytes (the trust `clients.checked_model` puts in
        # the same scan). The body is parsed only if a target needs it translated.
        return None if route is None else Plan(route, path, body, None, model, found.span(1))
    if route is None and once:
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
        once = False
    if route is None:
        return None
    # the model's bytes may be replaced in place when the one "model" is the real one and
    # spelt without escapes (then the bytes between its quotes are exactly the name)
    exact = once and raw.find(b"\\") < 0
    return Plan(route, path, body, doc, model, found.span(1) if exact else None)


def _parsed_plan(gw: Gateway, path: str, body: bytes, doc: dict[str, Any]) -> Plan | None:
    model = doc.get("model")
    route = gw.models.resolve(model) if isinstance(model, str) else None
    if route is None:
        return None
    assert isinstance(model, str)
    found = MODEL_VALUE.search(body)
    # in place only when the one plain "model" in the body is the top-level one
    exact = (
        found is not None
        and body.count(b'"model"') == 1
        and body.find(b"\\u") < 0
        and found.group(1) == model.encode()
    )
    return Plan(route, path, body, doc, model, found.span(1) if exact and found else None)
