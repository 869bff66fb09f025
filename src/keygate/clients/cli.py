"""`keygate clients add|list|update|rm`: client keys in the server's store, from the shell.

A running server picks the change up through the store's change feed (within a second).
The key is printed once, by `add`; nothing else ever shows it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from keygate.clients import ops


def _doc(args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if getattr(args, "name", None) is not None:
        doc["name"] = args.name
    for limit in ("rpm", "rpd", "tpd", "monthly_tokens"):
        value = getattr(args, limit)
        if value is not None:
            doc[limit] = value
    for field in ("providers", "models"):
        value = getattr(args, field)
        if value is not None:
            doc[field] = [v.strip() for v in value.split(",") if v.strip()]
    if args.expires is not None:
        doc["expires_at"] = None if args.expires in ("", "never") else _expiry(args.expires)
    if getattr(args, "enable", False):
        doc["enabled"] = True
    if getattr(args, "disable", False):
        doc["enabled"] = False
    return doc


def _expiry(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # ISO 8601, checked by keygate.store.client_fields


def _fail(exc: ValueError) -> int:
    print(f"keygate: {exc}", file=sys.stderr)
    return 2


async def add(ctx: Any) -> int:
    store, _, args, *_ = ctx
    try:
        rec, key = await ops.create(store, _doc(args))
    except ValueError as exc:
        return _fail(exc)
    print(f"added client {rec.name!r} id={rec.id}")
    print(f"key: {key}")
    print("(shown once: keygate keeps only its hash)", file=sys.stderr)
    return 0


async def list_(ctx: Any) -> int:
    store, _, args, *_ = ctx
    rows = await ops.listing(store, None, time.time())
    if args.json:
        print(orjson.dumps({"clients": rows, "total": len(rows)}).decode())
        return 0
    print(f"{'id':>5}  {'name':<20} {'key':<16} {'status':<9} {'today':>7} {'month':>8}  limits")
    for c in rows:
        limits = " ".join(
            f"{k}={c[k]}" for k in ("rpm", "rpd", "tpd", "monthly_tokens") if c[k] is not None
        )
        print(
            f"{c['id']:>5}  {c['name'][:20]:<20} {c['masked']:<16} {c['status']:<9}"
            f" {c['usage']['today']['requests']:>7} {c['usage']['month']['requests']:>8}"
            f"  {limits or '-'}"
        )
    print(f"{len(rows)} client(s)")
    return 0


async def update(ctx: Any) -> int:
    store, _, args, *_ = ctx
    try:
        rec = await store.update_client(args.id, _doc(args))
    except ValueError as exc:
        return _fail(exc)
    if rec is None:
        print(f"no client with id {args.id}", file=sys.stderr)
        return 1
    print(f"updated client {rec.name!r} id={rec.id} ({ops.status(rec, time.time())})")
    return 0


async def rm(ctx: Any) -> int:
    store, _, args, *_ = ctx
    missing = 0
    for client_id in args.ids:
        if await store.delete_client(client_id):
            print(f"deleted client {client_id}")
        else:
            print(f"no client with id {client_id}", file=sys.stderr)
            missing += 1
    return 1 if missing else 0


def register(
    sub: Any,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    run: Callable[..., int],
) -> None:
    """The `clients` command and its four subcommands, on `keygate`'s parser."""
    clients = sub.add_parser("clients", help="manage client keys (users with their own limits)")
    csub = clients.add_subparsers(dest="clients_command", required=True)

    def policy(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        for limit in ("rpm", "rpd", "tpd"):
            sp.add_argument(f"--{limit}", type=int, help=f"{limit} limit (0: none)")
        sp.add_argument("--monthly-tokens", dest="monthly_tokens", type=int)
        sp.add_argument("--providers", help="comma-separated provider names ('' for any)")
        sp.add_argument("--models", help="comma-separated models and provider/* ('' for any)")
        sp.add_argument("--expires", help="ISO 8601 time or Unix seconds; 'never' clears it")
        return sp

    a = policy(with_config(csub.add_parser("add", help="issue a client key (printed once)")))
    a.add_argument("name")
    a.set_defaults(func=lambda x: run(add, x, read=False))
    ls = with_config(csub.add_parser("list", help="list clients with usage"))
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=lambda x: run(list_, x, read=True))
    up = policy(with_config(csub.add_parser("update", help="change a client's limits/lists")))
    up.add_argument("id", type=int)
    up.add_argument("--name")
    on_off = up.add_mutually_exclusive_group()
    on_off.add_argument("--enable", action="store_true")
    on_off.add_argument("--disable", action="store_true")
    up.set_defaults(func=lambda x: run(update, x, read=True))
    r = with_config(csub.add_parser("rm", help="delete client keys by id"))
    r.add_argument("ids", nargs="+", type=int)
    r.set_defaults(func=lambda x: run(rm, x, read=True))
