"""Keys the pool has set aside (invalid, exhausted) are tried again now and then: a pass brings
one back, a failure pushes its next re-check out by the provider's re-check interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from keygate.control.keypool import KeyEntry
from keygate.observe.logs import log

if TYPE_CHECKING:
    from keygate.runtime.provider import ProviderRuntime

RECHECK_POLL_S = 5.0
RECHECK_BATCH = 20  # per provider and pass: a big pool of dead keys does not flood the upstream

Probe = Callable[[KeyEntry], Awaitable[tuple[int, float, str]]]


async def recheck_loop(providers: dict[str, ProviderRuntime], probe: Probe) -> None:
    while True:
        await asyncio.sleep(RECHECK_POLL_S)
        await recheck_once(providers, probe)


async def recheck_once(providers: dict[str, ProviderRuntime], probe: Probe) -> None:
    for rt in list(providers.values()):
        for entry in rt.pool.due_for_recheck()[:RECHECK_BATCH]:
            status, _, error = await probe(entry)
            if 200 <= status < 300:
                rt.pool.set_status(entry.id, "active", error="")
                log.info("key %s#%d passed its re-check: active again", entry.masked, entry.id)
            else:
                entry.until = time.time() + rt.cfg.recheck_interval_s
                entry.last_error = error or entry.last_error
