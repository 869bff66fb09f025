"""What every request leaves behind once it ended, whatever its route: the provider's stats,
the client's usage, one entry in the recent-requests ring and one access line. In memory only:
the counters are flushed in batches (`sync`), nothing here touches the store."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from keygate.observe.access import access_log
from keygate.observe.stats import RequestRecord
from keygate.proxy import clients
from keygate.proxy.redact import redactor_for

if TYPE_CHECKING:
    from keygate.proxy.exchange import Exchange
    from keygate.runtime.gateway import Gateway
    from keygate.runtime.provider import ProviderRuntime


def account(
    gw: Gateway,
    rt: ProviderRuntime | None,
    ex: Exchange,
    name: str,
    method: str,
    path: str,
    started: float,
    scope: dict[str, Any],
) -> None:
    latency_ms = (time.perf_counter() - started) * 1000
    if ex.runtime is not None:  # a routed request: the provider that answered counts it
        rt, name = ex.runtime, ex.runtime.cfg.name
    entry = ex.entry
    now = time.time()
    if rt is not None and ex.status != 204:
        stats = rt.stats
        stats.record(ex.status, latency_ms, now)
        stats.tokens_in += ex.usage[0]
        stats.tokens_out += ex.usage[1]
    key_id = entry.id if entry is not None else None
    masked = entry.masked if entry is not None else ""
    client = ex.client.name if ex.client is not None else ""
    if client:
        clients.account(gw, ex, now)
    if ex.error and rt is not None:
        # what goes to the log and the ring never carries a key, whoever wrote the text
        ex.error = redactor_for(name).scrub_text(
            ex.error, rt.pool.entries, entry.secret.encode() if entry is not None else b""
        )
    record = RequestRecord(
        now,
        name if rt is not None else "",
        method,
        path,
        ex.model,
        key_id,
        masked,
        ex.status,
        latency_ms,
        ex.retries,
        ex.error,
        " → ".join(ex.via) if ex.via else "",
        ex.adapter.label if ex.adapter is not None else "",
        client,
    )
    gw.recent.append(record)
    if access_log.enabled:
        peer = scope.get("client")
        access_log.request(record, ex.upstream_status, peer[0] if peer else "")
