"""The merged model list of `GET /v1/models`: every provider's models, and the aliases/groups.

A provider's list is its upstream model list (fetched with a usable key) plus the models named
under it in the config. Lists are fetched on demand only: the first `/v1/models` request waits
for them (bounded), later ones are answered from memory while stale lists are refreshed in the
background; a failed fetch keeps the last good list. Nothing is fetched at start-up, so a
gateway whose lists nobody asks for never reaches any provider for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson

from keygate.observe.logs import log

if TYPE_CHECKING:
    from keygate.config.routing import ModelTable
    from keygate.config.settings import Settings
    from keygate.runtime.provider import ProviderRuntime


class Source(Protocol):
    """What the lists read of the running gateway (the `Gateway` is one), live: providers,
    the default provider and the routing table change at run time, the session at start."""

    providers: dict[str, ProviderRuntime]
    default_provider: str
    models: ModelTable
    session: aiohttp.ClientSession | None
    settings: Settings


FIRST_WAIT_S = 10.0  # the first request waits at most this long for the lists
FETCH_LIMIT = 4 << 20  # an upstream list larger than this is cut (and likely not a list)
OWNER = "keygate"  # owned_by of aliases and groups


def parse_ids(body: bytes) -> list[str]:
    """Model ids from an OpenAI/Anthropic (`data[].id`) or Gemini (`models[].name`) list."""
    doc = orjson.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("model list is not a JSON object")
    items = doc.get("data")
    key = "id"
    if not isinstance(items, list):
        items, key = doc.get("models"), "name"
    if not isinstance(items, list):
        raise ValueError("model list has neither data nor models")
    out = []
    for item in items:
        name = item.get(key) if isinstance(item, dict) else None
        if isinstance(name, str) and name:
            out.append(name.removeprefix("models/"))
    return out


class ModelLists:
    """Per-provider upstream lists (last good), their age, and the merged answer, cached."""

    def __init__(self, gw: Source) -> None:
        self.gw = gw
        self.upstream: dict[str, list[str]] = {}  # last good list per provider
        self.fetched_at: dict[str, float] = {}  # monotonic time of the last attempt
        self.errors: dict[str, str] = {}  # why the last fetch failed, per provider
        self._body: bytes | None = None
        self._sig: tuple[Any, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._first = True
        # strict providers: the names each takes (a set, made once per list), their fetches
        self._known: dict[str, frozenset[str]] = {}
        self._fetching: dict[str, asyncio.Task[None]] = {}

    def stop(self) -> None:
        """A refresh under way ends with the gateway (it would outlive its client session)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for task in self._fetching.values():
            task.cancel()

    def invalidate(self) -> None:
        """The table or a provider changed: rebuild the merged answer on the next request."""
        self._body = None
        self._known.clear()

    def listed(self) -> list[ProviderRuntime]:
        """The default provider, and every other provider that has keys."""
        gw = self.gw
        return [
            rt
            for name, rt in gw.providers.items()
            if name == gw.default_provider or rt.pool.entries
        ]

    def _stale(self) -> list[ProviderRuntime]:
        ttl = self.gw.settings.models_ttl_s
        now = time.monotonic()
        return [
            rt
            for rt in self.listed()
            if rt.pool.entries and now - self.fetched_at.get(rt.cfg.name, -1e18) >= ttl
        ]

    async def answer(self) -> bytes:
        """The merged list; the first call waits for the fetch, later ones never do."""
        listed = self.listed()
        sig = (id(self.gw.models), self.gw.default_provider, *(rt.cfg.name for rt in listed))
        if sig != self._sig:
            self._sig, self._body = sig, None
        stale = self._stale()
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self.refresh(stale))
        if self._first and self._task is not None and not self._task.done():
            self._first = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), FIRST_WAIT_S)
        if self._body is None:
            self._body = orjson.dumps({"object": "list", "data": self.entries()})
        return self._body

    async def refresh(self, rts: Iterable[ProviderRuntime]) -> None:
        """Fetch the given providers' lists at once; each failure keeps its last good list."""
        await asyncio.gather(*(self._fetch(rt) for rt in rts))
        self.invalidate()

    async def _fetch(self, rt: ProviderRuntime) -> None:
        name = rt.cfg.name
        self.fetched_at[name] = time.monotonic()
        entry = next((e for e in rt.pool.entries.values() if e.status == "active"), None)
        if entry is None or self.gw.session is None:
            self.errors[name] = "no usable key"
            return
        cfg = rt.cfg
        session = self.gw.session
        if rt.egress is not None:  # SPEC §16: through the key's proxy
            via = rt.egress.pick(entry.id, entry.secret, [])
            session = session if via is None else rt.egress.session(via)
        url, headers = rt.dialect.models_request(cfg.base_url, entry.secret)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.timeout_connect_s)
        try:
            async with asyncio.timeout(min(cfg.timeout_first_byte_s, 30.0)):
                async with session.get(
                    url, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    body = await resp.content.read(FETCH_LIMIT)
                    if resp.status >= 400:
                        raise ValueError(f"upstream answered {resp.status}")
            ids = parse_ids(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the last good list stays
            text = str(exc) or type(exc).__name__
            if entry.secret in text:
                text = text.replace(entry.secret, entry.masked)
            self.errors[name] = text
            log.warning("model list of %s: %s (keeping the last good list)", name, text)
            return
        self.upstream[name] = ids
        self.errors.pop(name, None)

    async def known(self, rt: ProviderRuntime) -> frozenset[str] | None:
        """The models a `strict_models` provider takes: its upstream list and its config's.
        The upstream list is fetched on first need (the first requests wait for it, at most
        FIRST_WAIT_S) and refreshed in the background once stale. None: nothing to judge by
        (no list could be had and the config lists none)."""
        name = rt.cfg.name
        stale = time.monotonic() - self.fetched_at.get(name, -1e18) >= self.gw.settings.models_ttl_s
        if stale and rt.pool.entries:
            task = self._fetching.get(name)
            if task is None or task.done():
                task = asyncio.get_running_loop().create_task(self.refresh([rt]))
                self._fetching[name] = task
            if name not in self.upstream:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), FIRST_WAIT_S)
        found = self._known.get(name)
        if found is None:
            if name not in self.upstream and not rt.cfg.models:
                return None
            found = self._known[name] = frozenset(self.provider_models(rt))
        return found

    def provider_models(self, rt: ProviderRuntime) -> list[str]:
        """One provider's models: the upstream's, then the config's, without repeats."""
        cfg = rt.cfg
        extra = [cfg.default_model] if cfg.default_model else []
        return list(dict.fromkeys([*self.upstream.get(cfg.name, ()), *cfg.models, *extra]))

    def entries(self) -> list[dict[str, Any]]:
        """SPEC §10: the default provider's models plain, the others as provider/model, then
        every alias and group with the targets it stands for."""
        gw = self.gw
        out: list[dict[str, Any]] = []
        seen: set[str] = set()

        def add(model_id: str, owner: str, extra: dict[str, Any] | None = None) -> None:
            if model_id in seen:
                return
            seen.add(model_id)
            item = {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
            if extra:
                item.update(extra)
            out.append(item)

        for rt in self.listed():
            name = rt.cfg.name
            plain = name == gw.default_provider
            for model in self.provider_models(rt):
                add(model if plain else f"{name}/{model}", name)
        for route in gw.models.routes.values():
            add(
                route.name,
                OWNER,
                {
                    "keygate": {
                        "strategy": route.strategy,
                        "targets": [str(t) for t in route.targets],
                    }
                },
            )
        return out

    def by_provider(self) -> dict[str, dict[str, Any]]:
        """Each listed provider's models and fetch state, for the admin page."""
        out = {}
        for rt in self.listed():
            name = rt.cfg.name
            out[name] = {
                "models": self.provider_models(rt),
                "default": name == self.gw.default_provider,
                "fetched": name in self.upstream,
                "keys": bool(rt.pool.entries),
                "error": self.errors.get(name, ""),
            }
        return out
