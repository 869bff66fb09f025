"""The one place that reads the environment and the YAML config into typed settings.

Everything downstream takes a `Settings`; nothing else looks at `os.environ`. A bad value raises
`ConfigError` whose message names the file (or variable), the key and the problem in one line.
Each provider's settings and the checks on each field are `keygate.config.provider_config` (its names
are importable from here too).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from keygate.config.catalog import BUILTINS, KEY_STYLES, RESERVED_NAMES, env_names
from keygate.config.dburl import check_db_url
from keygate.config.error_rules import ErrorRules
from keygate.config.keyspec import parse_key_spec, split_proxy_option
from keygate.config.provider_config import (
    BOUNDS,
    MODEL_NAME_MAX,
    TUNABLE,
    ProviderConfig,
    coerce_field,
    field_problem,
    key_sources,
    short_repr,
    split_keys,
)
from keygate.config.proxies import ENV, proxy_list
from keygate.config.routing import RouteError, build_table
from keygate.config.urls import mask_url
from keygate.masking import mask

__all__ = [
    "BOUNDS",
    "MODEL_NAME_MAX",
    "TUNABLE",
    "ConfigError",
    "ProviderConfig",
    "Settings",
    "coerce_field",
    "field_problem",
    "key_sources",
    "load_settings",
    "split_keys",
]


class ConfigError(Exception):
    """A configuration problem a user must fix; the message is the one line to show."""


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    data_dir: Path = Path("keygate-data")
    config_path: Path | None = None
    default_provider: str = "cerebras"
    access_passwords: list[str] = field(default_factory=list)
    admin_password: str = ""
    admin_path: str = "/admin/"
    disguise: str = ""
    redis_url: str = ""
    db_url: str = ""
    secret_key: str = ""
    allow_private_upstreams: bool = False
    proxy: list[str] = field(default_factory=list)  # KEYGATE_PROXY (SPEC §16); [env]: *_PROXY vars
    flush_interval_ms: int = 5000
    recent_requests: int = 1000
    fleet_size: int = 1
    log_level: str = "info"
    log_format: str = "text"  # text | json (KEYGATE_LOG_FORMAT)
    drain_s: float = 30.0  # SIGTERM: how long running requests may take to finish
    auth_failures_per_min: int = 20  # wrong passwords per client address (0 = no limit)
    auth_failures_global_per_min: int = 100  # wrong passwords from everyone together
    trusted_proxies: list[str] = field(default_factory=list)  # believe X-Forwarded-For from these
    session_idle_s: int = 12 * 3600  # an admin session unused this long ends
    # client connections (keygate.http.connection_limits): nginx-like bounds on what a client may hold
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    body_timeout_s: float = 30.0  # the longest a request body may stall (KEYGATE_BODY_TIMEOUT_S)
    max_connections: int = 0  # 0: half the process's file limit
    models_ttl_s: float = (
        3600.0  # how long an upstream model list is trusted (KEYGATE_MODELS_TTL_S)
    )
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)  # the `models:` table as written

    @property
    def db_location(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'keygate.db').resolve()}"

    @property
    def store_kind(self) -> str:
        return "postgresql" if self.db_url.startswith(("postgresql:", "postgres:")) else "sqlite"

    @property
    def store_description(self) -> str:
        """Where the store lives, with any credentials in the URL masked."""
        encrypted = " (secrets encrypted)" if self.secret_key else ""
        if self.store_kind == "sqlite":
            return f"sqlite {self.db_location.removeprefix('sqlite:///')}{encrypted}"
        return f"postgresql {mask_url(self.db_url)}{encrypted}"


def _env_int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int = 1 << 31
) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}: must be a whole number, got {raw!r}"
        ) from None
    if not minimum <= value <= maximum:
        raise ConfigError(
            f"environment variable {name}: must be ≥ {minimum} and ≤ {maximum}, got {short_repr(value)}"
        )
    return value


def _env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}: must be a number, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"environment variable {name}: must be a number ≥ 0, got {raw!r}")
    return value


def _env_timeout(env: Mapping[str, str], name: str, default: float) -> float:
    value = _env_seconds(env, name, default)
    if value == 0:
        raise ConfigError(f"environment variable {name}: must be > 0 seconds, got 0")
    return value


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"environment variable {name}: must be 1/true/yes or 0/false/no, got {raw!r}")


def _env_networks(env: Mapping[str, str], name: str) -> list[str]:
    """Comma-separated addresses or CIDR blocks, normalised (`10.0.0.0/8`, `::1/128`)."""
    out = []
    for part in env.get(name, "").split(","):
        if part.strip():
            try:
                out.append(str(ipaddress.ip_network(part.strip(), strict=False)))
            except ValueError:
                raise ConfigError(
                    f"environment variable {name}: {part.strip()!r} is not an address or CIDR block"
                ) from None
    return out


def read_config_text(path: Path) -> str:
    """The config file's text, or a one-line error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None


def _load_yaml(path: Path, text: str | None = None) -> dict[str, Any]:
    if text is None:
        text = read_config_text(path)
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # safe loader, in C when libyaml is there
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: top level must be a mapping, got {type(data).__name__}"
        )
    return data


def _apply_provider_yaml(
    path: Path, name: str, raw: Any, providers: dict[str, ProviderConfig], allow_private: bool
) -> None:
    where = f"config file {path}: providers.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of settings, got {type(raw).__name__}")
    if name not in providers:
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"{where}: provider name must be lower-case letters, digits, '-' or '_'"
            )
        if name in RESERVED_NAMES:
            raise ConfigError(f"{where}: '{name}' is reserved and cannot be a provider name")
        if "base_url" not in raw:
            raise ConfigError(f"{where}.base_url: required for a custom provider")
        providers[name] = ProviderConfig(name=name, base_url="http://invalid", builtin=False)
    cfg = providers[name]
    unknown = sorted(
        map(str, set(raw) - set(TUNABLE) - {"keys", "key_style", "models", "proxy", "proxies"})
    )
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for key, value in raw.items():
        if key == "keys":
            if isinstance(value, str):
                value = split_keys(value)
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                raise ConfigError(f"{where}.keys: must be a list of strings")
            value = _key_specs(cfg, value, f"{where}.keys", allow_private)
            cfg.keys.extend(k for k in value if k.strip() and k not in cfg.keys)
            cfg.config_keys.extend(k for k in value if k.strip() and k not in cfg.config_keys)
        elif key == "models":
            if not isinstance(value, list) or not all(
                isinstance(m, str) and m.strip() and len(m) <= MODEL_NAME_MAX for m in value
            ):
                raise ConfigError(f"{where}.models: must be a list of model names")
            cfg.models = list(dict.fromkeys(value))
        elif key in ("proxy", "proxies"):
            if "proxy" in raw and "proxies" in raw:
                raise ConfigError(f"{where}: give proxy or proxies, not both")
            try:
                cfg.proxies = proxy_list(value, allow_private)
            except ValueError as exc:
                raise ConfigError(f"{where}.{field_problem(key, exc)}") from None
        elif key == "key_style":
            if value not in KEY_STYLES:
                raise ConfigError(
                    f"{where}.key_style: must be one of {', '.join(KEY_STYLES)}, got {value!r}"
                )
            cfg.key_style = value
        else:
            try:
                setattr(cfg, key, coerce_field(key, value, allow_private))
            except ValueError as exc:
                raise ConfigError(f"{where}.{field_problem(key, exc)}") from None


def _key_specs(
    cfg: ProviderConfig, tokens: list[str], where: str, allow_private: bool = False
) -> list[str]:
    """The secrets of `secret|tier=1|weight=3|proxy=URL` tokens; their options go to
    `cfg.key_options` (the proxy to `cfg.key_proxies`). A bad option is a ConfigError naming
    `where`, the key's place and its masked form (a proxy's password masked too)."""
    out = []
    for i, token in enumerate(tokens):
        if "|" not in token:
            out.append(token)
            continue
        try:
            token, proxy = split_proxy_option(token)
            secret, options = parse_key_spec(token)
            if proxy is not None:
                cfg.key_proxies[secret] = proxy_list(proxy, allow_private)[0]
        except ValueError as exc:
            shown = mask(token.split("|", 1)[0].strip())
            raise ConfigError(f"{where}[{i}] ({shown}): {exc}") from None
        if options:
            cfg.key_options[secret] = options
        out.append(secret)
    return out


def _models_yaml(path: Any, raw: Any, providers: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level `models:` table, validated against the providers (routing.build_table)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: models: must be a mapping of name to target(s)")
    raw = {str(k): v for k, v in raw.items()}
    try:
        build_table(raw, providers)
    except RouteError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return raw


def load_settings(
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_text: str | None = None,
) -> Settings:
    """Read env (default `os.environ`), then the YAML file, then CLI `overrides` (host/port/workers).

    `config_text` is the file's text as read earlier: a worker process starts from the text its
    supervisor accepted, not from whatever the file holds by then."""
    env = os.environ if env is None else env
    s = Settings()
    s.host = env.get("KEYGATE_HOST", s.host) or s.host
    port_var = "KEYGATE_PORT" if env.get("KEYGATE_PORT") else "PORT"
    s.port = _env_int(env, port_var, s.port, minimum=0)
    if s.port > 65535:
        raise ConfigError(
            f"environment variable {port_var}: must be a port number (0-65535), got {s.port}"
        )
    s.workers = _env_int(env, "KEYGATE_WORKERS", 1, minimum=1, maximum=1024)
    s.data_dir = Path(env.get("KEYGATE_DATA_DIR") or "keygate-data")
    # comma separated only: a space or quote inside a password is part of it (split_keys would
    # turn "correct horse" into two weak passwords)
    passwords = ",".join(
        filter(None, [env.get("ACCESS_PASSWORD"), env.get("AUTH_PASSWORD")])
    ).split(",")
    s.access_passwords = list(dict.fromkeys(p.strip() for p in passwords if p.strip()))
    s.admin_password = env.get("ADMIN_PASSWORD", "")
    s.redis_url = env.get("KEYGATE_REDIS_URL", "")
    s.db_url = env.get("KEYGATE_DB", "")
    if s.db_url:
        try:
            check_db_url(s.db_url)
        except ValueError as exc:
            raise ConfigError(f"environment variable KEYGATE_DB: {exc}") from None
    s.secret_key = env.get("KEYGATE_SECRET_KEY", "")
    s.allow_private_upstreams = _env_bool(env, "KEYGATE_ALLOW_PRIVATE_UPSTREAMS")
    proxy = (env.get("KEYGATE_PROXY") or "").strip()
    if proxy:
        try:
            s.proxy = (
                [ENV] if proxy == ENV else proxy_list(proxy.split(","), s.allow_private_upstreams)
            )
        except ValueError as exc:
            raise ConfigError(
                f"environment variable KEYGATE_PROXY{field_problem('', exc)}"
            ) from None
    s.flush_interval_ms = _env_int(env, "KV_FLUSH_INTERVAL_MS", 5000, maximum=3_600_000)
    s.recent_requests = _env_int(env, "KEYGATE_RECENT_REQUESTS", 1000, minimum=1, maximum=1_000_000)
    s.fleet_size = _env_int(env, "KEYGATE_FLEET_SIZE", 1, minimum=1, maximum=10_000)
    s.disguise = env.get("KEYGATE_DISGUISE", "").strip().lower()
    if s.disguise not in ("", "nginx"):
        raise ConfigError(
            f"environment variable KEYGATE_DISGUISE: must be 'nginx' or empty, got {s.disguise!r}"
        )
    admin_path = env.get("KEYGATE_ADMIN_PATH") or "/admin/"
    s.admin_path = "/" + admin_path.strip("/") + "/"
    if s.admin_path == "//" or s.admin_path.strip("/").split("/")[0] in RESERVED_NAMES - {"admin"}:
        raise ConfigError(f"environment variable KEYGATE_ADMIN_PATH: cannot be {admin_path!r}")
    s.log_level = (env.get("KEYGATE_LOG_LEVEL") or "info").lower()
    s.log_format = (env.get("KEYGATE_LOG_FORMAT") or "text").strip().lower()
    if s.log_format not in ("text", "json"):
        raise ConfigError(
            f"environment variable KEYGATE_LOG_FORMAT: must be 'text' or 'json', got {s.log_format!r}"
        )
    s.drain_s = _env_seconds(env, "KEYGATE_DRAIN_S", s.drain_s)
    s.auth_failures_per_min = _env_int(env, "KEYGATE_AUTH_FAILURES_PER_MIN", 20)
    s.auth_failures_global_per_min = _env_int(env, "KEYGATE_AUTH_FAILURES_GLOBAL_PER_MIN", 100)
    s.trusted_proxies = _env_networks(env, "KEYGATE_TRUSTED_PROXIES")
    s.session_idle_s = _env_int(env, "KEYGATE_SESSION_IDLE_S", 12 * 3600, minimum=1)
    s.max_request_line = _env_int(env, "KEYGATE_MAX_REQUEST_LINE", s.max_request_line, 256)
    s.max_header_bytes = _env_int(env, "KEYGATE_MAX_HEADER_BYTES", s.max_header_bytes, 1024)
    s.max_headers = _env_int(env, "KEYGATE_MAX_HEADERS", s.max_headers, minimum=8)
    s.header_timeout_s = _env_timeout(env, "KEYGATE_HEADER_TIMEOUT_S", s.header_timeout_s)
    s.idle_timeout_s = _env_timeout(env, "KEYGATE_IDLE_TIMEOUT_S", s.idle_timeout_s)
    s.body_timeout_s = _env_timeout(env, "KEYGATE_BODY_TIMEOUT_S", s.body_timeout_s)
    s.max_connections = _env_int(env, "KEYGATE_MAX_CONNECTIONS", 0)
    s.models_ttl_s = _env_seconds(env, "KEYGATE_MODELS_TTL_S", s.models_ttl_s) or s.models_ttl_s

    providers = {
        name: ProviderConfig(
            name=name,
            base_url=b.base_url,
            key_style=b.key_style,
            rps=b.rps,
            burst=b.burst,
            max_conn=b.max_conn,
            error_rules=ErrorRules(b.error_rules),
        )
        for name, b in BUILTINS.items()
    }
    default_provider = env.get("KEYGATE_DEFAULT_PROVIDER") or ""

    path = config_path or env.get("KEYGATE_CONFIG") or None
    if path:
        s.config_path = Path(path)
        data = _load_yaml(s.config_path, config_text)
        unknown = sorted(
            map(str, set(data) - {"default_provider", "providers", "models", "models_ttl_s"})
        )
        if unknown:
            raise ConfigError(f"config file {path}: unknown field(s) {', '.join(unknown)}")
        provs = data.get("providers") or {}
        if not isinstance(provs, dict):
            raise ConfigError(
                f"config file {path}: providers: must be a mapping of provider name to settings"
            )
        for name, raw in provs.items():
            _apply_provider_yaml(
                s.config_path, str(name), raw or {}, providers, s.allow_private_upstreams
            )
        if "default_provider" in data and not default_provider:
            default_provider = str(data["default_provider"])
            if default_provider not in providers:
                raise ConfigError(
                    f"config file {path}: default_provider: no provider named {default_provider!r}"
                )

    # Environment wins over the file for bases and adds keys (SPEC §2). KEYGATE_<NAME>_BASE_URL
    # wins over <NAME>_BASE_URL, the older form that the provider SDKs read as well.
    for name, cfg in providers.items():
        base_vars = [v for v in env_names(name, "BASE_URL") if env.get(v)]
        if base_vars:
            try:
                cfg.base_url = coerce_field(
                    "base_url", env[base_vars[0]], s.allow_private_upstreams
                )
            except ValueError as exc:
                raise ConfigError(f"environment variable {base_vars[0]}: {exc}") from None
        for var in env_names(name, "API_KEYS"):
            extra = _key_specs(
                cfg,
                split_keys(env.get(var, "")),
                f"environment variable {var}",
                s.allow_private_upstreams,
            )
            cfg.keys.extend(k for k in extra if k not in cfg.keys)

    s.default_provider = default_provider or "cerebras"
    if s.default_provider not in providers:
        raise ConfigError(
            f"environment variable KEYGATE_DEFAULT_PROVIDER: no provider named {s.default_provider!r}"
        )
    s.providers = providers
    if path:
        s.models = _models_yaml(path, data.get("models"), providers)
        if "models_ttl_s" in data:
            ttl = data["models_ttl_s"]
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 86400:
                raise ConfigError(f"config file {path}: models_ttl_s: must be > 0 and ≤ 86400")
            s.models_ttl_s = float(ttl)
    shadowed = s.admin_path.strip("/").split("/")[0]
    if shadowed in providers:
        raise ConfigError(
            f"environment variable KEYGATE_ADMIN_PATH: {admin_path!r} overlaps provider {shadowed!r}"
        )

    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(s, key, value)
    if not 0 <= s.port <= 65535:  # only the command line can still be out of range here
        raise ConfigError(f"--port: must be a port number (0-65535), got {s.port}")
    if s.workers < 1:
        raise ConfigError(f"--workers: must be ≥ 1, got {s.workers}")
    return s
