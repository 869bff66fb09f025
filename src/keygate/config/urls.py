"""URLs keygate is given: upstream bases it will send keys to, and service URLs it shows.

`check_upstream` is the one gate for every `base_url` (YAML, environment, admin API): an upstream
receives the pool's keys, so a base that reaches a cloud metadata service or smuggles a header
must never be accepted. It only reads the text (no DNS lookup: a name's address can change after
the check anyway). `mask_url` is the one way a URL with credentials is shown.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

MAX_URL_LEN = 2048

# Link-local and cloud metadata endpoints: refused unless KEYGATE_ALLOW_PRIVATE_UPSTREAMS.
# Loopback and private ranges stay allowed: local models live there.
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
_METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_PORT = re.compile(r"^[0-9]{1,5}$")
FORBIDDEN_CHARS = _FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def check_upstream(url: str, allow_private: bool = False) -> str:
    """`url` without its trailing slash, or ValueError saying what is wrong with it."""
    if len(url) > MAX_URL_LEN:
        raise ValueError(f"must be at most {MAX_URL_LEN} characters")
    bad = _FORBIDDEN_CHARS.search(url)
    if bad:
        raise ValueError(f"must not contain spaces, control characters or '\\' (found {bad[0]!r})")
    if not url.isascii():
        raise ValueError("must be ASCII (write an international domain name in punycode)")
    url = url.rstrip("/")
    head, sep, rest = url.partition("://")
    if not sep or head.lower() not in ("http", "https"):
        raise ValueError(f"must be an http(s) URL, got {_short(mask_url(url))!r}")
    if "?" in rest or "#" in rest:
        raise ValueError("must not have a query (?…) or fragment (#…)")
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        raise ValueError("must not contain credentials (user:password@); add keys as keys")
    if any(seg in (".", "..") for seg in path.split("/")) or re.search(r"%2e", path, re.I):
        raise ValueError("path must not contain '.' or '..' segments")
    host, port = _split_host_port(netloc)
    if port is not None and not (_PORT.match(port) and 1 <= int(port) <= 65535):
        raise ValueError(f"port must be 1-65535, got {port!r}")
    _check_host(host, allow_private)
    urlsplit(url)  # the URL library agrees (raises ValueError otherwise)
    return url


def split_host_port(netloc: str) -> tuple[str, str | None]:
    """`host[:port]` or `[v6]:port` as (host, port text or None); ValueError if malformed."""
    return _split_host_port(netloc)


def check_host(host: str, allow_private: bool = False) -> None:
    """ValueError unless `host` is a valid name or address keygate may send to."""
    _check_host(host, allow_private)


def _split_host_port(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValueError("IPv6 address must be closed with ']'")
        host, after = netloc[: end + 1], netloc[end + 1 :]
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after the IPv6 address")
        return host, after[1:] if after else None
    host, sep, port = netloc.partition(":")
    return host, port if sep else None


def _check_host(host: str, allow_private: bool) -> None:
    if not host:
        raise ValueError("must name a host")
    if host.startswith("["):
        literal = host[1:-1]
        if "%" in literal:
            raise ValueError(f"{host!r}: a zone id (%…) is not allowed")
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(literal)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        if ip.ipv4_mapped is not None or ip.sixtofour is not None or ip.teredo is not None:
            raise ValueError(f"{host!r}: write the IPv4 address itself")
        if str(ip) != literal.lower():
            raise ValueError(f"{host!r} is not in canonical form; write [{ip}]")
    else:
        name = host.lower()
        labels = name.split(".")
        if _NUMERIC_LABEL.match(labels[-1]):  # numeric: only a dotted-quad IPv4 address
            try:
                ip = ipaddress.IPv4Address(name)
            except ValueError:
                raise ValueError(
                    f"{host!r} is not a canonical IPv4 address (four decimal numbers 0-255)"
                ) from None
        else:
            if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
                raise ValueError(f"{host!r} is not a valid host name")
            if name in _METADATA_NAMES and not allow_private:
                raise ValueError(
                    f"{host!r} is a cloud metadata service "
                    "(set KEYGATE_ALLOW_PRIVATE_UPSTREAMS=1 to allow it)"
                )
            return
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{host!r} is not a unicast address")
    if allow_private:
        return
    if ip in _METADATA_ADDRESSES:
        raise ValueError(
            f"{host!r} is a cloud metadata address (set KEYGATE_ALLOW_PRIVATE_UPSTREAMS=1 to allow it)"
        )
    if any(ip in net for net in _LINK_LOCAL if net.version == ip.version):
        raise ValueError(
            f"{host!r} is link-local (set KEYGATE_ALLOW_PRIVATE_UPSTREAMS=1 to allow it)"
        )


def mask_url(url: str) -> str:
    """`url` for display: the whole userinfo (user and password) becomes `***`, and so does the
    value of any query parameter that names a secret. Splits at the *last* '@' before the
    path, as URL parsers do, so a password containing '@' (or ':' or '/') is never half shown."""
    head, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    at = rest.rfind("@")
    if at >= 0:
        rest = "***@" + rest[at + 1 :]
    base, qmark, query = rest.partition("?")
    if qmark:
        pairs = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            secret = re.search(r"pass|secret|token|key|auth", name, re.I)
            pairs.append(f"{name}=***" if eq and secret else pair)
        base += "?" + "&".join(pairs)
    return f"{head}://{base}"


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."
