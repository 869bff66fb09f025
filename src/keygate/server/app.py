"""Assembles the server: one raw ASGI callable dispatching to health, admin API, admin UI and the
proxy. No framework on the proxy path: every layer there costs on every request."""

from __future__ import annotations

import os
import sys
from typing import Any

from keygate import __version__
from keygate.admin.credentials import AdminCredentials
from keygate.config.proxies import show_proxy
from keygate.config.settings import ConfigError, Settings, load_settings
from keygate.http.asgi import respond, respond_json
from keygate.http.errors import GatewayError
from keygate.observe.logs import print_block, setup_logging
from keygate.proxy import handler
from keygate.runtime import health
from keygate.runtime.egress import effective_proxies
from keygate.runtime.gateway import Gateway
from keygate.server import lifecycle

NGINX_WELCOME = b"""<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""


class App:
    def __init__(self, settings: Settings, banner: bool = True) -> None:
        self.settings = settings
        self.gateway = Gateway(settings)
        self.credentials = AdminCredentials(settings)
        self.banner = banner
        self.admin_path = settings.admin_path
        self.admin_root = settings.admin_path.rstrip("/")
        self.admin_api: Any = None
        self.admin_ui: Any = None
        self.life = lifecycle.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if self.life.draining:
                await self._draining(scope, send)
            elif path == "/healthz" and not health.wants_details(scope["headers"]):
                await respond_json(send, 200, health.public())
            elif path.startswith("/api/") or path in ("/api", "/metrics", "/healthz"):
                await self._admin_api(scope, receive, send)
            elif path.startswith(self.admin_path) or path == self.admin_root:
                await self._admin_ui(scope, receive, send)
            elif path == "/":
                await self._root(send)
            else:
                await handler.handle(self.gateway, scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _draining(self, scope: dict[str, Any], send: Any) -> None:
        """A request that arrives during the drain: not served here, the connection closes."""
        close = [(b"connection", b"close"), (b"retry-after", b"1")]
        if scope["path"] == "/healthz":
            await respond_json(send, 503, {**health.public(), "status": "draining"}, close)
            return
        name, _, rest = scope["path"].lstrip("/").partition("/")
        rt = self.gateway.providers.get(name)
        err = GatewayError(
            503, "keygate is shutting down; retry the request", "draining", list(close)
        )
        dialect = handler.error_dialect(rt, "/" + rest, scope["headers"])
        await handler.send_error(send, err, dialect)

    async def reload(self) -> None:
        await lifecycle.reload_app(self)

    async def _admin_api(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.admin_api is None:
            from keygate.admin.api import AdminAPI

            self.admin_api = AdminAPI(self.gateway, self.credentials)
        await self.admin_api(scope, receive, send)

    async def _admin_ui(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.admin_ui is None:
            from keygate.admin.ui import AdminUI

            self.admin_ui = AdminUI(self.gateway)
        await self.admin_ui(scope, receive, send)

    async def _root(self, send: Any) -> None:
        if self.settings.disguise == "nginx":
            headers = [(b"content-type", b"text/html"), (b"server", b"nginx")]
            await respond(send, 200, headers, NGINX_WELCOME)
            return
        await respond(send, 302, [(b"location", self.admin_path.encode())])

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                    await self.credentials.load(self.gateway.store)
                except Exception as exc:  # uvicorn prints the message once and exits
                    await send(
                        {
                            "type": "lifespan.startup.failed",
                            "message": f"keygate: start-up failed: {exc}",
                        }
                    )
                    return
                if self.banner:
                    print_banner(self.gateway, self.credentials)
                self.life.ready(self.reload)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def print_banner(gw: Gateway, credentials: AdminCredentials, workers_line: str = "") -> None:
    s = gw.settings
    print_block(
        banner(gw, credentials, workers_line),
        "start",
        version=__version__,
        port=s.port,
        pid=os.getpid(),
    )


def banner(gw: Gateway, credentials: AdminCredentials, workers_line: str = "") -> str:
    """The start-up banner of SPEC §1; `workers_line` comes from the multi-worker supervisor."""
    s = gw.settings
    host = f"[{s.host}]" if ":" in s.host else s.host
    base = f"http://{host}:{s.port}"
    lines = [
        f"keygate {__version__}",
        f"  listening     {base}",
        f"  admin         {base}{s.admin_path}",
        f"  proxy         {base}/<provider>/v1/...   {base}/v1/... → {s.default_provider}",
        f"  store         {s.store_description}",
        *(
            []
            if s.secret_key
            else ["  secrets       in plain text: set KEYGATE_SECRET_KEY to encrypt keys at rest"]
        ),
        "  shared state  "
        + (
            gw.shared.banner()
            if gw.shared is not None
            else "local (in-process limits)"
            + (f", 1/{s.fleet_size} of each limit per instance" if s.fleet_size > 1 else "")
        ),
        *([workers_line] if workers_line else []),
        f"  flush         {'counters every ' + str(s.flush_interval_ms) + ' ms' if s.flush_interval_ms else 'off (KV_FLUSH_INTERVAL_MS=0: counters stay in memory)'}",
        "  providers",
    ]
    for name, rt in gw.providers.items():
        c = rt.cfg
        n = len(rt.pool.entries)
        if n or not c.builtin:
            lines.append(
                f"    {name:<13} {n:>6} {'key ' if n == 1 else 'keys'}  rps={c.rps:g} burst={c.burst} max_conn={c.max_conn}  → {c.base_url}"
            )
            egress = effective_proxies(c, s.proxy)  # SPEC §16, passwords masked
            if egress:
                lines.append(f"    {'':<13} via {', '.join(show_proxy(u) for u in egress)}")
    idle = [name for name, rt in gw.providers.items() if not rt.pool.entries and rt.cfg.builtin]
    if idle:
        lines.append(f"    (no keys yet: {', '.join(idle)})")
    clients = len(gw.clients.by_id)
    with_clients = f", {clients} client key{'s' if clients != 1 else ''}" if clients else ""
    if gw.passwords:
        lines.append(
            f"  proxy auth    on ({len(gw.passwords)} password{'s' if len(gw.passwords) > 1 else ''}"
            f"{with_clients})"
        )
    elif clients:
        lines.append(f"  proxy auth    on (client keys only: {clients}; no ACCESS_PASSWORD)")
    else:
        lines.append("  " + "!" * 72)
        lines.append(
            "  !! WARNING: proxy auth is OFF — anyone who reaches this port can spend your keys."
        )
        lines.append("  !! Set ACCESS_PASSWORD to require a gateway password.")
        lines.append("  " + "!" * 72)
    if credentials.new_token:
        lines.append(
            f"  admin token   {credentials.new_token}   (shown once; stored hashed — keep it)"
        )
    elif s.admin_password:
        lines.append("  admin auth    ADMIN_PASSWORD")
    else:
        lines.append("  admin auth    token generated at first start (stored hashed)")
    return "\n".join(lines)


def create_app(config_text: str | None = None) -> App:
    """Factory for `uvicorn --factory` and worker processes: settings from the environment (and
    the config file, or the text of it a worker's supervisor accepted)."""
    try:
        settings = load_settings(os.environ, config_text=config_text)
    except ConfigError as exc:
        print(f"keygate: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.log_level, settings.log_format)
    return App(settings, banner=os.environ.get("KEYGATE_WORKER_BANNER", "1") == "1")
