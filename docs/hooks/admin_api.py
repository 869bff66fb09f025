"""MkDocs hook: the admin API page's reference section, written at build time from the OpenAPI
document the gateway serves (keygate.admin.openapi over the admin route table), so the site
cannot list a route, field or bound the server does not have."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

PAGE = "admin-api.md"


def openapi_document() -> dict[str, Any]:
    """The document as `GET /api/openapi.json` gives it, for the built-in providers."""
    from keygate.admin.api import AdminAPI
    from keygate.admin.openapi import document
    from keygate.config.catalog import BUILTINS

    # building the route table touches neither the gateway nor the store
    gateway = SimpleNamespace(settings=SimpleNamespace(session_idle_s=3600), store=None)
    return document(AdminAPI(gateway, None).routes, BUILTINS)  # type: ignore[arg-type]


def _schema_text(schema: Any) -> str:
    if isinstance(schema, dict) and set(schema) == {"$ref"}:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    return f"`{json.dumps(schema, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference(doc: dict[str, Any]) -> str:
    """The document as Markdown: operations by tag, then every schema."""
    out = [
        "## Reference (from the OpenAPI document)",
        "",
        "Written when this site is built from the same route table the server answers from; a",
        "running gateway serves the document itself at `GET /api/openapi.json` (admin auth), with",
        "its own provider names in every `provider` field.",
        "",
    ]
    ops: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            ops.setdefault(op["tags"][0], []).append((method.upper(), path, op))
    for tag in [t["name"] for t in doc["tags"]]:
        out += [f"### {tag.capitalize()}", ""]
        for method, path, op in ops.get(tag, []):
            out += [f"#### `{method} {path}`", "", op["summary"], ""]
            if op.get("security") == []:
                out += ["No credentials needed.", ""]
            if op.get("parameters"):
                out += ["| parameter | in | required | schema |", "|---|---|---|---|"]
                for p in op["parameters"]:
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} "
                        f"| {_cell(_schema_text(p.get('schema', {})))} |"
                    )
                out.append("")
            body = op.get("requestBody")
            if body:
                schema = body["content"]["application/json"]["schema"]
                required = "required" if body.get("required") else "optional"
                out += [f"Body ({required}): {_schema_text(schema)}", ""]
            out += ["| status | meaning | answer |", "|---|---|---|"]
            for status, answer in op["responses"].items():
                schema = next(iter(answer.get("content", {}).values()), {}).get("schema", {})
                out.append(
                    f"| {status} | {_cell(answer['description'])} | {_cell(_schema_text(schema))} |"
                )
            out.append("")
    out += ["### Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        out += [
            f"#### {name} {{#schema-{name.lower()}}}",
            "",
            "```json",
            json.dumps(schema, indent=2, ensure_ascii=False),
            "```",
            "",
        ]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    return markdown.rstrip("\n") + "\n\n" + reference(openapi_document()) + "\n"
