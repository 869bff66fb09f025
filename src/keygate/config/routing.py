"""Model → provider: the unified `/v1` endpoint chooses where a request goes by its `model`.

`provider/model` names a configured provider (the prefix is stripped before sending); a name in
the `models:` table is an alias (one target) or a group (several, tried in order or spread over
free capacity); anything else goes to the default provider unchanged. The table is validated
once (config load, admin write) and flattened, so a lookup on the request path is one dict read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("fallback", "spread")
NAME_MAX = 200
# Targets of one entry, its nested aliases and groups flattened: a chain tries each at most
# once, so this also bounds the upstream tries one request can make (`Plan.budget`).
TARGETS_MAX = 32
# Paths on the unified endpoint whose body's model chooses the provider (SPEC §10).
ROUTED_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
    }
)


class RouteError(ValueError):
    """A bad `models:` entry; `field` is where (`models.fast.targets[1]`), the text says why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request can go: a provider and the model name sent there."""

    provider: str
    model: str
    name: str = field(init=False, repr=False, compare=False)  # `provider/model`, built once

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.provider}/{self.model}")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Route:
    """What a model name stands for, flattened: nested aliases are resolved at validation."""

    name: str
    strategy: str  # "alias" | "fallback" | "spread"
    targets: tuple[Target, ...]
    spec: Any  # as written (a string, or {strategy, targets}), for the admin API and the list


def split_target(text: str, providers: Collection[str]) -> Target | None:
    """`groq/llama-3.1-8b-instant` → Target(groq, llama-3.1-8b-instant) when the first segment
    is a configured provider; the rest keeps its own slashes (OpenRouter's `vendor/model`)."""
    provider, slash, model = text.partition("/")
    if slash and model and provider in providers:
        return Target(provider, model)
    return None


def _check_name(field: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise RouteError(field, "must be a non-empty string")
    if len(name) > NAME_MAX or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise RouteError(field, f"must be at most {NAME_MAX} characters, no control characters")
    return name


def check_spec(field: str, spec: Any) -> Any:
    """The shape of one entry (alias string, or group mapping), normalised; names unresolved."""
    if isinstance(spec, str):
        return _check_name(field, spec)
    if not isinstance(spec, Mapping):
        raise RouteError(field, "must be a target string or a mapping with strategy and targets")
    unknown = sorted(map(str, set(spec) - {"strategy", "targets"}))
    if unknown:
        raise RouteError(field, f"unknown field(s) {', '.join(unknown)}")
    strategy = spec.get("strategy", "fallback")
    if strategy not in STRATEGIES:
        raise RouteError(
            f"{field}.strategy", f"must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    targets = spec.get("targets")
    if not isinstance(targets, list) or not targets:
        raise RouteError(f"{field}.targets", "must be a non-empty list of targets")
    if len(targets) > TARGETS_MAX:
        raise RouteError(
            f"{field}.targets", f"at most {TARGETS_MAX} targets in a group, got {len(targets)}"
        )
    return {
        "strategy": strategy,
        "targets": [_check_name(f"{field}.targets[{i}]", t) for i, t in enumerate(targets)],
    }


def build_table(
    specs: Mapping[str, Any], providers: Collection[str], prefix: str = "models"
) -> dict[str, Route]:
    """Validate every entry and flatten it into concrete targets. A target is another entry's
    name, or `provider/model` of a configured provider; an unknown provider, an empty group,
    a cycle or more than TARGETS_MAX targets once flattened is a `RouteError` naming the
    field."""
    clean = {}
    for name, spec in specs.items():
        _check_name(f"{prefix}.{name}", name)
        clean[name] = check_spec(f"{prefix}.{name}", spec)
    table: dict[str, Route] = {}

    def expand(name: str, path: tuple[str, ...]) -> tuple[Target, ...]:
        if name in table:
            return table[name].targets
        spec = clean[name]
        raw = [spec] if isinstance(spec, str) else spec["targets"]
        out: list[Target] = []
        for i, text in enumerate(raw):
            field = f"{prefix}.{name}" + ("" if isinstance(spec, str) else f".targets[{i}]")
            if text in clean:
                if text in path or text == name:
                    chain = " → ".join((*path, name, text))
                    raise RouteError(field, f"cycle: {chain}")
                out.extend(expand(text, (*path, name)))
                continue
            target = split_target(text, providers)
            if target is None:
                first = text.partition("/")[0]
                raise RouteError(
                    field,
                    f"unknown provider {first!r} in {text!r} (a target is provider/model or "
                    "the name of another alias or group)",
                )
            out.append(target)
        strategy = "alias" if isinstance(spec, str) else spec["strategy"]
        flat = tuple(dict.fromkeys(out))
        if len(flat) > TARGETS_MAX:
            raise RouteError(
                f"{prefix}.{name}",
                f"names {len(flat)} targets once its aliases and groups are flattened, "
                f"at most {TARGETS_MAX}",
            )
        route = Route(name, strategy, flat, specs[name])
        table[name] = route
        return route.targets

    for name in clean:
        expand(name, ())
    return table


def merged_specs(config: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """The config file's entries with the admin's over them; a stored None removes a name."""
    out = dict(config)
    for name, spec in stored.items():
        if spec is None:
            out.pop(name, None)
        else:
            out[name] = spec
    return out


PREFIX_CACHE_MAX = 4096  # provider/model names remembered (clients use few; anyone may send many)


class ModelTable:
    """The live routing table: looked up on every routed request, replaced whole on change.
    `provider/model` names are resolved once and remembered (a bounded cache)."""

    __slots__ = ("_prefixed", "providers", "routes")

    def __init__(self, routes: dict[str, Route], providers: Collection[str]) -> None:
        self.routes = routes
        self.providers = providers
        self._prefixed: dict[str, Route] = {}

    def resolve(self, model: str) -> Route | None:
        """What `model` stands for; None: the default provider, the body unchanged."""
        route = self.routes.get(model) or self._prefixed.get(model)
        if route is not None or "/" not in model:
            return route
        target = split_target(model, self.providers)
        if target is None:
            return None
        if len(self._prefixed) >= PREFIX_CACHE_MAX:
            self._prefixed.clear()
        route = self._prefixed[model] = Route(model, "alias", (target,), model)
        return route
