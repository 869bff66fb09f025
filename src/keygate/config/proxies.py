"""Egress proxies (SPEC §16): the URLs a provider's requests leave through, checked once.

A proxy URL is checked like an upstream base (`config.urls`): no control characters, a real
host and port, no link-local or metadata address unless private upstreams are allowed. Unlike a
base it may carry `user:pass@` (the proxy's own login), so it is only ever shown through
`mask_url`. `direct` means no proxy; `env` (only as KEYGATE_PROXY) means the standard
HTTPS_PROXY/HTTP_PROXY/NO_PROXY variables, which are read nowhere else.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from keygate.config.urls import FORBIDDEN_CHARS, MAX_URL_LEN, check_host, mask_url, split_host_port

DIRECT = "direct"
ENV = "env"
SCHEMES = ("http", "https", "socks5", "socks5h")
DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
MAX_PROXIES = 1000


def check_proxy(url: str, allow_private: bool = False) -> str:
    """`url` as given (or `direct`), or ValueError saying what is wrong, password never shown."""
    if not isinstance(url, str):
        raise ValueError(f"must be a URL string, got {type(url).__name__}")
    if url.strip().lower() == DIRECT:
        return DIRECT
    if len(url) > MAX_URL_LEN:
        raise ValueError(f"must be at most {MAX_URL_LEN} characters")
    bad = FORBIDDEN_CHARS.search(url)
    if bad:
        raise ValueError(f"must not contain spaces, control characters or '\\' (found {bad[0]!r})")
    if not url.isascii():
        raise ValueError("must be ASCII")
    head, sep, rest = url.partition("://")
    if not sep or head.lower() not in SCHEMES:
        shown = mask_url(url) if sep else "***"
        raise ValueError(
            f"must be a proxy URL ({', '.join(s + '://' for s in SCHEMES)}), got {shown[:60]!r}"
        )
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest or "#" in rest:
        raise ValueError("must be scheme://[user:pass@]host:port with no path or query")
    userinfo, at, netloc = rest.rpartition("@")
    if at and not userinfo.partition(":")[0]:
        raise ValueError("credentials must be user:password@")
    host, port = split_host_port(netloc)
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"port must be 1-65535, got {port[:10]!r}")
    check_host(host, allow_private)
    return f"{head.lower()}://{rest}"


def proxy_list(value: Any, allow_private: bool = False) -> list[str]:
    """One URL, a list of them, or `direct`, as the checked list (`[direct]` for no proxy).
    A problem in one item is raised as `[i]: problem`."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("must be a proxy URL or a non-empty list of them")
    if len(items) > MAX_PROXIES:
        raise ValueError(f"at most {MAX_PROXIES} proxies")
    out: list[str] = []
    for i, item in enumerate(items):
        try:
            url = check_proxy(item, allow_private)
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}" if len(items) > 1 else str(exc)) from None
        if url not in out:
            out.append(url)
    if DIRECT in out and len(out) > 1:
        raise ValueError("'direct' cannot be mixed with proxy URLs")
    return out


def proxy_parts(url: str) -> tuple[str, str, int, str | None, str | None]:
    """(scheme, host, port, user, password) of a checked proxy URL."""
    scheme, _, rest = url.partition("://")
    userinfo, at, netloc = rest.rpartition("@")
    host, port = split_host_port(netloc)
    user = password = None
    if at:
        name, _, secret = userinfo.partition(":")
        user, password = unquote(name), unquote(secret)
    host = host[1:-1] if host.startswith("[") else host
    return scheme, host, int(port) if port else DEFAULT_PORTS[scheme], user, password


def show_proxy(url: str) -> str:
    """A proxy as shown anywhere (API, banner, log, errors): its password never."""
    return url if url == DIRECT else mask_url(url)
