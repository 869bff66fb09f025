"""The admin API's route table: one declaration per route, written on its handler with `@op`.

The router (admin/api.py) dispatches from this table and the OpenAPI document
(admin/openapi.py) is made from the same table, so a route cannot be served without being
described, nor described without being served. A declaration holds the method, the path as the
document writes it (`/api/keys/{id}`, each `{name}` a `Param` carrying its own regex), the
summary, the body and answer types, the query parameters, the error statuses the handler
answers with, the body size limit, and whether the route is public (only the login).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from keygate.admin.http import BODY_LIMIT, Reply
from keygate.admin.schema import Param, Parameter

Handler = Callable[..., Awaitable[Reply]]
H = TypeVar("H", bound=Handler)
_OP = "admin_op"  # the attribute `@op` sets on a handler


class Op(NamedTuple):
    method: str
    path: str
    summary: str
    tag: str
    answer: Any  # the success answer's schema
    answer_text: str  # and its description
    status: int = 200
    media: str = "application/json"
    body: Any = None  # the JSON body's schema; None: the route reads no body
    body_required: bool = True  # False: no body (or {}) is a valid request
    params: tuple[Parameter, ...] = ()
    errors: tuple[int, ...] = ()  # what the handler refuses with; body and auth errors are added
    public: bool = False
    limit: int = BODY_LIMIT
    listed: bool = True  # False: served, but not part of the documented API

    def regex(self) -> re.Pattern[str]:
        params = {p.name: p.regex for p in self.params if isinstance(p, Param)}
        parts = re.split(r"\{([^}]+)\}", self.path)  # literal, name, literal, ...
        return re.compile(
            "".join(f"({params[s]})" if i % 2 else re.escape(s) for i, s in enumerate(parts))
        )


def op(method: str, path: str, summary: str, **declared: Any) -> Callable[[H], H]:
    """Declare the route a handler serves (the keywords are `Op`'s fields)."""
    spec = Op(method, path, summary, **declared)
    named = re.findall(r"\{([^}]+)\}", path)
    if named != [p.name for p in spec.params if isinstance(p, Param)]:
        raise ValueError(f"{method} {path}: declare one Param per {{name}}, in order")

    def mark(handler: H) -> H:
        setattr(handler, _OP, spec)
        return handler

    return mark


class Route(NamedTuple):
    op: Op
    pattern: re.Pattern[str]
    handler: Handler

    @property
    def method(self) -> str:
        return self.op.method


def table(*groups: object) -> list[Route]:
    """The routes declared on the handlers of `groups` (objects whose methods carry `@op`), in
    the order they are written; one route per method and path."""
    routes: list[Route] = []
    seen: set[tuple[str, str]] = set()
    for group in groups:
        for name, attr in vars(type(group)).items():
            spec: Op | None = getattr(attr, _OP, None)
            if spec is None:
                continue
            if (spec.method, spec.path) in seen:
                raise ValueError(f"{spec.method} {spec.path} is declared twice")
            seen.add((spec.method, spec.path))
            routes.append(Route(spec, spec.regex(), getattr(group, name)))
    return routes


def match(
    routes: list[Route], method: str, path: str
) -> tuple[Route | None, tuple[str, ...], list[str]]:
    """The route and its captured groups, or None and the methods the path allows."""
    allowed: list[str] = []
    for r in routes:
        m = r.pattern.fullmatch(path)
        if m is None:
            continue
        if r.method == method:
            return r, m.groups(), []
        allowed.append(r.method)
    return None, (), allowed
