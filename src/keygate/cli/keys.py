"""`keygate keys add|import|list|rm|limit|update|test`: provider keys in the server's store, from the
shell. A running server picks the changes up through the store's change feed (within a second).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

from keygate.cli.runner import apply_overrides, check_provider, run, with_config
from keygate.config.settings import ConfigError


async def _keys_add(ctx: Any) -> int:
    store, settings, args, *_ = ctx
    from keygate.runtime.keyops import Duplicate, KeyOps

    check_provider(settings, args.provider)
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
    from keygate.runtime.keyops import KeyOps
    from keygate.store.base import parse_key_entries

    check_provider(settings, args.provider)
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
    from keygate.config.quotaday import day_window

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
    from keygate.cli.locate import flush_note
    from keygate.runtime.keyops import KeyOps

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
            "tier",
            "weight",
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
    from keygate.runtime.keyops import KeyOps

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
    from keygate.config.settings import BOUNDS

    fields = {f: getattr(args, f) for f in LIMIT_FIELDS if getattr(args, f) is not None}
    if not fields:
        raise ConfigError(f"keys limit: give at least one of --{', --'.join(LIMIT_FIELDS)}")
    for name, value in fields.items():
        high = int(BOUNDS["key_" + name])
        if not 0 <= value <= high:
            raise ConfigError(f"keys limit: --{name} must be ≥ 0 and ≤ {high}, got {value}")
    return await _update_each(store, args.ids, fields, LIMIT_FIELDS)


async def _update_each(store: Any, ids: list[int], fields: dict[str, int], shown: Any) -> int:
    """`fields` written to each key of `ids`, each printed with the `shown` fields; exit 1
    when some id names no key."""
    missing = 0
    for key_id in ids:
        rec = await store.update_key(key_id, **fields)
        if rec is None:
            print(f"no key with id {key_id}", file=sys.stderr)
            missing += 1
            continue
        values = ", ".join(f"{n}={getattr(rec, n)}" for n in shown)
        print(f"{rec.id:>6}  {rec.provider:<12} {rec.masked:<12} {values}")
    return 1 if missing else 0


async def _keys_update(ctx: Any) -> int:
    """Set keys' tier and weight (SPEC §15) in the store; a running server applies them from
    its change feed."""
    store, _, args, *_ = ctx
    from keygate.store.base import TIER_MAX, WEIGHT_MAX

    fields = {f: getattr(args, f) for f in ("tier", "weight") if getattr(args, f) is not None}
    if not fields:
        raise ConfigError("keys update: give --tier and/or --weight")
    for name, low, high in (("tier", 0, TIER_MAX), ("weight", 1, WEIGHT_MAX)):
        value = fields.get(name)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"keys update: --{name} must be ≥ {low} and ≤ {high}, got {value}")
    return await _update_each(store, args.ids, fields, ("tier", "weight"))


async def _keys_test(ctx: Any) -> int:
    """Test keys against their configured upstream and record what the test proved, like the
    admin page's test (keygate.runtime.probe.run_key_test); a running server picks it up."""
    store, settings, args, *_ = ctx
    import aiohttp

    from keygate.runtime.keyops import KeyOps

    if args.provider:
        check_provider(settings, args.provider)
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
    apply_overrides(settings, await store.get_provider_overrides())
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


def register(sub: Any) -> None:
    """The `keys` command and its seven subcommands, on `keygate`'s parser."""
    keys = sub.add_parser("keys", help="manage provider keys in the store")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    add = with_config(ksub.add_parser("add", help="add one key"))
    add.add_argument("provider")
    add.add_argument(
        "key", help="the key, or - to read it from stdin (keeps it out of shell history)"
    )
    add.add_argument("--label")
    add.set_defaults(func=lambda a: run(_keys_add, a, read=False))
    imp = with_config(
        ksub.add_parser(
            "import", help="import many keys (newlines, commas, whitespace or a JSON array)"
        )
    )
    imp.add_argument("provider")
    imp.add_argument("file", nargs="?", help="file to read, or - / nothing for stdin")
    imp.add_argument("-v", "--verbose", action="store_true", help="print every line's result")
    imp.set_defaults(func=lambda a: run(_keys_import, a, read=False))
    lst = with_config(ksub.add_parser("list", help="list keys (masked)"))
    lst.add_argument("--provider")
    lst.add_argument("--status", choices=["active", "cooling", "invalid", "exhausted", "disabled"])
    lst.add_argument("-q", "--search", dest="q")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--offset", type=int, default=0)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=lambda a: run(_keys_list, a, read=True))
    rm = with_config(ksub.add_parser("rm", help="delete keys by id"))
    rm.add_argument("ids", nargs="+", type=int)
    rm.set_defaults(func=lambda a: run(_keys_rm, a, read=True))
    limit = with_config(
        ksub.add_parser(
            "limit", help="set keys' own quota limits (0 = the provider's key_* default)"
        )
    )
    limit.add_argument("ids", nargs="+", type=int)
    for name in LIMIT_FIELDS:
        limit.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, metavar="N")
    limit.set_defaults(func=lambda a: run(_keys_limit, a, read=True))
    update = with_config(
        ksub.add_parser(
            "update", help="set keys' tier (lower tiers are spent first) and weight in it"
        )
    )
    update.add_argument("ids", nargs="+", type=int)
    update.add_argument("--tier", type=int, metavar="N", help="0 (the default) is spent first")
    update.add_argument("--weight", type=int, metavar="W", help="1-100: the share in its tier")
    update.set_defaults(func=lambda a: run(_keys_update, a, read=True))
    test = with_config(
        ksub.add_parser("test", help="test keys against their upstream (model list)")
    )
    test.add_argument("ids", nargs="*", type=int)
    test.add_argument("--provider", help="test every key of this provider")
    test.set_defaults(func=lambda a: run(_keys_test, a, read=True))
