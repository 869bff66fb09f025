"""keygate with per-key quotas on every key against the same instance without, interleaved so
drift hits both alike (issue 14: the pick with every window checked and charged must keep
>= 0.95 of the throughput at c=50). The limits are set far above what the run can spend, so
the windows do all their work and never refuse a request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keygate.benchmark.common import log
from keygate.benchmark.servers import StartError, Target

if TYPE_CHECKING:
    from keygate.benchmark.runner import Bench

QUOTA_CONCURRENCY = 50
TARGET_QUOTA_RATIO = 0.95
# every window on every key, none of them ever binding in a bench run
QUOTAS = {
    "key_rpm": 1_000_000,
    "key_rph": 100_000_000,
    "key_rpd": 1_000_000_000,
    "key_tpm": 1_000_000_000,
    "key_tph": 100_000_000_000,
    "key_tpd": 1_000_000_000_000,
}


def run_quotas(bench: Bench, kg8: Target, nginx_port: int) -> None:
    info: dict[str, Any] = {"concurrency": QUOTA_CONCURRENCY, "quotas": QUOTAS}
    bench.quotas = info
    try:
        t = bench.start(
            "keygate",
            f"http://127.0.0.1:{nginx_port}",
            probe=True,
            label="keygate-quotas",
            provider_extra=QUOTAS,
        )
    except StartError as exc:
        info["error"] = str(exc)
        bench.failures["keygate with quotas"] = str(exc)
        log(f"keygate with quotas: {exc}")
        return
    try:
        if bench.opts.warmup_s > 0:
            bench.wrk(t, 10, bench.opts.warmup_s)
        half = max(1.0, bench.opts.duration_s / 2)
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(2):
            for label, target in (("off", kg8), ("on", t)):
                r = bench.wrk(target, QUOTA_CONCURRENCY, half)
                runs[label].append(r.to_json())
                log(f"keygate  c={QUOTA_CONCURRENCY} quotas {label:3} {r.rps:10,.0f} req/s")
        info["runs"] = runs
        info["rps_off"] = sum(r["rps"] for r in runs["off"]) / len(runs["off"])
        info["rps_on"] = sum(r["rps"] for r in runs["on"]) / len(runs["on"])
        info["ratio"] = info["rps_on"] / info["rps_off"] if info["rps_off"] else None
        info["flagged"] = any(r["flagged"] for rs in runs.values() for r in rs)
        log(f"quotas on every key: {info['ratio'] or 0:.0%} of the run without")
    finally:
        t.stop()
