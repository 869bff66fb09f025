"""/api/providers and /api/config: run-time provider settings, applied at once and stored
(Gateway.update_provider, the one way they are checked and applied)."""

from __future__ import annotations

from typing import Any

from keygate import __version__
from keygate.admin.components import CONFIG, DEFAULT_MODEL, PROVIDER, PROVIDER_PATCH, TEST_RESULT
from keygate.admin.http import ApiError, Reply, Request, bad, not_found
from keygate.admin.keys import PROVIDER_TEST_MAX, PROVIDER_TEST_PARALLEL, KeyRoutes
from keygate.admin.schema import NO_CONTROL, STR, Flag, Param, ProviderName, Text, arr, obj
from keygate.admin.table import op
from keygate.config.settings import MODEL_NAME_MAX
from keygate.observe.logs import log
from keygate.runtime.gateway import Gateway
from keygate.runtime.provider import ProviderRuntime
from keygate.runtime.views import load_quota_views, provider_view

_TAG = "providers"
PROVIDER_NAME = Param("name", r"[^/]+", STR, "provider name")
MODEL = Text(
    MODEL_NAME_MAX,
    nullable=True,
    problem="must be a string (empty clears the default model)",
    extra={"pattern": NO_CONTROL, "description": "empty or null clears it"},
)
FORCE = Flag()
DEFAULT_MODEL_BODY = obj(
    {
        "model": MODEL.schema,
        "provider": ProviderName(optional=True, description="empty or null: the default provider"),
        "force": FORCE.schema,
    },
    required=["model"],
    closed=True,
)


class ProviderRoutes:
    def __init__(self, gateway: Gateway, keys: KeyRoutes) -> None:
        self.gw = gateway
        self.keys = keys

    def _runtime(self, name: str) -> ProviderRuntime:
        rt = self.gw.providers.get(name)
        if rt is None:
            raise not_found(f"no provider named {name!r}")
        return rt

    @op(
        "GET",
        "/api/providers",
        "Providers with their effective settings, key counts and live load",
        tag=_TAG,
        answer=obj({"providers": arr(PROVIDER)}),
        answer_text="providers",
    )
    async def list_providers(self, req: Request) -> Reply:
        for rt in self.gw.providers.values():
            await load_quota_views(rt)
        return Reply(200, {"providers": [provider_view(rt) for rt in self.gw.providers.values()]})

    @op(
        "PATCH",
        "/api/providers/{name}",
        "Change tunable settings; applies at once to the running gateway and persists",
        tag=_TAG,
        answer=PROVIDER,
        answer_text="the provider after the change",
        body=PROVIDER_PATCH,
        body_required=False,
        params=(PROVIDER_NAME,),
        errors=(404,),
    )
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

    @op(
        "POST",
        "/api/providers/{name}/test",
        f"Test every non-disabled key of a provider (at most {PROVIDER_TEST_MAX}, "
        f"{PROVIDER_TEST_PARALLEL} at a time)",
        tag=_TAG,
        answer=obj({"results": arr(TEST_RESULT)}),
        answer_text="one result per key",
        params=(PROVIDER_NAME,),
        errors=(404,),
    )
    async def test_provider(self, req: Request, name: str) -> Reply:
        return Reply(200, {"results": await self.keys.test_entries(self._runtime(name))})

    @op(
        "GET",
        "/api/config",
        "The running configuration (no secrets)",
        tag="status",
        answer=CONFIG,
        answer_text="config",
    )
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

    @op(
        "PUT",
        "/api/config/default-model",
        "Set a provider's default model (filled in when a request names none) and whether to "
        "force it",
        tag=_TAG,
        answer=DEFAULT_MODEL,
        answer_text="the provider's model settings now",
        body=DEFAULT_MODEL_BODY,
    )
    async def put_default_model(self, req: Request) -> Reply:
        doc = await req.json()
        known = DEFAULT_MODEL_BODY["properties"]
        unknown = sorted(set(doc) - set(known))
        if unknown:
            raise bad(unknown[0], f"unknown field ({', '.join(known)})")
        provider = doc.get("provider")
        if provider is None or provider == "":
            provider = self.gw.default_provider
        if not isinstance(provider, str) or provider not in self.gw.providers:
            raise bad("provider", f"no provider named {provider!r}")
        if "model" not in doc:  # a bare PUT must not clear the default model
            raise bad("model", "required (an empty string clears the default model)")
        model = MODEL.check("model", doc.get("model"))
        fields: dict[str, Any] = {"default_model": model.strip()}
        if "force" in doc:
            fields["force_model"] = FORCE.check("force", doc["force"])
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
