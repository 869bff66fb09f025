"""Command line: serve, reload, keys, clients, providers, config check, bench.

Key and provider commands work on the same store as the server (SQLite's WAL or PostgreSQL make
that safe while it runs); a running server picks their changes up within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from keygate import __version__
from keygate.settings import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "workers")}
    return load_settings(os.environ, getattr(args, "config", None), overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from keygate.observe import setup_logging
    from keygate.server import bind_or_explain, server_options

    settings = _settings(args)
    # Bind first: a busy port must stop here, before the store, the banner and the admin token.
    sockets = bind_or_explain(settings)
    if sockets is None:
        return 1
    try:
        if settings.store_kind == "sqlite":
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        _check_store(settings)
        _record_location(settings)
        options = server_options(settings)
        if settings.workers > 1:
            from keygate.workers import run_workers

            return run_workers(settings, args, options, sockets)
        from keygate.app import App
        from keygate.lifecycle import serve

        setup_logging(settings.log_level, settings.log_format)
        return serve(App(settings), options, settings.data_dir, sockets)
    finally:
        for sock in sockets:
            sock.close()


def _check_store(settings: Settings) -> None:
    """Open and close the store once before serving, so a store that cannot open (wrong or
    missing KEYGATE_SECRET_KEY, a newer schema, an unwritable directory) stops `serve` with one
    line from main() instead of a start-up failure echoed by uvicorn."""
    from keygate.store import create_store

    async def go() -> None:
        store = create_store(settings.db_location, settings.secret_key)
        await store.open()
        await store.close()

    asyncio.run(go())


def _record_location(settings: Settings) -> None:
    """Tell later CLI commands (through the data dir) which config and store this server uses."""
    from keygate.locate import write_record

    try:
        write_record(settings, os.environ)
    except OSError as exc:  # the server runs anyway; only the CLI's defaults are lost
        print(f"keygate: warning: cannot record the config location: {exc}", file=sys.stderr)


def _run(coro_fn: Callable[[Any], Awaitable[int]], args: argparse.Namespace, read: bool) -> int:
    """Run a store command on the server's store and config (see keygate.locate); a read
    command refuses a store that does not exist rather than creating an empty one."""
    from keygate.locate import locate, require_existing_store
    from keygate.store import create_store

    located = locate(os.environ, getattr(args, "config", None))
    print(f"keygate: {located.describe()}", file=sys.stderr)
    for note in located.notes:
        print(f"keygate: note: {note}", file=sys.stderr)
    if read:
        require_existing_store(located)
    elif located.sqlite_path is not None and not located.sqlite_path.exists():
        print(f"keygate: note: creating a new store at {located.sqlite_path}", file=sys.stderr)
    settings = located.settings

    async def go() -> int:
        store = create_store(settings.db_location, settings.secret_key)
        await store.open()
        try:
            return await coro_fn((store, settings, args, located))
        finally:
            await store.close()

    return asyncio.run(go())


def _apply_overrides(settings: Settings, overrides: dict[str, dict[str, Any]]) -> None:
    """Run-time provider settings from the store win over config and env, as in the server."""
    from keygate.overrides import apply_stored

    apply_stored(settings.providers, overrides, settings.allow_private_upstreams)


def _check_provider(settings: Settings, name: str) -> None:
    if name not in settings.providers:
        raise ConfigError(f"no provider named {name!r} (known: {', '.join(settings.providers)})")


async def _keys_add(ctx: Any) -> int:
    store, settings, args, *_ = ctx
    from keygate.keyops import Duplicate, KeyOps

    _check_provider(settings, args.provider)
    secret = args.key if args.key != "-" else sys.stdin.readline().strip()
    try:
        key = await KeyOps(store).add(args.provider, secret, args.label or "", "cli")
    except Duplicate:
        print(f"duplicate: {args.provider} already has this key", file=sys.stderr)
        return 1
    print(f"added {key.provider} key {key.masked} id={key.id}")
    return 0


async def _keys_import(ctx: Any) -> int:
    store, settings, args, *_ = ctx
    from keygate.keyops import KeyOps
    from keygate.store.base import parse_key_entries

    _check_provider(settings, args.provider)
    text = (
        sys.stdin.read()
        if args.file in (None, "-")
        else Path(args.file).read_text(encoding="utf-8")
    )
    started = time.perf_counter()
    entries = parse_key_entries(text)
    done = await KeyOps(store).import_(args.provider, [tok for _, tok in entries], "cli")
    took = time.perf_counter() - started
    results, counts = done.results, {status: n for status, n in done.counts.items() if n}
    for (line, _), r in zip(entries, results, strict=True):
        if args.verbose or r.status != "added":
            where = f"line {line}"
            print(f"{r.status:<9} {where:<10} {r.input}{'  ' + r.message if r.message else ''}")
    summary = (
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to import"
    )
    print(f"{args.provider}: {summary} ({took:.2f}s)")
    return 0 if counts.get("added") or not results else 1


def _today(key: Any, settings: Any) -> dict[str, int | None]:
    """What the store says the key spent in its quota day (as of the last flush), and the
    day limits that apply to it (its own, else the provider's; None: no limit)."""
    from keygate.quotaday import day_window

    cfg = settings.providers.get(key.provider)
    reset = cfg.quota_day_reset if cfg is not None else "00:00 UTC"
    start, _ = day_window(time.time(), reset)
    current = abs(key.day - start) <= 1.0
    return {
        "requests": key.day_requests if current else 0,
        "tokens": key.day_tokens if current else 0,
        "rpd": key.rpd or (cfg.key_rpd if cfg is not None else 0) or None,
        "tpd": key.tpd or (cfg.key_tpd if cfg is not None else 0) or None,
    }


def _used_of(used: int | None, limit: int | None) -> str:
    """`used/limit`; without a day limit the count alone, `-` when nothing was counted."""
    if limit:
        return f"{used or 0}/{limit}"
    return str(used) if used else "-"


KEYS_LIST_LEGEND = (
    "req/total = requests sent upstream with the key since it was added (retries included); "
    "req/day, tok/day = requests and tokens in its provider's quota day so far, / the day limit "
    "that applies to it; they are counted for keys under a quota (- = no day limit, none counted)"
)


async def _keys_list(ctx: Any) -> int:
    store, settings, args, located = ctx
    from keygate.keyops import KeyOps
    from keygate.locate import flush_note

    if args.provider and args.provider not in settings.providers:
        stored = await store.key_counts()
        if args.provider not in stored:
            known = sorted(set(settings.providers) | set(stored))
            raise ConfigError(f"no provider named {args.provider!r} (known: {', '.join(known)})")
    print(f"keygate: note: {flush_note(located)}", file=sys.stderr)
    keys, total = await KeyOps(store).list(
        args.provider, args.status, args.q, args.limit, args.offset, time.time()
    )
    if args.json:
        fields = (
            "id",
            "provider",
            "masked",
            "label",
            "status",
            "use_count",
            "last_used",
            "created_at",
            "last_error",
            "until",
            "source",
        )
        rows = []
        for k in keys:
            row = {f: getattr(k, f) for f in fields}
            row["today"] = _today(k, settings)
            rows.append(row)
        print(orjson.dumps({"keys": rows, "total": total}).decode())
        return 0
    print(f"keygate: note: {KEYS_LIST_LEGEND}", file=sys.stderr)
    print(
        f"{'id':>6}  {'provider':<12} {'key':<12} {'status':<10} {'req/total':>9}"
        f"  {'req/day':>13} {'tok/day':>21}  label"
    )
    for k in keys:
        today = _today(k, settings)
        req = _used_of(today["requests"], today["rpd"])
        tok = _used_of(today["tokens"], today["tpd"])
        print(
            f"{k.id:>6}  {k.provider:<12} {k.masked:<12} {k.status:<10} {k.use_count:>9}"
            f"  {req:>13} {tok:>21}  {k.label}"
        )
    print(f"{len(keys)} of {total}")
    return 0


async def _keys_rm(ctx: Any) -> int:
    store, _, args, *_ = ctx
    from keygate.keyops import KeyOps

    ops = KeyOps(store)
    missing = 0
    for key_id in args.ids:
        if await ops.delete(key_id):
            print(f"deleted {key_id}")
        else:
            print(f"no key with id {key_id}", file=sys.stderr)
            missing += 1
    return 1 if missing else 0


LIMIT_FIELDS = ("rpm", "rph", "rpd", "tpm", "tph", "tpd", "max_conn")


async def _keys_limit(ctx: Any) -> int:
    """Set keys' own limits (SPEC §12) in the store; a running server applies them from its
    change feed. 0 = the provider's default."""
    store, _, args, *_ = ctx
    from keygate.settings import BOUNDS

    fields = {f: getattr(args, f) for f in LIMIT_FIELDS if getattr(args, f) is not None}
    if not fields:
        raise ConfigError(f"keys limit: give at least one of --{', --'.join(LIMIT_FIELDS)}")
    for name, value in fields.items():
        high = int(BOUNDS["key_" + name])
        if not 0 <= value <= high:
            raise ConfigError(f"keys limit: --{name} must be ≥ 0 and ≤ {high}, got {value}")
    missing = 0
    for key_id in args.ids:
        rec = await store.update_key(key_id, **fields)
        if rec is None:
            print(f"no key with id {key_id}", file=sys.stderr)
            missing += 1
            continue
        shown = ", ".join(f"{n}={getattr(rec, n)}" for n in LIMIT_FIELDS)
        print(f"{rec.id:>6}  {rec.provider:<12} {rec.masked:<12} {shown}")
    return 1 if missing else 0


async def _keys_test(ctx: Any) -> int:
    """Test keys against their configured upstream and record what the test proved, like the
    admin page's test (keygate.probe.run_key_test); a running server picks it up."""
    store, settings, args, *_ = ctx
    import aiohttp

    from keygate.keyops import KeyOps

    if args.provider:
        _check_provider(settings, args.provider)
        recs = await store.load_keys(args.provider)
    else:
        recs = await store.get_keys(args.ids)
    missing = [] if args.provider else sorted(set(args.ids) - {rec.id for rec in recs})
    for key_id in missing:
        print(f"no key with id {key_id}", file=sys.stderr)
    if not recs:
        if not args.provider and not args.ids:
            print("no keys to test: give key ids or --provider", file=sys.stderr)
        elif args.provider:
            print(f"{args.provider} has no keys", file=sys.stderr)
        return 1
    _apply_overrides(settings, await store.get_provider_overrides())
    bad = len(missing)
    ops = KeyOps(store)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for rec in recs:
            cfg = settings.providers.get(rec.provider)
            if cfg is None:
                print(
                    f"{rec.id:>6}  {rec.provider:<12} {rec.masked:<12} skipped: provider not configured",
                    file=sys.stderr,
                )
                bad += 1
                continue
            result = await ops.test(session, cfg, rec)
            bad += not result.ok
            change = f"  now {result.health[0]}" if result.health else ""
            if result.save_error:
                change += f" (not saved: {result.save_error})"
            print(
                f"{rec.id:>6}  {rec.provider:<12} {rec.masked:<12} {'ok' if result.ok else 'FAIL':<5}"
                f" {result.status or '-':>4} {result.latency_ms:7.1f} ms  {result.error}{change}"
            )
    return 1 if bad else 0


async def _providers(ctx: Any) -> int:
    store, settings, args, *_ = ctx
    _apply_overrides(settings, await store.get_provider_overrides())
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
    from keygate.routing import RouteError, build_table, merged_specs

    store, settings, args, *_ = ctx
    _apply_overrides(settings, await store.get_provider_overrides())
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


def cmd_reload(args: argparse.Namespace) -> int:
    """Signal the server that uses this data dir (KEYGATE_DATA_DIR) to re-read its config."""
    from keygate.lifecycle import send_reload

    env = {k: v for k, v in os.environ.items() if k != "KEYGATE_CONFIG"}  # not ours to read
    code, message = send_reload(load_settings(env).data_dir, args.wait)
    print(
        message if code == 0 else f"keygate: {message}",
        file=sys.stdout if code == 0 else sys.stderr,
    )
    return code


def cmd_config_check(args: argparse.Namespace) -> int:
    """Every problem of the file and the environment, one line each; exit 2 if there is any."""
    from keygate.configcheck import check_config

    errors = check_config(args.file, os.environ)
    for line in errors:
        print(f"keygate: {line}", file=sys.stderr)
    if errors:
        return 2
    settings = load_settings(os.environ, args.file)
    with_keys = sum(1 for p in settings.providers.values() if p.keys)
    print(
        f"{args.file}: ok ({len(settings.providers)} providers, {with_keys} with keys in config/env, default {settings.default_provider})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keygate", description="Self-hosted gateway for LLM provider APIs."
    )
    p.add_argument("--version", action="version", version=f"keygate {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--host",
        help="address to listen on (or KEYGATE_HOST; default 127.0.0.1, 0.0.0.0 for every "
        "interface)",
    )
    serve.add_argument(
        "--port", type=int, help="port to listen on (or KEYGATE_PORT, or PORT; default 8080)"
    )
    serve.add_argument("--config", help="YAML config file (or KEYGATE_CONFIG)")
    serve.add_argument(
        "--workers", type=int, help="worker processes on one port (or KEYGATE_WORKERS)"
    )
    serve.set_defaults(func=cmd_serve)

    reload = sub.add_parser(
        "reload",
        help="make the running server (found by KEYGATE_DATA_DIR) re-read its config file",
        description="Make the running server (found by KEYGATE_DATA_DIR) re-read its config "
        "file, and say how it went: exit 0 once it has re-read it, 2 if it refused the file "
        "(the reason is printed; the running config stays), 1 if no server answered.",
    )
    reload.add_argument(
        "--wait",
        type=float,
        default=30,
        metavar="SECONDS",
        help="how long to wait for the server's answer (default 30; 0: only send the signal)",
    )
    reload.set_defaults(func=cmd_reload)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", help="YAML config file (or KEYGATE_CONFIG)")
        return sp

    keys = sub.add_parser("keys", help="manage provider keys in the store")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    add = with_config(ksub.add_parser("add", help="add one key"))
    add.add_argument("provider")
    add.add_argument(
        "key", help="the key, or - to read it from stdin (keeps it out of shell history)"
    )
    add.add_argument("--label")
    add.set_defaults(func=lambda a: _run(_keys_add, a, read=False))
    imp = with_config(
        ksub.add_parser(
            "import", help="import many keys (newlines, commas, whitespace or a JSON array)"
        )
    )
    imp.add_argument("provider")
    imp.add_argument("file", nargs="?", help="file to read, or - / nothing for stdin")
    imp.add_argument("-v", "--verbose", action="store_true", help="print every line's result")
    imp.set_defaults(func=lambda a: _run(_keys_import, a, read=False))
    lst = with_config(ksub.add_parser("list", help="list keys (masked)"))
    lst.add_argument("--provider")
    lst.add_argument("--status", choices=["active", "cooling", "invalid", "exhausted", "disabled"])
    lst.add_argument("-q", "--search", dest="q")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--offset", type=int, default=0)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=lambda a: _run(_keys_list, a, read=True))
    rm = with_config(ksub.add_parser("rm", help="delete keys by id"))
    rm.add_argument("ids", nargs="+", type=int)
    rm.set_defaults(func=lambda a: _run(_keys_rm, a, read=True))
    limit = with_config(
        ksub.add_parser(
            "limit", help="set keys' own quota limits (0 = the provider's key_* default)"
        )
    )
    limit.add_argument("ids", nargs="+", type=int)
    for name in LIMIT_FIELDS:
        limit.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, metavar="N")
    limit.set_defaults(func=lambda a: _run(_keys_limit, a, read=True))
    test = with_config(
        ksub.add_parser("test", help="test keys against their upstream (model list)")
    )
    test.add_argument("ids", nargs="*", type=int)
    test.add_argument("--provider", help="test every key of this provider")
    test.set_defaults(func=lambda a: _run(_keys_test, a, read=True))

    from keygate.clients.cli import register as register_clients

    register_clients(sub, with_config, _run)
    prov = with_config(sub.add_parser("providers", help="list providers, limits and key counts"))
    prov.add_argument("--json", action="store_true")
    prov.set_defaults(func=lambda a: _run(_providers, a, read=True))

    models = with_config(
        sub.add_parser("models", help="list the unified endpoint's aliases, groups and providers")
    )
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=lambda a: _run(_models, a, read=True))

    config = sub.add_parser("config", help="configuration tools")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a YAML config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)

    from keygate.demo import register as register_demo

    register_demo(sub)
    sub.add_parser("bench", help="run the benchmark suite (keygate bench --help; bench/README.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its options are the benchmark's own, not ours
        from keygate.benchmark import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"keygate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a store or I/O problem: one line, not a traceback
        from keygate.store.base import StoreError

        if isinstance(exc, (StoreError, OSError)):
            print(f"keygate: {exc}", file=sys.stderr)
            return 1
        raise
