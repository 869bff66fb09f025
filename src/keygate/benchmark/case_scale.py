"""keygate at scale: many keys vs the 8-key instance, and the Redis form vs the local one,
each interleaved so that drift hits both alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keygate.benchmark.common import _diff, _mb, _ms, log
from keygate.benchmark.procs import rss_mb
from keygate.benchmark.servers import StartError, Target, start_redis
from keygate.benchmark.wrk import WrkResult

if TYPE_CHECKING:
    from keygate.benchmark.runner import Bench

MANY_KEYS_CONCURRENCY = 50


def run_many_keys(bench: Bench, kg8: Target, nginx_port: int) -> None:
    """keygate with many keys vs the 8-key instance, interleaved so drift hits both alike."""
    n = bench.opts.many_keys
    keys = [f"csk-many{i:07d}" + "k" * 40 for i in range(n)]
    info: dict[str, Any] = {"keys": n, "concurrency": MANY_KEYS_CONCURRENCY}
    bench.keys100k = info
    try:
        t = bench.start(
            "keygate",
            f"http://127.0.0.1:{nginx_port}",
            probe=True,
            keys=keys,
            label="keygate-many",
            timeout_s=max(bench.opts.start_timeout_s, 120.0),
        )
    except StartError as exc:
        info["error"] = str(exc)
        bench.failures[f"keygate with {n:,} keys"] = str(exc)
        log(f"{n:,} keys: {exc}")
        return
    info["startup_s"] = t.startup_s
    info["import_s"] = t.import_s
    info["idle_mb"] = bench.idle_rss(t)
    log(
        f"keygate with {n:,} keys: imported in {t.import_s or 0:.2f} s, started in"
        f" {t.startup_s:.3f} s, idle {_mb(info['idle_mb'])}"
    )
    if bench.opts.warmup_s > 0:
        bench.wrk(t, 10, bench.opts.warmup_s)
    half = max(1.0, bench.opts.duration_s / 2)
    runs: dict[str, list[dict[str, Any]]] = {"8": [], "many": []}
    for _ in range(2):
        for label, target in (("8", kg8), ("many", t)):
            r = bench.wrk(target, MANY_KEYS_CONCURRENCY, half)
            runs[label].append(r.to_json())
            keys = 8 if label == "8" else n
            log(f"keygate  c={MANY_KEYS_CONCURRENCY} {keys:>7,} keys {r.rps:10,.0f} req/s")
    info["runs"] = runs
    info["rps_8"] = sum(r["rps"] for r in runs["8"]) / len(runs["8"])
    info["rps_many"] = sum(r["rps"] for r in runs["many"]) / len(runs["many"])
    info["ratio"] = info["rps_many"] / info["rps_8"] if info["rps_8"] else None
    info["flagged"] = any(r["flagged"] for rs in runs.values() for r in rs)
    info["after_load_mb"] = rss_mb(t.proc.pid) if t.proc else None
    t.stop()


def run_redis(bench: Bench, kg8: Target, nginx_port: int) -> None:
    """The Redis form against the local form, interleaved: added latency at c=1, and
    throughput at c=50 (issue 6: what sharing limits across instances costs)."""
    info: dict[str, Any] = {}
    bench.redis = info
    try:
        redis_proc, url = start_redis(bench.pin, bench.tmp / "logs")
    except StartError as exc:
        info["error"] = str(exc)
        log(f"redis case skipped: {exc}")
        return
    try:
        t = bench.start(
            "keygate",
            f"http://127.0.0.1:{nginx_port}",
            probe=True,
            label="keygate-redis",
            extra_env={"KEYGATE_REDIS_URL": url},
        )
    except StartError as exc:
        redis_proc.stop()
        info["error"] = str(exc)
        bench.failures["keygate with Redis"] = str(exc)
        log(f"keygate with Redis: {exc}")
        return
    try:
        if bench.opts.warmup_s > 0:
            bench.wrk(t, 10, bench.opts.warmup_s)
        half = max(1.0, bench.opts.duration_s / 2)
        for conc in (1, MANY_KEYS_CONCURRENCY):
            runs: dict[str, list[WrkResult]] = {"local": [], "redis": []}
            for _ in range(2):
                for label, target in (("local", kg8), ("redis", t)):
                    r = bench.wrk(target, conc, half)
                    runs[label].append(r)
                    log(
                        f"keygate  c={conc:<3} {label:5} {r.rps:10,.0f} req/s  "
                        f"p50 {_ms(r.p50_ms)}  p99 {_ms(r.p99_ms)}"
                    )
            info[str(conc)] = {k: [r.to_json() for r in v] for k, v in runs.items()}

        def avg(conc: int, label: str, field: str) -> float | None:
            vals = [x[field] for x in info[str(conc)][label] if x.get(field) is not None]
            return sum(vals) / len(vals) if vals else None

        info["added_p50_ms"] = _diff(avg(1, "redis", "p50_ms"), avg(1, "local", "p50_ms"))
        info["added_p99_ms"] = _diff(avg(1, "redis", "p99_ms"), avg(1, "local", "p99_ms"))
        local_rps = avg(MANY_KEYS_CONCURRENCY, "local", "rps")
        redis_rps = avg(MANY_KEYS_CONCURRENCY, "redis", "rps")
        info["rps_local"], info["rps_redis"] = local_rps, redis_rps
        info["ratio"] = redis_rps / local_rps if local_rps and redis_rps else None
        log(
            f"redis form: added p50 {_ms(info['added_p50_ms'])} p99 {_ms(info['added_p99_ms'])}"
            f" at c=1; c={MANY_KEYS_CONCURRENCY} {info['ratio'] or 0:.0%} of local"
        )
    finally:
        t.stop()
        redis_proc.stop()
