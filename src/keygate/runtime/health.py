"""What `/healthz` says. Anyone gets status and version (load balancers, uptime probes); the
details — pid, uptime, store, shared state, per-provider figures — describe the deployment and
its traffic, so they need admin credentials (the admin API serves them)."""

from __future__ import annotations

import os
import time
from typing import Any

from keygate import __version__
from keygate.http.asgi import SESSION_COOKIE, read_cookie
from keygate.runtime.gateway import Gateway


def public() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


def details(gw: Gateway) -> dict[str, Any]:
    return {
        **public(),
        "pid": os.getpid(),
        "uptime_s": round(time.time() - gw.started_at, 1),
        "store": gw.settings.store_kind,
        **gw.state_info(),
        "clients": len(gw.clients.by_id),  # client keys this instance knows (SPEC §13)
        "providers": {
            name: {"keys": len(rt.pool.entries), **rt.admission.snapshot()}
            for name, rt in gw.providers.items()
            if rt.pool.entries
        },
    }


def wants_details(headers: list[tuple[bytes, bytes]]) -> bool:
    """A request that carries admin credentials of some kind (checked by the admin API, which
    answers 401 when they are wrong); other cookies of the same host do not count."""
    for name, value in headers:
        if name == b"authorization":
            return True
        if name == b"cookie" and read_cookie(value.decode("latin-1"), SESSION_COOKIE):
            return True
    return False
