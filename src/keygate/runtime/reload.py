"""A config reload (SIGHUP, `keygate reload`): the re-read settings applied to the running
gateway the way a restart would set it up, one line per change.

Provider limits, timeouts, bases and styles change in place (requests in flight keep the slots
they hold; the next ones see the new limits). A provider new in the file starts at once; a
custom one gone from it stops taking requests (its keys stay in the store). Keys new in the
file are imported; keys no longer listed stay in the store, as after a restart: deleting is
left to the admin API/CLI. Settings changed at run time from the admin API win over the file,
as they do at start. Listen address, store, Redis and other environment settings need a
restart.
"""

from __future__ import annotations

import dataclasses

from keygate.config.overrides import apply_stored
from keygate.config.proxies import show_proxy
from keygate.config.settings import TUNABLE, ProviderConfig, Settings, key_sources
from keygate.runtime.gateway import Gateway
from keygate.runtime.keyops import apply_key_options
from keygate.runtime.provider import ProviderRuntime

# Settings a reload leaves alone: they come from the environment or the command line, which a
# running process cannot re-read, or they shape what was built at start.
RESTART_ONLY = frozenset(
    {
        "host",
        "port",
        "workers",
        "data_dir",
        "config_path",
        "access_passwords",
        "admin_password",
        "admin_path",
        "disguise",
        "redis_url",
        "db_url",
        "secret_key",
        "flush_interval_ms",
        "recent_requests",
        "fleet_size",
        "log_level",
        "log_format",
        "drain_s",
        "auth_failures_per_min",
        "auth_failures_global_per_min",
        "trusted_proxies",
        "session_idle_s",
        "providers",
    }
)


async def apply_settings(gw: Gateway, new: Settings) -> list[str]:
    """Apply `new` to `gw`; the changes, one line each."""
    changes: list[str] = []
    fleet = gw.settings.fleet_size
    overrides = await gw.store.get_provider_overrides()
    apply_stored(new.providers, overrides, gw.settings.allow_private_upstreams)
    egress_changed: list[str] = []  # providers whose proxies (SPEC §16) must be rebuilt
    for name, ncfg in new.providers.items():
        rt = gw.providers.get(name)
        before = rt.cfg.keys if rt is not None else []
        if rt is None:
            rt = ProviderRuntime(ncfg, fleet, gw.shared)
            gw.providers[name] = rt
            changes.append(f"providers.{name}: added ({ncfg.base_url})")
            egress_changed.append(name)
        else:
            if (rt.cfg.proxies, rt.cfg.key_proxies) != (ncfg.proxies, ncfg.key_proxies):
                shown = ", ".join(show_proxy(u) for u in ncfg.proxies) or "none"
                changes.append(f"providers.{name}.proxies: now {shown}")  # passwords masked
                rt.cfg.proxies, rt.cfg.key_proxies = ncfg.proxies, dict(ncfg.key_proxies)
                egress_changed.append(name)
            cfg, changed = rt.cfg, False
            for key in (*TUNABLE, "key_style", "models"):
                before, after = getattr(cfg, key), getattr(ncfg, key)
                if before != after:
                    setattr(cfg, key, after)
                    changes.append(f"providers.{name}.{key}: {before!r} -> {after!r}")
                    changed = True
            if changed:
                rt.reconfigure(fleet)
        changes += await _reload_keys(gw, rt, ncfg, before)
    for name in [n for n in gw.providers if n not in new.providers]:
        del gw.providers[name]
        changes.append(f"providers.{name}: removed (its keys stay in the store)")
    for f in dataclasses.fields(new):
        if f.name in RESTART_ONLY:
            continue
        if f.name == "proxy":  # KEYGATE_PROXY: its passwords are never shown
            if gw.settings.proxy != new.proxy:
                gw.settings.proxy = new.proxy
                shown = ", ".join(show_proxy(u) for u in new.proxy) or "none"
                changes.append(f"proxy: now {shown}")
                egress_changed = list(gw.providers)
            continue
        before, after = getattr(gw.settings, f.name), getattr(new, f.name)
        if before != after:
            setattr(gw.settings, f.name, after)
            changes.append(f"{f.name}: {before!r} -> {after!r}")
    if egress_changed:
        gw.start_egress(n for n in dict.fromkeys(egress_changed) if n in gw.providers)
    gw.default_provider = gw.settings.default_provider
    gw.adopt_models(gw.stored_models)  # the file's `models:` (and providers) may have changed
    if gw.shared is not None and changes:
        gw.shared.announce("provider")
    return changes


async def _reload_keys(
    gw: Gateway, rt: ProviderRuntime, ncfg: ProviderConfig, before: list[str]
) -> list[str]:
    """Import the keys new in the file or environment (labelled by where they came from); a
    provider new in the file has all of its keys new."""
    cfg, listed = rt.cfg, ncfg.keys
    added = [k for k in listed if k not in before]
    dropped = [k for k in before if k not in listed]
    cfg.keys, cfg.config_keys = list(listed), list(ncfg.config_keys)
    cfg.key_options = dict(ncfg.key_options)
    lines = []
    if added:
        results = []
        for source, keys in key_sources(ncfg, added):
            results += await gw.store.add_keys(cfg.name, keys, source=source)
        ids = [r.id for r in results if r.status == "added" and r.id is not None]
        for rec in await gw.store.get_keys(ids):
            gw.adopt_key(rec)
        for r in results:
            if r.status != "added":
                lines.append(f"providers.{cfg.name}.keys: {r.input} not added ({r.status})")
        if ids:
            lines.append(f"providers.{cfg.name}.keys: {len(ids)} key(s) added")
    ranked = [k for k in listed if k in ncfg.key_options]
    if ranked:  # `secret|tier=1|weight=3`: the declared tier and weight win
        changed = []
        for source, keys in key_sources(ncfg, ranked):
            results = await gw.store.add_keys(cfg.name, keys, source=source)
            changed += await apply_key_options(gw.store, ncfg.key_options, keys, results)
        for rec in changed:
            gw.adopt_key(rec)
        if changed:
            lines.append(f"providers.{cfg.name}.keys: {len(changed)} key(s) re-ranked")
    if dropped:
        lines.append(
            f"providers.{cfg.name}.keys: {len(dropped)} key(s) no longer listed; they stay "
            "in the store (delete them with `keygate keys rm` or the admin API)"
        )
    return lines
