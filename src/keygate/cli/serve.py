"""`keygate serve` and `keygate reload`: run the gateway, and make the running one re-read its
config file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from keygate.config.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "workers")}
    return load_settings(os.environ, getattr(args, "config", None), overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from keygate.observe.logs import setup_logging
    from keygate.server.listen import bind_or_explain, server_options

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
            from keygate.server.workers import run_workers

            return run_workers(settings, args, options, sockets)
        from keygate.server.app import App
        from keygate.server.lifecycle import serve

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
    from keygate.cli.locate import write_record

    try:
        write_record(settings, os.environ)
    except OSError as exc:  # the server runs anyway; only the CLI's defaults are lost
        print(f"keygate: warning: cannot record the config location: {exc}", file=sys.stderr)


def cmd_reload(args: argparse.Namespace) -> int:
    """Signal the server that uses this data dir (KEYGATE_DATA_DIR) to re-read its config."""
    from keygate.server.lifecycle import send_reload

    env = {k: v for k, v in os.environ.items() if k != "KEYGATE_CONFIG"}  # not ours to read
    code, message = send_reload(load_settings(env).data_dir, args.wait)
    print(
        message if code == 0 else f"keygate: {message}",
        file=sys.stdout if code == 0 else sys.stderr,
    )
    return code


def register(sub: Any) -> None:
    """The `serve` and `reload` commands, on `keygate`'s parser."""
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
