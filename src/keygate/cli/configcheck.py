"""`keygate config check`: every problem of a config file (and the environment), not just the
first, one line each naming the file (or variable) and the field or key.

Loading stops at the first error by design (a server must not start half-configured), so the
check validates each top-level field, each provider field and each key on its own with the same
functions `load_settings` and the store use, then loads the whole file once more for what only
shows in context (default_provider, the admin path, environment variables).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keygate.config.catalog import BUILTINS, env_names
from keygate.config.routing import RouteError, build_table, check_spec
from keygate.config.settings import (
    ConfigError,
    ProviderConfig,
    _apply_provider_yaml,
    _env_bool,
    _load_yaml,
    _models_yaml,
    load_settings,
    split_keys,
)
from keygate.masking import mask
from keygate.store.base import check_secret

_PLACEHOLDER_BASE = "http://127.0.0.1"  # lets a custom provider's other fields be checked alone


def _builtins() -> dict[str, ProviderConfig]:
    return {
        name: ProviderConfig(name=name, base_url=b.base_url, key_style=b.key_style)
        for name, b in BUILTINS.items()
    }


def _try(errors: list[str], fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
    except ConfigError as exc:
        if str(exc) not in errors:
            errors.append(str(exc))
        return False
    return True


def _key_errors(where: str, keys: list[str]) -> list[str]:
    """The keys the store would refuse at start-up (it ignores them with a warning)."""
    out = []
    for i, raw in enumerate(keys):
        token = raw.split("|", 1)[0].strip()  # `secret|tier=1|weight=3`: options checked apart
        if not token:
            continue
        why = check_secret(token)
        if why:
            out.append(f"{where}[{i}] ({mask(token)}): {why}")
    return out


def _check_provider(
    path: Path, name: str, raw: Any, errors: list[str], allow_private: bool
) -> None:
    where = f"config file {path}: providers.{name}"

    def apply(doc: Any) -> bool:
        return _try(errors, _apply_provider_yaml, path, name, doc, _builtins(), allow_private)

    if not isinstance(raw, dict):
        apply(raw)
        return
    custom = name not in BUILTINS
    # the name and (for a custom provider) base_url first, then every field on its own
    base = {"base_url": raw["base_url"]} if "base_url" in raw else {}
    if not apply(base) and not apply({"base_url": _PLACEHOLDER_BASE}):
        return  # the name itself is refused: nothing else can be checked
    for field, value in raw.items():
        if field == "base_url":
            continue
        one = {"base_url": _PLACEHOLDER_BASE, field: value} if custom else {field: value}
        if not apply(one):
            continue
        if field == "keys":
            keys = split_keys(value) if isinstance(value, str) else value
            errors.extend(_key_errors(f"{where}.keys", keys))


def _models_errors(path: Path, raw: Any, names: set[str]) -> list[str]:
    """Every problem of the `models:` table against the providers the file names, each once.

    `build_table` stops at the first problem, so each one found is repaired in a copy (the bad
    part replaced by a valid target, an entry with a refused name dropped) and the table checked
    again: a cycle is reported once, and entries naming a repaired one add no errors of theirs.
    """
    if raw is None:
        return []
    if not isinstance(raw, dict):
        try:
            _models_yaml(path, raw, dict.fromkeys(names))
        except ConfigError as exc:
            return [str(exc)]
        return []
    specs = {str(k): copy.deepcopy(v) for k, v in raw.items()}
    stand_in = f"{min(names)}/model"  # a target that is always valid
    errors: list[str] = []
    # each repair fixes one part for good: an entry has its name, fields and targets to repair
    parts = sum(3 + len(v["targets"]) if _has_list(v) else 3 for v in specs.values())
    for _ in range(parts + 1):
        try:
            build_table(specs, names)
        except RouteError as exc:
            line = f"config file {path}: {exc}"
            if line not in errors:
                errors.append(line)
            if not _repair(specs, exc.field, stand_in):
                break
        else:
            break
    return errors


def _has_list(spec: Any) -> bool:
    return isinstance(spec, Mapping) and isinstance(spec.get("targets"), list)


def _repair(specs: dict[str, Any], field: str, stand_in: str) -> bool:
    """Replace the part of `specs` that `field` (a RouteError's) names; False if none is."""
    for name, spec in list(specs.items()):
        base = f"models.{name}"
        if field == base:
            try:
                check_spec(base, name)  # a name is checked as an alias's target string is
            except RouteError:
                del specs[name]  # the name itself is refused
                return True
            known = {"strategy", "targets"}
            if isinstance(spec, Mapping) and set(spec) - known:
                specs[name] = {k: v for k, v in spec.items() if k in known}
            else:
                specs[name] = stand_in
            return True
        if not isinstance(spec, Mapping) or not field.startswith(f"{base}."):
            continue
        rest = field[len(base) + 1 :]
        if rest == "strategy":
            spec["strategy"] = "fallback"
            return True
        if rest == "targets":
            spec["targets"] = [stand_in]
            return True
        index = re.fullmatch(r"targets\[(\d+)\]", rest)
        if index and _has_list(spec) and int(index.group(1)) < len(spec["targets"]):
            spec["targets"][int(index.group(1))] = stand_in
            return True
    return False


def check_config(path: str | os.PathLike[str], env: Mapping[str, str]) -> list[str]:
    """Every error as one line; an empty list means the server would start with this file."""
    path = Path(path)
    errors: list[str] = []
    try:
        data = _load_yaml(path)
    except ConfigError as exc:
        return [str(exc)]
    unknown = sorted(
        map(str, set(data) - {"default_provider", "providers", "models", "models_ttl_s"})
    )
    for field in unknown:
        errors.append(f"config file {path}: unknown field {field}")
    provs = data.get("providers") or {}
    if not isinstance(provs, dict):
        errors.append(
            f"config file {path}: providers: must be a mapping of provider name to settings"
        )
        provs = {}
    try:
        allow_private = _env_bool(env, "KEYGATE_ALLOW_PRIVATE_UPSTREAMS")
    except ConfigError as exc:
        errors.append(str(exc))
        allow_private = False
    for name, raw in provs.items():
        _check_provider(path, str(name), raw or {}, errors, allow_private)
    for name in sorted(set(BUILTINS) | {str(n) for n in provs}):
        for var in env_names(name, "API_KEYS"):
            if env.get(var):
                errors.extend(_key_errors(f"environment variable {var}: key", split_keys(env[var])))
    names = set(BUILTINS) | {str(n) for n in provs}
    errors.extend(_models_errors(path, data.get("models"), names))
    if not errors:
        # what only shows with the whole file loaded: default_provider, env, the admin path
        _try(errors, load_settings, env, path)
        return errors
    default = data.get("default_provider")
    if (
        default is not None
        and not env.get("KEYGATE_DEFAULT_PROVIDER")
        and str(default) not in names
    ):
        errors.append(f"config file {path}: default_provider: no provider named {str(default)!r}")
    # the environment on its own (the file's errors are listed already)
    alone = {k: v for k, v in env.items() if k != "KEYGATE_CONFIG"}
    if alone.get("KEYGATE_DEFAULT_PROVIDER") in names - set(BUILTINS):
        del alone["KEYGATE_DEFAULT_PROVIDER"]
    _try(errors, load_settings, alone, None)
    return errors
