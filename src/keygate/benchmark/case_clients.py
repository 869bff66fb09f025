"""A client key vs the gateway password on one keygate holding 10,000 client keys (SPEC §13): a
client key is found by its hash in one dict lookup, so throughput at c=50 should not depend on
how many clients exist. Interleaved so that drift hits both alike."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keygate.benchmark.common import log
from keygate.benchmark.servers import CHAT_BODY, StartError, Target
from keygate.benchmark.wrk import lua_script

if TYPE_CHECKING:
    from keygate.benchmark.runner import Bench

CLIENTS_CONCURRENCY = 50
CLIENTS_ROUNDS = 4  # password and client key, interleaved


async def _issue(location: str, n: int) -> str:
    """`n` client keys in a fresh store (no limits, as the single password has none); the
    key of one in the middle, the one the load uses."""
    from keygate.clients import ops
    from keygate.store import create_store

    store = create_store(location, "")
    await store.open()
    try:
        used = ""
        for i in range(n):
            _, key = await ops.create(store, {"name": f"bench-client-{i:05d}"})
            if i == n // 2:
                used = key
        return used
    finally:
        await store.close()


def run_clients(bench: Bench, _kg8: Target, nginx_port: int) -> None:
    n = bench.opts.clients
    info: dict[str, Any] = {"clients": n, "concurrency": CLIENTS_CONCURRENCY}
    bench.clients10k = info
    db = Path(bench.tmp) / "clients-store" / "keygate.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    location = f"sqlite:///{db}"
    key = asyncio.run(_issue(location, n))
    script = Path(bench.tmp) / "post-client.lua"
    script.write_text(lua_script(CHAT_BODY, {"Authorization": f"Bearer {key}"}), encoding="utf-8")
    try:
        t = bench.start(
            "keygate",
            f"http://127.0.0.1:{nginx_port}",
            probe=True,
            label="keygate-clients",
            extra_env={"KEYGATE_DB": location},
        )
    except StartError as exc:
        info["error"] = str(exc)
        bench.failures[f"keygate with {n:,} clients"] = str(exc)
        log(f"{n:,} clients: {exc}")
        return
    try:
        info["startup_s"] = t.startup_s
        if bench.opts.warmup_s > 0:
            bench.wrk(t, 10, bench.opts.warmup_s)
            bench.wrk(t, 10, bench.opts.warmup_s, script)
        half = max(1.0, bench.opts.duration_s / 2)
        runs: dict[str, list[dict[str, Any]]] = {"password": [], "clients": []}
        for _ in range(CLIENTS_ROUNDS):
            # one process for both: the password and a client key on the same gateway with
            # `n` clients, so nothing but the credential differs between the two
            for label, target, lua in (("password", t, None), ("clients", t, script)):
                r = bench.wrk(target, CLIENTS_CONCURRENCY, half, lua)
                runs[label].append(r.to_json())
                log(f"keygate  c={CLIENTS_CONCURRENCY} {label:8} {r.rps:10,.0f} req/s")
        info["runs"] = runs
        info["rps_password"] = statistics.mean(r["rps"] for r in runs["password"])
        info["rps_clients"] = statistics.mean(r["rps"] for r in runs["clients"])
        # the median of the rounds' ratios: one round hit by the machine's drift moves it little
        ratios = [
            c["rps"] / p["rps"]
            for p, c in zip(runs["password"], runs["clients"], strict=True)
            if p["rps"]
        ]
        info["ratio"] = statistics.median(ratios) if ratios else None
        info["flagged"] = any(r["flagged"] for rs in runs.values() for r in rs)
    finally:
        t.stop()
