"""Serving client connections: the listening sockets and uvicorn's set-up.

`bind_sockets` opens the listening sockets before anything else happens (a busy port must stop
`serve` before the banner and the admin token); `serve` and each worker process build their
uvicorn Config here (`server_options`, `make_config`) and serve on those sockets with the
protocol of `keygate.http.connection_limits`, which bounds what a client may hold (its names are
importable from here too).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import uvicorn

from keygate.config.settings import Settings
from keygate.http.connection_limits import (
    DEFAULT_LIMITS,
    ConnectionLimits,
    LimitedHttpProtocol,
    ThrottledLog,
    default_max_connections,
)

__all__ = [
    "ConnectionLimits",
    "KeygateConfig",
    "LimitedHttpProtocol",
    "ThrottledLog",
    "bind_or_explain",
    "bind_sockets",
    "default_max_connections",
    "make_config",
    "server_options",
    "use_reuseport",
]


class KeygateConfig(uvicorn.Config):
    """uvicorn's Config carrying the connection limits to the protocol."""

    def __init__(self, app: Any, connection_limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.connection_limits = connection_limits


def server_options(settings: Settings) -> dict[str, Any]:
    """Every uvicorn setting keygate serves with (picklable: workers get it as it is)."""
    from keygate.observe.logs import uvicorn_log_config

    limits = ConnectionLimits.from_settings(settings)
    return {
        "host": settings.host,
        "port": settings.port,
        "http": LimitedHttpProtocol,
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        "lifespan": "on",
        "ws": "none",  # no WebSocket here: an Upgrade request is served as plain HTTP
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": settings.drain_s,  # KEYGATE_DRAIN_S, see lifecycle.py
        "timeout_keep_alive": limits.idle_timeout_s,
        "server_header": False,
        "proxy_headers": False,  # keygate is the edge; a middleware per request for nothing
        "date_header": False,
        "connection_limits": limits,
        **uvicorn_log_config(settings.log_format),
    }


def make_config(app: Any, options: dict[str, Any]) -> uvicorn.Config:
    """The uvicorn Config of `serve` and of every worker, from `server_options`."""
    options = dict(options)
    limits = options.pop("connection_limits", DEFAULT_LIMITS)
    return KeygateConfig(app, connection_limits=limits, **options)


def bind_sockets(host: str, port: int, count: int, backlog: int = 2048) -> list[socket.socket]:
    """Listening sockets: one per worker with SO_REUSEPORT (Linux), else one shared.

    With SO_REUSEPORT the kernel spreads new connections evenly over the workers' sockets (by a
    hash of the client's address and port). One shared socket goes to whichever worker's
    accept() wins, which under a burst of connections can leave one worker with most of them:
    with the limits split N ways that halves the throughput. A plain bind first proves that the
    port is free, also of another keygate's SO_REUSEPORT sockets (which would otherwise silently
    take a share of the connections). Raises OSError.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        if not use_reuseport() or count < 2:
            probe.listen(backlog)
            probe.set_inheritable(True)
            return [probe]
        port = int(probe.getsockname()[1])
    except BaseException:
        probe.close()
        raise
    probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)  # now, so the kernel spreads over all of them from the start
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_or_explain(settings: Settings) -> list[socket.socket] | None:
    """`bind_sockets` for `serve`; on failure one line naming host:port and None. On success
    `settings.port` is the bound port (port 0: the one the kernel picked)."""
    try:
        sockets = bind_sockets(settings.host, settings.port, settings.workers)
    except OSError as exc:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        print(
            f"keygate: cannot listen on {host}:{settings.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return None
    settings.port = int(sockets[0].getsockname()[1])
    return sockets


def use_reuseport() -> bool:
    """SO_REUSEPORT balances connections on Linux only (BSD/macOS give all to one socket)."""
    return (
        sys.platform.startswith("linux")
        and hasattr(socket, "SO_REUSEPORT")
        and os.environ.get("KEYGATE_REUSEPORT", "1") != "0"
    )
