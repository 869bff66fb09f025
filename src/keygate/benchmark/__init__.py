"""`keygate bench`: what keygate adds to each request, measured next to the direct path and a
bare pass-through on the same stack, in one invocation on one machine (issue 7).

Everything runs on 127.0.0.1, every load is bounded in time, and every process started is
stopped at the end, also on Ctrl-C or an error. Heavy imports wait until a run starts so that
`keygate --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["main"]

FULL = {
    "duration": 10.0,
    "rounds": 4,
    "concurrency": "1,10,50,200",
    "streams": 500,
    "chunks": 64,
    "chunk_interval": 0.05,
    "post_load_wait": 60.0,
    "start_timeout": 30.0,
    "settle": 1.0,
    "warmup": 1.0,
}
QUICK = {
    "duration": 2.0,
    "rounds": 1,
    "concurrency": "1,10",
    "streams": 20,
    "chunks": 8,
    "chunk_interval": 0.02,
    "post_load_wait": 2.0,
    "start_timeout": 15.0,
    "settle": 0.3,
    "warmup": 1.0,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keygate bench",
        description="Benchmark keygate against direct and a bare pass-through (127.0.0.1 only).",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: ~30 s, few cases")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10, quick 2)")
    p.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds of the wrk cases (default 4, quick 1); ratios are their median",
    )
    p.add_argument("--concurrency", help="wrk concurrencies (default 1,10,50,200; quick 1,10)")
    p.add_argument("--streams", type=int, help="concurrent SSE streams (default 500, quick 20)")
    p.add_argument("--chunks", type=int, help="content chunks per stream (default 64, quick 8)")
    p.add_argument("--chunk-interval", type=float, help="seconds between chunks (default 0.05)")
    p.add_argument("--post-load-wait", type=float, help="seconds before after-load RSS (60)")
    p.add_argument("--many-keys", type=int, default=100_000, help="keys for the keys100k case")
    p.add_argument("--clients", type=int, default=10_000, help="client keys for clients10k")
    p.add_argument(
        "--soak-seconds",
        type=float,
        help="seconds of the soak case's load (default 300; --quick runs it only when given)",
    )
    p.add_argument(
        "--soak-rate", type=float, default=200.0, help="the soak's fixed rate, req/s (200)"
    )
    p.add_argument("--start-timeout", type=float, help="seconds a server may take to come up")
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated: bare, keygate, litellm, wrk, stream, memory, keys100k, redis,"
        " translated, quotas, clients10k, affinity, soak",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--check", action="store_true", help="exit 3 when a target of issue 7 fails")
    return p


def _options(args: argparse.Namespace) -> Any:
    from keygate.benchmark.runner import ALIASES, CASES, SERVER_REFS, Options

    preset = QUICK if args.quick else FULL

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return preset[name] if value is None else value

    skip = {ALIASES.get(s.strip(), s.strip()) for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(CASES) - set(SERVER_REFS)
    if unknown:
        raise SystemExit(f"keygate bench: unknown --skip {', '.join(sorted(unknown))}")
    if args.quick:
        skip.update({"keys100k", "redis", "quotas", "clients10k"})
        if args.soak_seconds is None:
            skip.add("soak")
    soak_s = 300.0 if args.soak_seconds is None else args.soak_seconds
    if soak_s < 4 or args.soak_rate <= 0:
        raise SystemExit("keygate bench: --soak-seconds needs >= 4, --soak-rate > 0")
    try:
        concurrency = [int(c) for c in str(pick("concurrency")).split(",") if c.strip()]
    except ValueError:
        raise SystemExit("keygate bench: --concurrency takes numbers like 1,10,50") from None
    if not concurrency or min(concurrency) < 1:
        raise SystemExit("keygate bench: --concurrency needs positive numbers")
    return Options(
        quick=args.quick,
        duration_s=max(1.0, float(pick("duration"))),
        rounds=max(1, int(pick("rounds"))),
        concurrency=concurrency,
        streams=max(1, pick("streams")),
        chunks=max(1, pick("chunks")),
        chunk_interval_s=max(0.0, pick("chunk_interval")),
        post_load_wait_s=max(0.0, pick("post_load_wait")),
        many_keys=max(1, args.many_keys),
        clients=max(1, args.clients),
        soak_s=soak_s,
        soak_rate=args.soak_rate,
        skip=skip,
        out=args.out,
        start_timeout_s=pick("start_timeout"),
        pin=not args.no_pin,
        settle_s=preset["settle"],
        warmup_s=preset["warmup"],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 when it completed, 1 when it could not run, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    opts = _options(args)

    from keygate.benchmark.runner import Bench, log, write_outputs

    # SIGTERM must unwind like Ctrl-C so that every child is stopped by the finally blocks.
    restore: Any = None
    if threading.current_thread() is threading.main_thread():

        def _term(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        restore = signal.signal(signal.SIGTERM, _term)
    # The harness itself (mostly the RSS sampler) stays off the server's CPU.
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    bench = Bench(opts)
    try:
        if affinity is not None and bench.pin.load_cpu is not None:
            os.sched_setaffinity(0, {bench.pin.load_cpu})
        data = bench.run()
    except KeyboardInterrupt:
        log("interrupted: all processes stopped")
        return 130
    except RuntimeError as exc:
        log(f"cannot run: {exc}")
        return 1
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    text, files, warnings = write_outputs(data, opts.out)
    print(text, flush=True)
    for w in warnings:
        log(f"warning: {w}")
    log("wrote " + ", ".join(str(f) for f in files))
    if args.check and any(v["status"].startswith("FAIL") for v in data["verdict"]):
        return 3
    return 0
