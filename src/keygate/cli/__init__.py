"""Command line: serve, reload, keys, clients, providers, models, config check, demo, bench.

Key and provider commands work on the same store as the server (SQLite's WAL or PostgreSQL make
that safe while it runs); a running server picks their changes up within a second.

This package builds the parser and runs a command (`main`, the console script). The commands
are its modules `serve` (serve, reload), `keys`, `providers` (providers, models) and `config`
(config check), then `keygate.clients.cli` (clients) and `keygate.cli.demo` (demo); `runner` opens
the server's store for the commands that work on it.
"""

from __future__ import annotations

import argparse
import sys

from keygate import __version__
from keygate.cli import config, keys, providers, serve
from keygate.cli.runner import run, with_config
from keygate.config.settings import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keygate", description="Self-hosted gateway for LLM provider APIs."
    )
    p.add_argument("--version", action="version", version=f"keygate {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve.register(sub)
    keys.register(sub)

    from keygate.clients.cli import register as register_clients

    register_clients(sub, with_config, run)
    providers.register(sub)
    config.register(sub)

    from keygate.cli.demo import register as register_demo

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
