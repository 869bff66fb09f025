"""Run-time provider settings: the one way a tunable value is checked and applied to a
provider's config, whoever applies it (the admin API, the server's start and change poll, a
config reload, the CLI).

The store keeps what an admin set as per-provider overrides; they win over the config file
and the environment everywhere, so each reader applies them with `apply_stored`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from keygate.config.settings import TUNABLE, ProviderConfig, coerce_field, field_problem


def clean_fields(fields: dict[str, Any], allow_private: bool) -> dict[str, Any]:
    """Validate every field; raises ValueError starting with the field's name."""
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        try:
            clean[key] = coerce_field(key, value, allow_private)
        except ValueError as exc:
            raise ValueError(field_problem(key, exc)) from None
    return clean


def apply_fields(cfg: ProviderConfig, fields: dict[str, Any], allow_private: bool) -> bool:
    """Set the tunable fields that pass their check; a stored value the current rules refuse
    (or a field that is no longer tunable) is skipped, so an old store never stops a start.
    Whether anything was applied."""
    applied = False
    for key, value in fields.items():
        if key in TUNABLE:
            with contextlib.suppress(ValueError):
                setattr(cfg, key, coerce_field(key, value, allow_private))
                applied = True
    return applied


def apply_stored(
    configs: dict[str, ProviderConfig],
    overrides: dict[str, dict[str, Any]],
    allow_private: bool,
) -> list[str]:
    """Apply the store's overrides to the providers that exist here; the names touched."""
    touched = []
    for name, fields in overrides.items():
        cfg = configs.get(name)
        if cfg is not None:
            apply_fields(cfg, fields, allow_private)
            touched.append(name)
    return touched
