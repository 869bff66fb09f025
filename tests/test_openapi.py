"""The admin API's OpenAPI document is made from the route table the router dispatches from
(admin/table.py): the two list the same routes with the same methods, the document is valid
OpenAPI 3.1, and every bound it states is the one the handlers enforce, probed on a running
gateway on both sides of the bound."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from keygate.admin.api import AdminAPI
from keygate.admin.http import ApiError
from keygate.admin.keys import KEY_LIMIT_MAX, KEY_PATCH, LABEL_MAX, LIST_OFFSET, LIST_OFFSET_MAX
from keygate.admin.openapi import document
from keygate.admin.providers import MODEL
from keygate.admin.session import LOGIN
from keygate.admin.table import match, op, table
from keygate.config.settings import BOUNDS, MODEL_NAME_MAX

PROVIDERS = ["cerebras", "groq"]
# Served by the admin API but not part of its document: /healthz is the public health check
# (app.py answers it without credentials); the admin API adds only its details.
UNLISTED = {("GET", "/healthz")}


def admin_api() -> AdminAPI:
    """The admin API's router over a stand-in gateway (building the table touches nothing)."""
    gateway = SimpleNamespace(settings=SimpleNamespace(session_idle_s=3600), store=None)
    return AdminAPI(gateway, None)  # type: ignore[arg-type]


def concrete(path: str) -> str:
    return path.replace("{id}", "7").replace("{name}", "cerebras")


def test_the_router_and_the_document_list_the_same_routes_and_methods() -> None:
    api = admin_api()
    doc = document(api.routes, PROVIDERS)
    served = {(r.op.method, r.op.path) for r in api.routes}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served - documented == UNLISTED
    assert documented <= served
    for path, ops in doc["paths"].items():
        url = concrete(path)
        for method in ops:
            route, args, _ = match(api.routes, method.upper(), url)
            assert route is not None and route.op.path == path, (method, path)
            assert len(args) == path.count("{")
        # any other method is a 405 whose Allow lists exactly the document's methods
        route, _, allowed = match(api.routes, "TRACE", url)
        assert route is None and sorted(allowed) == sorted(m.upper() for m in ops), path
    for method, path in UNLISTED:
        assert match(api.routes, method, path)[0] is not None


def test_the_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import OpenAPIV31SpecValidator

    doc = document(admin_api().routes, PROVIDERS)
    assert doc["openapi"] == "3.1.0"
    errors = [str(e.message) for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert errors == []
    tags = {t["name"] for t in doc["tags"]}
    for ops in doc["paths"].values():
        for spec in ops.values():
            assert set(spec["tags"]) <= tags
            assert {"401", "429"} <= set(spec["responses"])


def test_a_declaration_names_every_path_parameter_and_each_route_once() -> None:
    with pytest.raises(ValueError, match="Param"):
        op("GET", "/api/things/{id}", "a thing", tag="status", answer={}, answer_text="it")

    class Twice:
        @op("GET", "/api/x", "x", tag="status", answer={}, answer_text="x")
        async def one(self) -> None: ...

        @op("GET", "/api/x", "x again", tag="status", answer={}, answer_text="x")
        async def two(self) -> None: ...

    with pytest.raises(ValueError, match="declared twice"):
        table(Twice())


def _body(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    spec = doc["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]
    schema: dict[str, Any] = spec["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_handlers_own_fields_are_what_the_document_shows() -> None:
    """Where an admin handler checks a body itself, it checks with the field object the
    document is made from: the same bounds, accepted at the bound and refused past it."""
    doc = document(admin_api().routes, PROVIDERS)
    patch = _body(doc, "PATCH", "/api/keys/{id}")
    assert patch["properties"] == {name: f.schema for name, f in KEY_PATCH.items()}
    for window, high in KEY_LIMIT_MAX.items():
        assert patch["properties"][window]["maximum"] == high == BOUNDS[f"key_{window}"]
        assert KEY_PATCH[window].check(window, high) == high
        with pytest.raises(ApiError, match=window):
            KEY_PATCH[window].check(window, high + 1)
    assert patch["properties"]["label"]["maxLength"] == LABEL_MAX
    assert _body(doc, "POST", "/api/keys")["properties"]["label"] == KEY_PATCH["label"].schema
    model = _body(doc, "PUT", "/api/config/default-model")["properties"]["model"]
    assert model == MODEL.schema and model["maxLength"] == MODEL_NAME_MAX
    assert _body(doc, "POST", "/api/session")["properties"]["password"] == LOGIN["password"].schema
    offset = next(
        p for p in doc["paths"]["/api/keys"]["get"]["parameters"] if p["name"] == "offset"
    )
    assert offset["schema"]["maximum"] == LIST_OFFSET_MAX == LIST_OFFSET.high
    provider_patch = doc["components"]["schemas"]["ProviderPatch"]["properties"]
    for name, high in BOUNDS.items():
        assert provider_patch[name]["maximum"] == high


# --- the bounds, probed on a running gateway ---------------------------------------------------

BOUND_WORDS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
)


def _text(field: str, n: int) -> str:
    """A string of n characters that the field takes when its length is allowed."""
    if field in ("target", "targets"):
        return "z" * n if n < 10 else "cerebras/" + "m" * (n - 9)  # "z": an alias made below
    return (secrets.token_hex(8) + "a" * n)[:n]  # unique: keys must not repeat


def _items(field: str, n: int) -> list[str]:
    if field == "targets":
        return [f"cerebras/m{i}" for i in range(n)]
    return [f"p{i}" for i in range(n)]


def _probes(field: str, schema: dict[str, Any]) -> Iterator[tuple[Any, bool, str]]:
    """(value, allowed by the document, which bound) on each side of every bound of `schema`."""
    if "enum" in schema:
        return  # the provider names: the enum is the check, not its length
    for branch in schema.get("oneOf", []):
        yield from _probes(field, branch)
    kind = schema.get("type")
    kinds = set(kind) if isinstance(kind, list) else {kind}
    step = 1 if "integer" in kinds else 0.5
    for word in BOUND_WORDS:
        if word not in schema:
            continue
        b = schema[word]
        if word == "minimum":
            yield b, True, word
            yield b - 1, False, word
        elif word == "maximum":
            yield b, True, word
            yield b + 1, False, word
        elif word == "exclusiveMinimum":
            yield b + step, True, word
            yield b, False, word
        elif word == "exclusiveMaximum":
            yield b - 1, True, word
            yield b, False, word
        elif word in ("minLength", "maxLength"):
            ok, past = (b, b - 1) if word == "minLength" else (b, b + 1)
            yield _text(field, ok), True, word
            yield _text(field, past), False, word
        else:
            ok, past = (b, b - 1) if word == "minItems" else (b, b + 1)
            yield _items(field, ok), True, word
            yield _items(field, past), False, word
    items = schema.get("items")
    if isinstance(items, dict):
        for value, allowed, word in _probes(field, items):
            yield [value], allowed, f"items {word}"


def _alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    alternatives: list[dict[str, Any]] = schema.get("oneOf", [schema])
    return alternatives


def _refused_for(resp: httpx.Response, field: str) -> bool:
    if resp.status_code != 400:
        return False
    error = resp.json()["error"]
    return field in (error["param"] or "") or error["message"].startswith(field)


def test_every_bound_in_the_served_document_is_the_one_the_api_enforces(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory(env={"KEYGATE_AUTH_FAILURES_PER_MIN": "1000"})
    http = httpx.Client(base_url=gw.url, headers=gw.admin(), timeout=30)
    try:
        _probe_everything(gw, http)
    finally:
        http.close()


def _probe_everything(gw: Any, http: httpx.Client) -> None:
    doc = http.get("/api/openapi.json").json()
    names = sorted(p["name"] for p in http.get("/api/providers").json()["providers"])
    assert doc == document(admin_api().routes, names)  # served: made from the router's table

    key_id = http.post("/api/keys", json={"provider": "cerebras", "key": _text("key", 24)})
    client_id = http.post("/api/clients", json={"name": "probe"})
    alias = http.put("/api/models/z", json={"target": "cerebras/m"})
    assert [r.status_code for r in (key_id, client_id, alias)] == [201, 201, 200]
    # a minimal valid body of every route that reads one (one per alternative of a oneOf)
    bases: dict[tuple[str, str], tuple[str, list[Callable[[], dict[str, Any]]]]] = {
        ("POST", "/api/session"): ("/api/session", [lambda: {"password": gw.admin_password}]),
        ("POST", "/api/keys"): (
            "/api/keys",
            [lambda: {"provider": "cerebras", "key": _text("key", 24)}],
        ),
        ("POST", "/api/keys/batch"): (
            "/api/keys/batch",
            [lambda: {"provider": "cerebras", "input": ""}],
        ),
        ("PATCH", "/api/keys/{id}"): (f"/api/keys/{key_id.json()['id']}", [dict]),
        ("PATCH", "/api/providers/{name}"): ("/api/providers/cerebras", [dict]),
        ("PUT", "/api/config/default-model"): (
            "/api/config/default-model",
            [lambda: {"model": ""}],
        ),
        ("PUT", "/api/models/{name}"): (
            "/api/models/probe",
            [lambda: {"target": "cerebras/m"}, lambda: {"targets": ["cerebras/m"]}],
        ),
        ("POST", "/api/clients"): ("/api/clients", [lambda: {"name": _text("name", 12)}]),
        ("PATCH", "/api/clients/{id}"): (f"/api/clients/{client_id.json()['id']}", [dict]),
    }
    probed: list[str] = []
    for path, ops in doc["paths"].items():
        for method, spec in ops.items():
            where = f"{method.upper()} {path}"
            for param in spec.get("parameters", []):
                if param["in"] != "query":
                    continue  # a path value out of bounds names nothing there: 404, not 400
                for value, allowed, word in _probes(param["name"], param["schema"]):
                    resp = http.request(method, concrete(path), params={param["name"]: value})
                    what = f"{where} ?{param['name']}={value} ({word})"
                    assert _refused_for(resp, param["name"]) != allowed, (what, resp.text)
                    probed.append(what)
            if "requestBody" not in spec:
                continue
            assert (method.upper(), path) in bases, f"{where}: give its minimal body above"
            url, makers = bases[(method.upper(), path)]
            schemas = _alternatives(_body(doc, method, path))
            assert len(makers) == len(schemas), where
            for schema, make in zip(schemas, makers, strict=True):
                assert set(make()) == set(schema.get("required", [])), where
                resp = http.request(method, url, json=make())
                assert resp.status_code < 300, (where, "minimal body", resp.text)
                for field in schema.get("required", []):
                    body = make()
                    del body[field]
                    resp = http.request(method, url, json=body)
                    assert _refused_for(resp, field), (where, f"without {field}", resp.text)
                extra = http.request(method, url, json={**make(), "zz_unknown": 1})
                closed = schema.get("additionalProperties") is False
                assert (extra.status_code == 400) == closed, (where, extra.text)
                for field, prop in schema.get("properties", {}).items():
                    for value, allowed, word in _probes(field, prop):
                        resp = http.request(method, url, json={**make(), field: value})
                        what = f"{where} {field}={str(value)[:30]} ({word})"
                        assert _refused_for(resp, field) != allowed, (what, resp.text)
                        probed.append(what)
    assert len(probed) > 100, probed
