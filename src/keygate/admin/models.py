"""/api/models: the unified endpoint's aliases and groups (validated, stored, applied at once,
announced to the other instances) and every provider's model list, for the admin page."""

from __future__ import annotations

from typing import Any

from keygate.admin.http import ApiError, Reply, Request, Route, not_found, route
from keygate.gateway import Gateway
from keygate.observe import log
from keygate.routing import RouteError


def route_view(gw: Gateway, name: str) -> dict[str, Any]:
    r = gw.models.routes[name]
    return {
        "name": name,
        "strategy": r.strategy,
        "targets": [str(t) for t in r.targets],  # flattened: nested names resolved
        "spec": r.spec,  # as written
        "source": "admin" if name in gw.stored_models else "config",
    }


class ModelRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def routes(self) -> list[Route]:
        return [
            route("GET", r"/api/models", self.list_models),
            route("PUT", r"/api/models/(.+)", self.put_model),
            route("DELETE", r"/api/models/(.+)", self.delete_model),
        ]

    async def list_models(self, req: Request) -> Reply:
        gw = self.gw
        return Reply(
            200,
            {
                "default_provider": gw.default_provider,
                "routes": {name: route_view(gw, name) for name in gw.models.routes},
                "hidden": sorted(n for n, spec in gw.stored_models.items() if spec is None),
                "providers": gw.model_lists.by_provider(),
            },
        )

    async def put_model(self, req: Request, name: str) -> Reply:
        doc = await req.json()
        if "target" in doc:
            if set(doc) != {"target"}:
                raise ApiError(
                    400, "body: either target, or strategy and targets", "invalid_value", "body"
                )
            spec: Any = doc["target"]
        else:
            spec = doc
        try:
            await self.gw.set_model(name, spec)
        except RouteError as exc:
            field = "target" if exc.field == f"models.{name}" and "target" in doc else exc.field
            raise ApiError(400, str(exc), "invalid_value", param=field) from None
        log.info("admin: model %s set", name)
        return Reply(200, route_view(self.gw, name))

    async def delete_model(self, req: Request, name: str) -> Reply:
        try:
            deleted = await self.gw.delete_model(name)
        except RouteError as exc:  # another entry names this one
            raise ApiError(
                409, f"{name} is used by another entry ({exc})", "in_use", param=exc.field
            ) from None
        if not deleted:
            raise not_found(f"no alias or group named {name!r}")
        log.info("admin: model %s removed", name)
        return Reply(200, {"deleted": name})
