"""The admin API's types as small JSON Schema declarations, and the fields whose schema and
check are one object: a handler checks a body with the same field the OpenAPI document shows,
so the document's bounds are the handler's own (admin/openapi.py turns the route table into
the document).

A schema is a plain dict; two markers are filled in when the document is made: `Component`
(a named type, written once under components/schemas and referred to by `$ref`) and
`ProviderName` (the running gateway's provider names).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from keygate.admin.http import bad

Schema = dict[str, Any]

INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
STR: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": ["number", "null"], "description": "epoch seconds"}
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # a name or model: no control characters


def obj(
    properties: dict[str, Any] | None = None,
    *,
    required: Iterable[str] = (),
    closed: bool = False,
    description: str = "",
    **extra: Any,
) -> Schema:
    """An object; `closed`: any other field is refused."""
    schema: Schema = {"type": "object"}
    if description:
        schema["description"] = description
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if properties is not None:
        schema["properties"] = properties
    return {**schema, **extra}


def arr(items: Any, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def said(schema: Any, description: str) -> Schema:
    return {**schema, "description": description}


def ints(*names: str) -> Schema:
    return {n: INT for n in names}


class Component(NamedTuple):
    """A named type: `#/components/schemas/<name>` in the document."""

    name: str
    schema: Schema


class ProviderName(NamedTuple):
    """A body's provider field: one of the running gateway's provider names, so a client (or a
    schema-driven tester) knows any other name is refused; `optional`: empty or null means the
    default provider."""

    optional: bool = False
    description: str = ""

    def render(self, names: list[str]) -> Schema:
        if self.optional:
            schema: Schema = {"type": ["string", "null"], "enum": [*names, "", None]}
        else:
            schema = {"type": "string", "minLength": 1, "enum": list(names)}
        return said(schema, self.description) if self.description else schema


# --- fields: one object is both the schema the document shows and the check the handler runs --


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Text(NamedTuple):
    """A string of `min_len` to `max_len` characters; `nullable`: null is taken as ""."""

    max_len: int | None = None
    min_len: int = 0
    nullable: bool = False
    problem: str = ""  # the 400's text; by default it states the bound
    extra: Schema | None = None  # pattern, description

    @property
    def schema(self) -> Schema:
        schema: Schema = {"type": ["string", "null"] if self.nullable else "string"}
        if self.min_len:
            schema["minLength"] = self.min_len
        if self.max_len is not None:
            schema["maxLength"] = self.max_len
        return {**schema, **(self.extra or {})}

    def check(self, name: str, value: Any) -> str:
        if value is None and self.nullable:
            return ""
        if (
            not isinstance(value, str)
            or len(value) < self.min_len
            or (self.max_len is not None and len(value) > self.max_len)
        ):
            raise bad(
                name, self.problem or f"must be a string of at most {self.max_len} characters"
            )
        return value


class Whole(NamedTuple):
    """A whole number from `low` to `high`; JSON's 5.0 is the integer 5 (as JSON Schema says)."""

    high: int
    low: int = 0

    @property
    def schema(self) -> Schema:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not whole or not self.low <= value <= self.high:
            raise bad(
                name,
                f"must be a whole number ≥ {self.low} and ≤ {self.high}, got {_shown(value)}",
            )
        return int(value)


class Choice(NamedTuple):
    """One of a few strings."""

    values: tuple[str, ...]

    @property
    def schema(self) -> Schema:
        return {"type": "string", "enum": list(self.values)}

    def check(self, name: str, value: Any) -> str:
        if value not in self.values:
            raise bad(name, "must be " + " or ".join(repr(v) for v in self.values))
        return str(value)


class Flag:
    __slots__ = ()
    schema = BOOL

    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise bad(name, "must be true or false")
        return value


Field = Text | Whole | Choice | Flag


def fields_schema(fields: Mapping[str, Field], **extra: Any) -> Schema:
    """The object whose properties are `fields`."""
    return obj({name: f.schema for name, f in fields.items()}, **extra)


# --- parameters -----------------------------------------------------------------------------


class Param(NamedTuple):
    """A path parameter: `{name}` in a route's path, matched by `regex`."""

    name: str
    regex: str
    schema: Schema
    description: str

    def spec(self) -> Schema:
        return {
            "name": self.name,
            "in": "path",
            "required": True,
            "schema": self.schema,
            "description": self.description,
        }


class Query(NamedTuple):
    """An optional query parameter."""

    name: str
    schema: Schema
    description: str

    def spec(self) -> Schema:
        return {
            "name": self.name,
            "in": "query",
            "required": False,
            "schema": self.schema,
            "description": self.description,
        }


class QueryInt(NamedTuple):
    """A whole-number query parameter: absent or empty is `default`; below `low` or above
    `high` is a 400; above `served_max` is served as `served_max` (not refused)."""

    name: str
    default: int
    description: str
    low: int = 0
    high: int | None = None
    served_max: int | None = None

    def spec(self) -> Schema:
        schema: Schema = {"type": "integer", "minimum": self.low}
        if self.high is not None:
            schema["maximum"] = self.high
        schema["default"] = self.default
        return Query(self.name, schema, self.description).spec()

    def read(self, query: dict[str, str]) -> int:
        raw = query.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            value = int(raw, 10)
        except ValueError:
            raise bad(self.name, f"must be a whole number, got {raw[:40]!r}") from None
        low, high = self.low, self.high
        if value < low or (high is not None and value > high):
            raise bad(
                self.name, f"must be ≥ {low}" + (f" and ≤ {high}" if high is not None else "")
            )
        return value if self.served_max is None else min(value, self.served_max)


Parameter = Param | Query | QueryInt
