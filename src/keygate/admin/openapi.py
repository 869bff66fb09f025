"""The OpenAPI 3.1 document of the admin API (served at GET /api/openapi.json), made from the
route table the router dispatches from (admin/table.py): a route is in the document exactly
when it is served, with the method, path, parameters, body and answer types and bounds its
declaration gives; the error statuses that come with a body (400, 413) and with auth (401, 429,
and 403 on a write) and 503 (the store away) are added here, once for every route.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from keygate import __version__
from keygate.admin.components import ERROR
from keygate.admin.schema import Component, ProviderName
from keygate.admin.table import Op, Route

TAGS = ("session", "providers", "keys", "models", "clients", "status")
ERRORS = {
    400: "validation error; the message names the field",
    401: "no or wrong admin credentials",
    403: "cookie auth without the x-keygate-csrf header on a write",
    404: "no such object",
    409: "the provider already has this key (keys); another entry names it (models)",
    413: "body too large",
    429: "too many wrong admin passwords lately; see Retry-After",
    503: "store_unavailable: the database cannot be reached or is not writable (a failover); "
    "not done, try again after Retry-After",
}
INFO = {
    "title": "keygate admin API",
    "version": __version__,
    "description": (
        "Manage the keys, providers and settings of a running keygate gateway. Every "
        "endpoint except POST /api/session needs admin auth: `Authorization: Bearer "
        "<ADMIN_PASSWORD or admin token>`, or the session cookie (then writes also need the "
        "header `x-keygate-csrf: 1`). Keys are only ever returned masked."
    ),
}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "ADMIN_PASSWORD or admin token"},
    "session": {"type": "apiKey", "in": "cookie", "name": "keygate_session"},
}


def statuses(op: Op) -> list[int]:
    """Every status a route answers: success, then the errors, those of its body and auth too."""
    errors = set(op.errors)
    if op.body is not None:
        errors |= {400, 413}  # not JSON, not an object, over the size limit
    if op.method not in ("GET", "HEAD", "OPTIONS") and not op.public:
        errors.add(403)
    return [op.status, *sorted(errors), 401, 429, 503]


def operation(op: Op) -> dict[str, Any]:
    """The document's entry for one route (markers not filled in yet)."""
    answer = {"description": op.answer_text, "content": {op.media: {"schema": op.answer}}}
    responses: dict[str, Any] = {str(op.status): answer}
    for code in statuses(op)[1:]:
        responses[str(code)] = {
            "description": ERRORS[code],
            "content": {"application/json": {"schema": ERROR}},
        }
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": responses}
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": op.body}},
        }
    if op.params:
        out["parameters"] = [p.spec() for p in op.params]
    if op.public:
        out["security"] = []
    return out


class _Renderer:
    """Plain JSON from declarations: each Component once under components/schemas, referred
    to by $ref; ProviderName as the running gateway's names."""

    def __init__(self, providers: list[str]) -> None:
        self.providers = providers
        self.components: dict[str, Any] = {}
        self.declared: dict[str, Component] = {}

    def __call__(self, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: self(v) for k, v in node.items()}
        if isinstance(node, Component):
            known = self.declared.setdefault(node.name, node)
            if known is not node:
                raise ValueError(f"two schemas named {node.name}")
            if node.name not in self.components:
                self.components[node.name] = {}  # taken before its fields refer back to it
                self.components[node.name] = self(node.schema)
            return {"$ref": f"#/components/schemas/{node.name}"}
        if isinstance(node, ProviderName):
            return node.render(self.providers)
        if isinstance(node, list | tuple):
            return [self(v) for v in node]
        return node


def document(routes: Iterable[Route | Op], providers: Iterable[str]) -> dict[str, Any]:
    """The document of these routes; `providers` are the allowed values of every `provider`
    body field, so a client (or a schema-driven tester) knows any other name is a 400."""
    render = _Renderer(sorted(providers))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op = route.op if isinstance(route, Route) else route
        if op.listed:
            paths.setdefault(op.path, {})[op.method.lower()] = render(operation(op))
    return {
        "openapi": "3.1.0",
        "info": render(INFO),
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "tags": [{"name": t} for t in TAGS],
        "paths": paths,
        "components": {"schemas": render.components, "securitySchemes": render(SECURITY_SCHEMES)},
    }
