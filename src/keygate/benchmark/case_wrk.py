"""The non-streaming case: direct and each server on nginx under wrk, and the cross-CPU
calibration that tells the VM's wake-up floor apart from what a proxy adds."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from keygate.benchmark.case_translated import run_translated_wrk
from keygate.benchmark.common import _diff, _mb, _ms, log
from keygate.benchmark.nginx import start_nginx
from keygate.benchmark.procs import Pinning, free_port, http_request, rss_mb
from keygate.benchmark.servers import AUTH_HEADERS, CHAT_BODY, UNIFIED_BODY, StartError, Target
from keygate.benchmark.wrk import lua_script

if TYPE_CHECKING:
    from keygate.benchmark.runner import Bench


def run_nonstreaming(bench: Bench, nginx_port: int) -> Target | None:
    """direct and each server on nginx; returns the live 8-key keygate for the 100k case.

    Servers are started one after the other (start-up and idle memory on a cold process) and
    then left up together: for each concurrency, direct, bare and keygate run back to back,
    so that a machine that drifts over the minutes of the suite skews them alike. An idle
    server on the shared CPU costs the loaded one next to nothing.
    """
    upstream = f"http://127.0.0.1:{nginx_port}"
    direct = Target("direct", nginx_port, "/v1/chat/completions")
    status, _ = http_request(nginx_port, "POST", direct.path, CHAT_BODY, AUTH_HEADERS)
    if status != 200:
        raise RuntimeError(f"nginx stand-in answered {status}")
    bench.refs.setdefault("direct", {})
    servers: list[Target] = []
    for ref in bench.server_refs():
        try:
            t = bench.start(ref, upstream, probe=True)
        except StartError as exc:
            bench.fail(ref, exc)
            continue
        entry = bench.refs.setdefault(ref, {})
        entry["startup_s"] = t.startup_s
        entry["command"] = t.command
        entry.setdefault("memory", {})["idle_mb"] = bench.idle_rss(t)
        log(f"{ref:8} started in {t.startup_s:.3f} s, idle RSS {_mb(entry['memory']['idle_mb'])}")
        servers.append(t)
    unified = next((unified_target(bench, t) for t in servers if t.name == "keygate"), None)
    if unified is not None:
        servers.insert(servers.index(next(t for t in servers if t.name == "keygate")) + 1, unified)
    if bench.want("wrk"):
        for t in servers:  # unrecorded: first connections, lazy imports, caches
            if bench.opts.warmup_s > 0:
                bench.wrk(t, 10, bench.opts.warmup_s)
        for c in bench.opts.concurrency:
            run_rounds(bench, [direct, *servers], c)
        if bench.want("translated"):
            for t in servers:
                if t.name == "keygate" and t.proc is not None and t.proc.alive():
                    run_translated_wrk(bench, t)
        if bench.pin.enabled and 1 in bench.opts.concurrency:
            calibrate_cross_cpu(
                bench,
            )
    keep: Target | None = None
    if unified is not None:
        servers.remove(unified)  # the keygate process's: stopped (or kept) with it
    for t in servers:
        if t.proc and t.proc.alive():
            bench.refs[t.name]["memory"]["after_wrk_mb"] = rss_mb(t.proc.pid)
        keep_for = any(bench.want(c) for c in ("keys100k", "redis", "quotas", "clients10k"))
        if t.name == "keygate" and keep_for and t.proc and t.proc.alive():
            keep = t
        else:
            t.stop()
    return keep


PAIRS = {"keygate/bare": ("keygate", "bare"), "unified/keygate": ("unified", "keygate")}


def run_rounds(bench: Bench, targets: list[Target], c: int) -> None:
    """`--rounds` passes over the targets at concurrency `c`, back to back in each pass, the
    order reversed every other pass.

    A target's figure is its median round (by req/s), with every round's req/s beside it. The
    ratios the checks read are the median of the rounds' own ratios: on a shared machine one
    pair drifts by ±20% from the next (0.66 to 1.16 of bare in five pairs of one run), and a
    ratio taken within one round, seconds apart, is what drift disturbs least.
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    for i in range(bench.opts.rounds):
        # every other round in reverse (direct stays first): what the position in a round
        # does to a server (the one after bare, say) falls on each side alike
        for t in targets if i % 2 == 0 else [targets[0], *targets[:0:-1]]:
            if t.proc is None or t.proc.alive():
                runs.setdefault(t.name, []).append(bench.wrk_case(t, c))
    for name, results in runs.items():
        figure = dict(sorted(results, key=lambda r: r["rps"])[len(results) // 2])
        figure["rounds_rps"] = [r["rps"] for r in results]
        figure["flagged"] = any(r["flagged"] for r in results)
        bench.refs[name].setdefault("wrk", {})[str(c)] = figure
    for label, (top, base) in PAIRS.items():
        a, b = runs.get(top) or [], runs.get(base) or []
        ratios = [x["rps"] / y["rps"] for x, y in zip(a, b, strict=False) if y["rps"]]
        if ratios and len(a) == len(b):
            bench.ratios.setdefault(str(c), {})[label] = {
                "median": statistics.median(ratios),
                "rounds": [round(r, 3) for r in ratios],
            }
            if len(ratios) > 1:
                shown = ", ".join(f"{r:.2f}" for r in ratios)
                log(f"{label} c={c}: median {statistics.median(ratios):.3f} of rounds {shown}")


def unified_target(bench: Bench, keygate: Target) -> Target:
    """The same keygate on its unified endpoint: `/v1/chat/completions` with `groq/…` as the
    model, so the model chooses the provider and the prefix is stripped (SPEC §10). Side by
    side with the prefix case (`/cerebras/v1/...`) in the same run."""
    script = bench.tmp / "post-unified.lua"
    script.write_text(lua_script(UNIFIED_BODY, AUTH_HEADERS), encoding="utf-8")
    t = Target("unified", keygate.port, "/v1/chat/completions", keygate.proc, body=UNIFIED_BODY)
    t.script = script
    t.startup_s = keygate.startup_s
    status, data = http_request(t.port, "POST", t.path, UNIFIED_BODY, AUTH_HEADERS)
    if status != 200:
        raise RuntimeError(f"keygate's unified endpoint answered {status}: {data[:200]!r}")
    bench.refs.setdefault("unified", {})["command"] = keygate.command
    return t


def calibrate_cross_cpu(bench: Bench) -> None:
    """direct at c=1 with nginx on the server's CPU: what crossing CPUs alone costs.

    On virtual machines a request that wakes an idle vCPU can wait milliseconds, which no
    proxy can avoid; this figure tells that floor apart from what the proxy adds.
    """
    cpu = bench.pin.server_cpu
    port = free_port()
    prefix = bench.tmp / "nginx-xcpu"
    try:
        ng = start_nginx(prefix, port, Pinning(cpu, cpu), bench.tmp / "logs")
    except RuntimeError as exc:
        bench.notes.append(f"cross-CPU calibration skipped: {exc}")
        return
    try:
        r = bench.wrk(Target("direct", port, "/v1/chat/completions"), 1, bench.opts.duration_s)
    finally:
        ng.stop()
    direct_c1 = bench.refs["direct"]["wrk"].get("1") or {}
    bench.calibration = {
        "what": "direct at c=1 with nginx pinned to the server CPU (load on the other)",
        "wrk": r.to_json(),
        "added_p50_ms": _diff(r.p50_ms, direct_c1.get("p50_ms")),
        "added_p99_ms": _diff(r.p99_ms, direct_c1.get("p99_ms")),
    }
    log(
        f"cross-CPU c=1    {r.rps:10,.0f} req/s  p50 {_ms(r.p50_ms)}  p99 {_ms(r.p99_ms)}"
        " (nginx on the server CPU: the cost of crossing CPUs alone)"
    )
