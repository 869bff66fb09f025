"""`keygate config check`: every problem of a config file and the environment, one line each."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from keygate.config.settings import load_settings


def cmd_config_check(args: argparse.Namespace) -> int:
    """Every problem of the file and the environment, one line each; exit 2 if there is any."""
    from keygate.cli.configcheck import check_config

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


def register(sub: Any) -> None:
    """The `config` command and its `check` subcommand, on `keygate`'s parser."""
    config = sub.add_parser("config", help="configuration tools")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a YAML config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
