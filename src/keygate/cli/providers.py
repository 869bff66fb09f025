"""`keygate providers` and `keygate models`: the providers and the unified endpoint's model
table as the server would use them, from the config and the store.
"""

from __future__ import annotations

from typing import Any

import orjson

from keygate.cli.runner import apply_overrides, run, with_config
from keygate.config.settings import ConfigError


async def _providers(ctx: Any) -> int:
    store, settings, args, *_ = ctx
    apply_overrides(settings, await store.get_provider_overrides())
    counts = await store.key_counts()
    rows = []
    for name, cfg in settings.providers.items():
        rows.append({**cfg.public(), "key_counts": counts.get(name, {})})
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    print(f"{'provider':<13} {'keys':>6} {'rps':>6} {'burst':>6} {'max_conn':>8}  base")
    for r in rows:
        n = sum(r["key_counts"].values())
        print(
            f"{r['name']:<13} {n:>6} {r['rps']:>6g} {r['burst']:>6} {r['max_conn']:>8}  {r['base_url']}"
        )
    return 0


async def _models(ctx: Any) -> int:
    """The unified endpoint's table as the server would use it: config + store."""
    from keygate.config.routing import RouteError, build_table, merged_specs

    store, settings, args, *_ = ctx
    apply_overrides(settings, await store.get_provider_overrides())
    stored = await store.get_model_routes()
    try:
        table = build_table(merged_specs(settings.models, stored), settings.providers)
    except RouteError as exc:
        raise ConfigError(f"model table: {exc}") from None
    counts = await store.key_counts()
    providers = {
        name: [*cfg.models, *([cfg.default_model] if cfg.default_model else [])]
        for name, cfg in settings.providers.items()
        if name == settings.default_provider or counts.get(name)
    }
    routes = [
        {
            "name": r.name,
            "strategy": r.strategy,
            "targets": [str(t) for t in r.targets],
            "source": "admin" if r.name in stored else "config",
        }
        for r in table.values()
    ]
    if args.json:
        print(
            orjson.dumps(
                {
                    "default_provider": settings.default_provider,
                    "routes": routes,
                    "providers": providers,
                }
            ).decode()
        )
        return 0
    print(f"{'name':<24} {'strategy':<9} {'source':<7} targets")
    for r in routes:
        print(f"{r['name']:<24} {r['strategy']:<9} {r['source']:<7} {', '.join(r['targets'])}")
    if not routes:
        print("(no aliases or groups; any provider/model name routes by its prefix)")
    print(
        f"\nproviders on /v1 (default {settings.default_provider}: plain names; others: provider/model)"
    )
    for name, models in providers.items():
        listed = ", ".join(models) if models else "-"
        print(f"  {name:<13} {listed}")
    print("(a running server adds each provider's upstream model list: GET /v1/models)")
    return 0


def register(sub: Any) -> None:
    """The `providers` and `models` commands, on `keygate`'s parser."""
    prov = with_config(sub.add_parser("providers", help="list providers, limits and key counts"))
    prov.add_argument("--json", action="store_true")
    prov.set_defaults(func=lambda a: run(_providers, a, read=True))

    models = with_config(
        sub.add_parser("models", help="list the unified endpoint's aliases, groups and providers")
    )
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=lambda a: run(_models, a, read=True))
