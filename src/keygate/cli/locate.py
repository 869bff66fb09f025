"""Where the server's config and store are, so the CLI works on what the server works on.

`keygate serve` writes `server.json` into its data dir: the absolute path of its config file,
the store when it is not the data dir's SQLite file, and the names (never the values) of the
environment variables it read upstreams and secrets from. The file is 0600 and holds no secret:
a PostgreSQL URL with a password is recorded masked, with the variable that holds it. The CLI
finds the data dir the way the server does (KEYGATE_DATA_DIR, default `./keygate-data`) and
reads that record; `--config`, KEYGATE_CONFIG and KEYGATE_DB still win over it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from keygate import __version__
from keygate.config.settings import ConfigError, Settings, load_settings

RECORD_NAME = "server.json"
_PASSWORD_IN_URL = re.compile(r"//([^:/@]*):[^@/]*@")


def data_dir_of(env: Mapping[str, str]) -> Path:
    return Path(env.get("KEYGATE_DATA_DIR") or "keygate-data")


def _mask_url(url: str) -> str:
    return _PASSWORD_IN_URL.sub(r"//\1:***@", url)


def write_record(settings: Settings, env: Mapping[str, str]) -> Path:
    """Record this server's config and store in its data dir (atomically, mode 0600)."""
    data_dir = settings.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store: dict[str, Any] = {"kind": settings.store_kind}
    if settings.db_url:
        masked = _mask_url(settings.db_url)
        store["url"] = masked
        store["env"] = "KEYGATE_DB"
        store["complete"] = masked == settings.db_url  # no password: the CLI may use it as is
    record = {
        "written_by": f"keygate serve {__version__}",
        "written_at": time.time(),
        "pid": os.getpid(),
        "config": str(settings.config_path.resolve()) if settings.config_path else None,
        "store": store,
        "flush_interval_ms": settings.flush_interval_ms,
        "secret_key_env": "KEYGATE_SECRET_KEY" if settings.secret_key else None,
        "base_url_env": sorted(k for k in env if k.endswith("_BASE_URL") and env[k]),
    }
    path = data_dir / RECORD_NAME
    tmp = data_dir / f".{RECORD_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(record, option=orjson.OPT_INDENT_2))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_record(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / RECORD_NAME
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable server record ({exc}); remove it") from None
    return data if isinstance(data, dict) else None


@dataclass(slots=True)
class Located:
    settings: Settings
    config_from: str  # "--config", "KEYGATE_CONFIG", "the server's record" or ""
    store_from: str  # "KEYGATE_DB", "the server's record" or "" (the data dir)
    notes: list[str] = field(default_factory=list)
    record: dict[str, Any] | None = None

    @property
    def sqlite_path(self) -> Path | None:
        loc = self.settings.db_location
        return Path(loc.removeprefix("sqlite:///")) if loc.startswith("sqlite:///") else None

    def describe(self) -> str:
        s = self.settings
        store = s.store_description + (f" (from {self.store_from})" if self.store_from else "")
        if s.config_path:
            config = f"{s.config_path.resolve()} (from {self.config_from})"
        else:
            config = "none (built-in providers and the environment)"
        return f"using store {store}; config {config}"


def locate(
    env: Mapping[str, str],
    config: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Located:
    """Settings for a CLI command: the server's record fills what the command line and the
    environment leave open."""
    record = read_record(data_dir_of(env))
    merged = dict(env)
    config_from = store_from = ""
    notes: list[str] = []
    if config:
        config_from = "--config"
    elif env.get("KEYGATE_CONFIG"):
        config_from = "KEYGATE_CONFIG"
    elif record and record.get("config"):
        config = str(record["config"])
        config_from = "the server's record"
        if not Path(config).is_file():
            raise ConfigError(
                f"the server's record ({data_dir_of(env) / RECORD_NAME}) names config {config},"
                " which is gone: pass --config"
            )
    if env.get("KEYGATE_DB"):
        store_from = "KEYGATE_DB"
    elif record and isinstance(record.get("store"), dict) and record["store"].get("url"):
        store = record["store"]
        if not store.get("complete"):
            raise ConfigError(
                f"the server using {data_dir_of(env)} keeps its store at {store['url']}"
                f" (from {store.get('env') or 'KEYGATE_DB'}): set {store.get('env') or 'KEYGATE_DB'}"
                " to that URL for this command"
            )
        merged["KEYGATE_DB"] = str(store["url"])
        store_from = "the server's record"
    if record:
        if record.get("secret_key_env") and not env.get(str(record["secret_key_env"])):
            notes.append(
                f"the server encrypts keys with {record['secret_key_env']}, which is not set here"
            )
        missing = [n for n in record.get("base_url_env") or [] if not env.get(str(n))]
        if missing:
            notes.append(
                f"the server had {', '.join(missing)} set, which is not set here:"
                " those providers use their configured or built-in upstream"
            )
    settings = load_settings(merged, config, overrides)
    return Located(settings, config_from, store_from, notes, record)


def require_existing_store(located: Located) -> None:
    """Read commands never create a store: a missing SQLite file is a wrong location, not an
    empty store."""
    path = located.sqlite_path
    if path is not None and not path.exists():
        from keygate.store.base import StoreError

        raise StoreError(
            f"no store at {path}: set KEYGATE_DATA_DIR to the server's data dir (or KEYGATE_DB);"
            " this command does not create one"
        )


def flush_note(located: Located) -> str:
    """`keys list` reads the store, which the server writes every flush interval."""
    ms = located.settings.flush_interval_ms
    with contextlib.suppress(TypeError, ValueError):
        if located.record and located.record.get("flush_interval_ms") is not None:
            ms = int(located.record["flush_interval_ms"])
    if ms <= 0:
        return "a running server keeps counters in memory (KV_FLUSH_INTERVAL_MS=0): counts show stored values only"
    return (
        f"status and counters are the store's: a running server writes them every {ms / 1000:g} s,"
        " so they may lag by that much (the admin page shows live values)"
    )
