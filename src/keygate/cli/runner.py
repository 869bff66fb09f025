"""Running a subcommand on the server's store: `run` finds the store and the config the server
uses (keygate.cli.locate), opens the store for the command and closes it after; with the helpers the
store's subcommands share.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from keygate.config.settings import ConfigError, Settings


def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a subcommand the `--config` option that finds the server's config and store."""
    sp.add_argument("--config", help="YAML config file (or KEYGATE_CONFIG)")
    return sp


def run(coro_fn: Callable[[Any], Awaitable[int]], args: argparse.Namespace, read: bool) -> int:
    """Run a store command on the server's store and config (see keygate.cli.locate); a read
    command refuses a store that does not exist rather than creating an empty one."""
    from keygate.cli.locate import locate, require_existing_store
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


def apply_overrides(settings: Settings, overrides: dict[str, dict[str, Any]]) -> None:
    """Run-time provider settings from the store win over config and env, as in the server."""
    from keygate.config.overrides import apply_stored

    apply_stored(settings.providers, overrides, settings.allow_private_upstreams)


def check_provider(settings: Settings, name: str) -> None:
    if name not in settings.providers:
        raise ConfigError(f"no provider named {name!r} (known: {', '.join(settings.providers)})")
