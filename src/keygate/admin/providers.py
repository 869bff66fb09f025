"""/api/providers and /api/config: run-time provider settings, applied at once and stored
(Gateway.update_provider, the one way they are checked and applied)."""

from __future__ import annotations

from typing import Any

from keygate import __version__
from keygate.admin.http import ApiError, Reply, Request, Route, bad, not_found, route
from keygate.admin.keys import KeyRoutes
from keygate.gateway import Gateway
from keygate.observe import log
from keygate.runtime import ProviderRuntime
from keygate.views import load_quota_views, provider_view


class ProviderRoutes:
    def __init__(self, gateway: Gateway, keys: KeyRoutes) -> None:
        self.gw = gateway
        self.keys = keys

    def routes(self) -> list[Route]:
        return [
            route("GET", r"/api/providers", self.list_providers),
            route("PATCH", r"/api/providers/([^/]+)", self.patch_provider),
            route("POST", r"/api/providers/([^/]+)/test", self.test_provider),
            route("GET", r"/api/config", self.config),
            route("PUT", r"/api/config/default-model", self.put_default_model),
        ]

    def _runtime(self, name: str) -> ProviderRuntime:
        rt = self.gw.providers.get(name)
        if rt is None:
            raise not_found(f"no provider named {name!r}")
        return rt

    async def list_providers(self, req: Request) -> Reply:
        for rt in self.gw.providers.values():
            await load_quota_views(rt)
        return Reply(200, {"providers": [provider_view(rt) for rt in self.gw.providers.values()]})

    async def patch_provider(self, req: Request, name: str) -> Reply:
        rt = self._runtime(name)
        fields = await req.json()
        if fields:
            try:
                await self.gw.update_provider(name, fields)
            except ValueError as exc:
                field = str(exc).partition(":")[0]
                raise ApiError(400, str(exc), "invalid_value", param=field) from None
            log.info("admin: provider %s changed: %s", name, ", ".join(sorted(fields)))
        return Reply(200, provider_view(rt))

    async def test_provider(self, req: Request, name: str) -> Reply:
        return Reply(200, {"results": await self.keys.test_entries(self._runtime(name))})

    async def config(self, req: Request) -> Reply:
        s = self.gw.settings
        doc = {
            "version": __version__,
            "default_provider": self.gw.default_provider,
            "admin_path": s.admin_path,
            "proxy_auth": bool(self.gw.passwords or self.gw.clients),
            "store": s.store_description,
            "shared_state": self.gw.state_info()["state"],
            "flush_interval_ms": s.flush_interval_ms,
            "providers": {
                name: {"default_model": rt.cfg.default_model, "force_model": rt.cfg.force_model}
                for name, rt in self.gw.providers.items()
            },
        }
        return Reply(200, doc)

    async def put_default_model(self, req: Request) -> Reply:
        doc = await req.json()
        unknown = sorted(set(doc) - {"model", "provider", "force"})
        if unknown:
            raise bad(unknown[0], "unknown field (model, provider, force)")
        provider = doc.get("provider")
        if provider is None or provider == "":
            provider = self.gw.default_provider
        if not isinstance(provider, str) or provider not in self.gw.providers:
            raise bad("provider", f"no provider named {provider!r}")
        if "model" not in doc:  # a bare PUT must not clear the default model
            raise bad("model", "required (an empty string clears the default model)")
        model = doc.get("model")
        if model is None:
            model = ""
        if not isinstance(model, str) or len(model) > 200:
            raise bad("model", "must be a string (empty clears the default model)")
        fields: dict[str, Any] = {"default_model": model.strip()}
        if "force" in doc:
            if not isinstance(doc["force"], bool):
                raise bad("force", "must be true or false")
            fields["force_model"] = doc["force"]
        try:
            cfg = await self.gw.update_provider(provider, fields)
        except ValueError as exc:
            raise bad("model", str(exc)) from None
        log.info(
            "admin: %s default model %r (force %s)", provider, cfg.default_model, cfg.force_model
        )
        doc = {
            "provider": provider,
            "default_model": cfg.default_model,
            "force_model": cfg.force_model,
        }
        return Reply(200, doc)
