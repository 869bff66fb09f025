"""The Redis connection: one URL parse for every socket, and the pipelined hot-path connection.

`RedisTarget.parse` reads `KEYGATE_REDIS_URL` with redis-py's own parser, so the pipelined
connection and the pub/sub client (redis-py) connect with the same host, credentials, database
and TLS settings (`rediss://…?ssl_ca_certs=…` included); keygate's own options ride in the same
query string (`?lease_s=15&timeout_s=0.5`). Under Sentinel
(`redis+sentinel://[:password@]host1:26379,host2/MASTER[/db]`) the same settings are kept
without an address: `RedisTarget.at` fills in the master the sentinels name (redis-py's own
`Sentinel.discover_master`), asked again on every (re)connect so a failover is followed.

`RespPipe` is one pipelined connection: a command is written the moment it is issued (one write
per loop iteration) and answers, parsed by hiredis, come back in order, so concurrent decisions
share one socket and a release is always applied before any later admission of this instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast
from urllib.parse import unquote

import hiredis

from keygate.config.settings import ConfigError
from keygate.config.urls import mask_url, split_host_port
from keygate.observe.logs import log

DEFAULT_LEASE_S = 15.0
DEFAULT_TIMEOUT_S = 0.5
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
_MASTER_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


class RedisDown(Exception):
    """Redis did not answer (in time): the caller serves this decision locally."""


class ReplyError(Exception):
    """An error reply from Redis (`-ERR ...`)."""


Callback = Callable[[Any], None]
_NOT_YET = object()  # hiredis: no whole reply buffered yet


@dataclass(frozen=True)
class SentinelSpec:
    """The sentinels that name the master, the name they know it by, and how to reach them."""

    hosts: tuple[tuple[str, int], ...]
    master: str
    kwargs: dict[str, Any]  # redis-py arguments for the sentinel connections

    def client(self) -> Any:
        """redis-py's Sentinel (never connected here): asks each sentinel in turn."""
        from redis.asyncio.sentinel import Sentinel

        return Sentinel(list(self.hosts), sentinel_kwargs=self.kwargs)


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to reach it, parsed once."""

    display_url: str  # password masked
    kwargs: dict[str, Any]  # redis-py connection arguments, `connection_class` included
    lease_s: float
    timeout_s: float
    sentinel: SentinelSpec | None = field(default=None)  # set: the address comes from `at`

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        from redis.asyncio.connection import parse_url

        scheme = url.split(":", 1)[0]
        sentinel_url = scheme.lower() in SENTINEL_SCHEMES
        if scheme not in ("redis", "rediss", "unix") and not sentinel_url:
            raise ConfigError(
                "KEYGATE_REDIS_URL must start with redis://, rediss://, unix://, "
                f"redis+sentinel:// or rediss+sentinel://, got {_short(scheme)!r}"
            )
        hosts: tuple[tuple[str, int], ...] = ()
        master = ""
        try:
            if sentinel_url:
                url_for_redis, hosts, master = _sentinel_parts(url)
            else:
                url_for_redis = url
            kwargs: dict[str, Any] = dict(parse_url(url_for_redis))  # with keygate's own options
            lease_s = float(kwargs.pop("lease_s", DEFAULT_LEASE_S))
            timeout_s = float(kwargs.pop("timeout_s", DEFAULT_TIMEOUT_S))
            sentinel_password = kwargs.pop("sentinel_password", None)
            sentinel_username = kwargs.pop("sentinel_username", None)
        except ValueError as exc:
            raise ConfigError(
                f"environment variable KEYGATE_REDIS_URL: {_one_line(str(exc), url)}"
            ) from None
        if not (lease_s > 0 and timeout_s > 0):
            raise ConfigError(
                "environment variable KEYGATE_REDIS_URL: lease_s and timeout_s must be > 0"
            )
        if (sentinel_password or sentinel_username) and not sentinel_url:
            raise ConfigError(
                "environment variable KEYGATE_REDIS_URL: sentinel_password and "
                "sentinel_username belong to a redis+sentinel:// URL"
            )
        display = mask_url(url).partition("?")[0]  # keygate's options are noise here
        spec = None
        if sentinel_url:
            kwargs.pop("host", None)
            kwargs.pop("port", None)
            skw: dict[str, Any] = {
                "socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s,
            }
            if sentinel_password:
                skw["password"] = sentinel_password
            if sentinel_username:
                skw["username"] = sentinel_username
            if scheme.lower().startswith("rediss"):  # TLS to the sentinels too, same settings
                skw["ssl"] = True
                skw.update({k: v for k, v in kwargs.items() if k.startswith("ssl_")})
            spec = SentinelSpec(hosts, master, skw)
        target = cls(display, kwargs, lease_s, timeout_s, spec)
        try:
            target.connection()
            if spec is not None:
                spec.client()
        except TypeError as exc:  # an option redis-py does not know
            raise ConfigError(f"environment variable KEYGATE_REDIS_URL: {exc}") from None
        return target

    def at(self, host: str, port: int) -> RedisTarget:
        """This target at the address the sentinels named."""
        return replace(self, kwargs={**self.kwargs, "host": host, "port": port})

    def connection(self) -> Any:
        """redis-py's connection object for this URL (never connected here): its fields and
        its TLS context are what our pipelined connection uses too."""
        kwargs = dict(self.kwargs)
        connection_class = kwargs.pop("connection_class", None)
        if connection_class is None:
            from redis.asyncio.connection import Connection as connection_class
        return connection_class(**kwargs)

    def client(self) -> Any:
        """A redis-py client (pub/sub) on the same settings."""
        from redis.asyncio import ConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = ConnectionPool(
            **self.kwargs,
            socket_connect_timeout=self.timeout_s,
            socket_timeout=self.timeout_s,
        )
        return Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def _sentinel_parts(url: str) -> tuple[str, tuple[tuple[str, int], ...], str]:
    """`redis+sentinel://[:password@]h1:26379,h2/MASTER[/db][?opts]` as a one-host URL for
    redis-py's parser (credentials, database, options; no address), the sentinels and the
    master's name. Raises ValueError saying what is wrong."""
    scheme, _, rest = url.partition("://")
    base, qmark, query = rest.partition("?")
    at = base.rfind("@")  # the last '@': a password may hold one
    userinfo, hostpart = (base[: at + 1], base[at + 1 :]) if at >= 0 else ("", base)
    netloc, _, path = hostpart.partition("/")
    if not netloc:
        raise ValueError("name at least one sentinel (host:port, comma-separated)")
    hosts = []
    for item in netloc.split(","):
        if not item:
            raise ValueError("empty sentinel address in the host list")
        host, port = split_host_port(item)
        if not host or host == "[]":
            raise ValueError(f"sentinel {_short(item)!r} has no host")
        if port is None:
            number = DEFAULT_SENTINEL_PORT
        elif port.isascii() and port.isdigit() and 1 <= int(port) <= 65535:
            number = int(port)
        else:
            raise ValueError(f"sentinel port must be 1-65535, got {_short(port)!r}")
        hosts.append((host.strip("[]"), number))
    parts = path.split("/") if path else []
    master = unquote(parts[0]) if parts else ""
    if not _MASTER_NAME.match(master):
        raise ValueError(
            "after the sentinels comes the master name the sentinels monitor "
            "(letters, digits, '.', '_', ':' or '-'), e.g. …:26379/mymaster"
        )
    if len(parts) > 2 or (len(parts) == 2 and not (parts[1].isascii() and parts[1].isdigit())):
        raise ValueError(f"the database after /{master}/ must be a number, got {_short(path)!r}")
    db = parts[1] if len(parts) == 2 else "0"
    plain = "rediss" if scheme.lower().startswith("rediss") else "redis"
    return f"{plain}://{userinfo}localhost/{db}{qmark}{query}", tuple(hosts), master


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _one_line(text: str, url: str) -> str:
    """An error text fit for the one-line config error: no line break, no password of `url`."""
    base = url.partition("://")[2].partition("?")[0]
    at = base.rfind("@")
    password = base[:at].partition(":")[2] if at >= 0 else ""
    for secret in {password, unquote(password)} - {""}:
        text = text.replace(secret, "***")
    return " ".join(text.split())


def pack(args: Sequence[Any]) -> bytes:
    """One command in RESP; numbers as their shortest exact text (`repr` of a float)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if a.__class__ is bytes else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _safely(cb: Callback, value: Any) -> None:
    """Run an answer's callback; its failure is logged, never taken out on the connection."""
    try:
        cb(value)
    except Exception as exc:
        log.error("shared state: callback failed: %r", exc)


class RespPipe(asyncio.Protocol):
    """One pipelined Redis connection: each command is written when issued, answers are matched
    in order. A caller that gives up (cancelled) leaves its answer to an `orphan` callback, so a
    grant nobody takes is handed back instead of leaking until its lease expires."""

    def __init__(self, on_lost: Callable[[RespPipe, str], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ReplyError, notEnoughData=_NOT_YET)
        self._pending: deque[tuple[asyncio.Future[Any] | None, float, Callback | None]] = deque()
        self._out: list[bytes] = []  # commands issued in this loop iteration: one write
        self._on_lost = on_lost
        self.closed = False

    async def open(self, target: RedisTarget) -> None:
        conn = target.connection()
        path = getattr(conn, "path", "")
        if path:
            await self._loop.create_unix_connection(lambda: self, path)
        else:
            ctx: ssl.SSLContext | None = None
            if getattr(conn, "ssl_context", None) is not None:
                ctx = conn.ssl_context.get()  # redis-py's context: ssl_ca_certs and the rest
            await self._loop.create_connection(lambda: self, conn.host, conn.port, ssl=ctx)
        if conn.password:
            auth = (
                ["AUTH", conn.username, conn.password] if conn.username else ["AUTH", conn.password]
            )
            await self.call(auth)
        if conn.db:
            await self.call(["SELECT", conn.db])

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream connection's

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost ({exc})" if exc else "connection closed by Redis"
        already = self.closed
        self._shut(reason)
        if not already:
            self._on_lost(self, reason)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        pending = self._pending
        try:
            reader.feed(data)
            while True:
                value = reader.gets()
                if value is _NOT_YET:
                    break
                fut, _, cb = pending.popleft()
                if fut is None:
                    if cb is not None:
                        _safely(cb, value)
                elif fut.cancelled():
                    if cb is not None and not isinstance(value, ReplyError):
                        _safely(cb, value)
                elif isinstance(value, ReplyError):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
        except Exception as exc:  # a protocol error (or our bug): never trust this socket again
            log.error("shared state: bad reply from Redis (%s: %s)", type(exc).__name__, exc)
            self.close(f"bad reply: {exc}")
            self._on_lost(self, f"bad reply: {exc}")

    # API
    def _write(self, data: bytes) -> None:
        if self._transport is None or self.closed:
            raise RedisDown("not connected")
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.closed and out:
            self._transport.write(b"".join(out))

    def send(self, args: Sequence[Any], cb: Callback | None = None) -> None:
        """Fire and forget: `cb` gets the answer (or the exception) later."""
        self._write(pack(args))
        self._pending.append((None, self._loop.time(), cb))

    def call(self, args: Sequence[Any], orphan: Callback | None = None) -> asyncio.Future[Any]:
        """Sent in order with every other command; the future resolves with the answer
        (raises ReplyError/RedisDown)."""
        self._write(pack(args))
        fut = self._loop.create_future()
        self._pending.append((fut, self._loop.time(), orphan))
        return fut

    def oldest_age(self) -> float:
        return self._loop.time() - self._pending[0][1] if self._pending else 0.0

    def close(self, reason: str = "closed") -> None:
        if self._transport is not None and not self.closed:
            self._flush()
            self._transport.close()  # buffered writes (releases) still go out
        self._shut(reason)

    def _shut(self, reason: str) -> None:
        self.closed = True
        pending, self._pending = self._pending, deque()
        err = RedisDown(reason)
        for fut, _, cb in pending:
            if fut is None:
                if cb is not None:
                    with contextlib.suppress(Exception):
                        cb(err)
            elif not fut.done():
                fut.set_exception(err)
                fut.exception()  # retrieved: callers may be gone
