"""The store's location (`KEYGATE_DB`), checked at start-up so a typo fails with one clear line
instead of a driver error at the first write.

A PostgreSQL URL may name several hosts (`postgresql://h1:5432,h2:5432/db?...`, as libpq and
asyncpg read it): keygate then needs `target_session_attrs=read-write` (or `primary`), or it
could settle on a standby and fail every write. Messages never show the user or password.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

WRITABLE = ("read-write", "primary")
_PORT = re.compile(r"^[0-9]{1,5}$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._%-]+)$")  # %: an escaped socket path


def check_db_url(url: str) -> None:
    """ValueError saying what is wrong with `url` (the value of KEYGATE_DB), if anything."""
    if not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
        raise ValueError(f"must start with postgresql:// or sqlite:///, got {url.split(':')[0]!r}")
    if url.startswith("sqlite:"):
        return
    rest, _, query = url.partition("://")[2].partition("?")
    # after the last '@', as `mask_url` splits: an unescaped '/' or ',' in a password is
    # never read as a host (nor shown in a message)
    netloc, _, path = rest.rpartition("@")[2].partition("/")
    hosts = netloc.split(",")
    if len(hosts) < 2:
        return  # one host: the driver's own checks, as ever
    for n, spec in enumerate(hosts, 1):
        host, port = _host_port(spec)
        if not host or not _HOST.match(host):
            raise ValueError(f"host {n} of {len(hosts)} is missing or not a host name ({spec!r})")
        if port is not None and not (_PORT.match(port) and 1 <= int(port) <= 65535):
            raise ValueError(f"host {n} ({host}): port must be 1-65535, got {port!r}")
    if not path.strip("/"):
        raise ValueError("a URL with several hosts must name the database (…/DBNAME)")
    attrs = parse_qs(query).get("target_session_attrs", [""])[-1]
    if attrs not in WRITABLE:
        got = f" (got {attrs!r})" if attrs else ""
        raise ValueError(
            "with several hosts, add ?target_session_attrs=read-write so keygate connects to "
            f"the writable one{got}"
        )


def _host_port(spec: str) -> tuple[str, str | None]:
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            return spec, None
        after = spec[end + 1 :]
        return spec[: end + 1], after[1:] if after.startswith(":") else None
    host, sep, port = spec.partition(":")
    return host, port if sep else None
