"""/api/models: the unified endpoint's aliases and groups (validated, stored, applied at once,
announced to the other instances) and every provider's model list, for the admin page."""

from __future__ import annotations

from typing import Any

from keygate.admin.components import MODEL_ROUTE
from keygate.admin.http import ApiError, Reply, Request, not_found
from keygate.admin.schema import STR, Param, arr, obj, said
from keygate.admin.table import op
from keygate.config.routing import NAME_MAX, STRATEGIES, TARGETS_MAX, RouteError
from keygate.observe.logs import log
from keygate.runtime.gateway import Gateway

_TAG = "models"
MODEL_NAME = Param(
    "name", r".+", {"type": "string", "minLength": 1, "maxLength": NAME_MAX}, "alias or group name"
)
TARGET = {
    "type": "string",
    "minLength": 1,
    "maxLength": NAME_MAX,
    "pattern": r"^[^\x00-\x1f\x7f]+$",
    "description": "provider/model, or the name of another alias or group",
}
ENTRY = {
    "oneOf": [
        obj({"target": TARGET}, required=["target"], closed=True),
        obj(
            {
                "strategy": {"type": "string", "enum": list(STRATEGIES)},
                "targets": arr(
                    TARGET,
                    minItems=1,
                    maxItems=TARGETS_MAX,
                    description=f"at most {TARGETS_MAX}, tried in order (fallback) or by free "
                    "capacity (spread)",
                ),
            },
            required=["targets"],
            closed=True,
        ),
    ]
}


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

    @op(
        "GET",
        "/api/models",
        "The unified endpoint's aliases and groups, and each listed provider's models",
        tag=_TAG,
        answer=obj(
            {
                "default_provider": STR,
                "routes": obj(additionalProperties=MODEL_ROUTE),
                "hidden": said(arr(STR), "config entries removed at run time"),
                "providers": obj(
                    additionalProperties=obj(
                        {
                            "models": arr(STR),
                            "default": {"type": "boolean"},
                            "fetched": {"type": "boolean"},
                            "keys": {"type": "boolean"},
                            "error": STR,
                        }
                    )
                ),
            }
        ),
        answer_text="the model table",
    )
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

    @op(
        "PUT",
        "/api/models/{name}",
        "Set an alias (target) or a group (strategy, targets); applied at once on every "
        "instance. An unknown provider, empty targets, a cycle or more than "
        f"{TARGETS_MAX} targets (in the list, or once the aliases and groups it names are "
        "flattened) is a 400 naming the field. A request routed to a group has one retry "
        f"budget of at most {TARGETS_MAX - 1} ({TARGETS_MAX} tries)",
        tag=_TAG,
        answer=MODEL_ROUTE,
        answer_text="the entry now",
        body=ENTRY,
        params=(MODEL_NAME,),
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

    @op(
        "DELETE",
        "/api/models/{name}",
        "Remove an alias or group (one from the config file is hidden); 409 while another "
        "entry names it",
        tag=_TAG,
        answer=obj({"deleted": STR}),
        answer_text="deleted",
        params=(MODEL_NAME,),
        errors=(404, 409),
    )
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
