"""The soak case (issue 23): keygate at a fixed moderate rate for minutes, its memory watched.

A fresh keygate in front of the mock upstream takes an open-loop load (`soak_load`, on the load
CPU) of mostly whole answers, some streams (a few left by the client after their first chunk)
and upstream 429s and 500s that keygate retries on another key. The gateway's RSS is read every
few seconds. Once the load has stopped, the admin API says how many admission slots (providers'
in-flight and queued) and key leases (keys' in-flight) are still held: all must be back.

Checks: RSS after warm-up stays within 5 MB of its value at the end of warm-up (the highest
sample after it, not only the last), 0 slots or leases held at the end, 0 gateway-made 5xx and
no request left without an answer.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from keygate.benchmark.common import _mb, log
from keygate.benchmark.procs import http_request, rss_mb, run_bounded
from keygate.benchmark.servers import (
    ACCESS_PASSWORD,
    ADMIN_PASSWORD,
    MODEL,
    UNIFIED_MODEL,
    StartError,
    child_env,
    start_mock,
)

if TYPE_CHECKING:
    from keygate.benchmark.runner import Bench

TARGET_RSS_GROWTH_MB = 5.0
SAMPLE_S = 2.0  # RSS read this often during the load
WARMUP_MAX_S = 60.0  # warm-up: the first minute, or the first quarter of a shorter soak
PROGRESS_S = 30.0
DRAIN_S = 10.0  # how long the held counts may take to come back to 0 after the load
MOCK_CHUNKS, MOCK_INTERVAL_S = 16, 0.01  # a stream lasts about 0.2 s
# Real retry settings (3 retries, short backoff) with limits that count but do not bind.
PROVIDER = {"rps": 0, "max_conn": 256, "queue": 10000, "retries": 3, "backoff_base_s": 0.05}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_PASSWORD}"}


class RssSeries(threading.Thread):
    """(seconds since start, RSS MB) every `interval_s` until stopped; logs now and then."""

    def __init__(self, pid: int, total_s: float, interval_s: float = SAMPLE_S) -> None:
        super().__init__(daemon=True)
        self.pid, self.total_s, self.interval_s = pid, total_s, interval_s
        self.samples: list[tuple[float, float]] = []
        self.start_t = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        self.start_t = time.perf_counter()
        next_log = PROGRESS_S
        while True:
            t = time.perf_counter() - self.start_t
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append((t, value))
                if t >= next_log:
                    log(f"soak {t:4.0f}/{self.total_s:.0f} s: keygate RSS {value:.1f} MB")
                    next_log += PROGRESS_S
            if self._halt.wait(self.interval_s):
                return

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join(timeout=5)
        return self.samples


def warmup_s(soak_s: float) -> float:
    return min(WARMUP_MAX_S, soak_s / 4)


def rss_figures(samples: list[tuple[float, float]], warm_s: float) -> dict[str, Any]:
    """RSS at the end of warm-up and at the end, growth between them (last and highest sample
    after warm-up), the least-squares slope after warm-up in MB per minute, and the peak."""
    out: dict[str, Any] = {"samples": len(samples), "warmup_s": warm_s}
    if not samples:
        return out
    after = [(t, v) for t, v in samples if t >= warm_s] or samples[-1:]
    warm = after[0][1]
    out.update(
        warmup_mb=warm,
        end_mb=samples[-1][1],
        max_mb=max(v for _, v in samples),
        max_after_warmup_mb=max(v for _, v in after),
        growth_mb=samples[-1][1] - warm,
        growth_max_mb=max(v for _, v in after) - warm,
    )
    if len(after) >= 3:
        mt = sum(t for t, _ in after) / len(after)
        mv = sum(v for _, v in after) / len(after)
        den = sum((t - mt) ** 2 for t, _ in after)
        if den > 0:
            out["slope_mb_per_min"] = 60.0 * sum((t - mt) * (v - mv) for t, v in after) / den
    return out


def _admin(port: int, path: str) -> Any:
    status, body = http_request(port, "GET", path, None, ADMIN_HEADERS, timeout_s=10.0)
    if status != 200:
        raise OSError(f"GET {path} answered {status}: {body[:200].decode(errors='replace')}")
    return orjson.loads(body)


def held(port: int) -> dict[str, Any]:
    """Slots (admission in flight and queued, per provider) and leases (keys in flight) held
    now, from the admin API."""
    providers = _admin(port, "/api/providers")["providers"]
    keys = _admin(port, "/api/keys?limit=500")["keys"]
    slots = sum(int(p.get("in_flight") or 0) for p in providers)
    queued = sum(int(p.get("queued") or 0) for p in providers)
    leases = sum(int(k.get("inflight") or 0) for k in keys)
    return {
        "slots": slots,
        "queued": queued,
        "leases": leases,
        "keys_seen": len(keys),
        "total": slots + queued + leases,
        "by_provider": {
            p["name"]: {"in_flight": p.get("in_flight"), "queued": p.get("queued")}
            for p in providers
            if p.get("in_flight") or p.get("queued")
        },
    }


def read_held(port: int) -> dict[str, Any]:
    """`held`, polled for up to DRAIN_S until all are back; `after_s` says how long it took."""
    t0 = time.perf_counter()
    while True:
        now = held(port)
        now["after_s"] = time.perf_counter() - t0
        if now["total"] == 0 or now["after_s"] >= DRAIN_S:
            return now
        time.sleep(0.25)


def _mock_count(port: int) -> int | None:
    """Requests the mock has answered so far (upstream tries, retries included)."""
    try:
        _, body = http_request(port, "GET", "/_mock/stats")
        return int(orjson.loads(body)["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_soak(bench: Bench) -> None:
    o = bench.opts
    info: dict[str, Any] = {"seconds": o.soak_s, "rate": o.soak_rate, "provider": PROVIDER}
    bench.soak = info
    logs = bench.tmp / "logs"
    try:
        mock = bench.track(start_mock(bench.pin, logs, MOCK_CHUNKS, MOCK_INTERVAL_S))
    except StartError as exc:
        info["error"] = str(exc)
        log(f"{exc}; soak skipped")
        return
    try:
        try:
            t = bench.start(
                "keygate",
                f"http://127.0.0.1:{mock.port}",
                probe=True,
                label="keygate-soak",
                provider_extra=PROVIDER,
            )
        except StartError as exc:
            info["error"] = str(exc)
            bench.failures["keygate soak"] = str(exc)
            log(f"soak: {exc}")
            return
        try:
            _soak(bench, info, t.port, t.proc.pid if t.proc else None, mock.port)
            if t.proc is not None and not t.proc.alive():
                info["error"] = "keygate exited during the soak"
                log(f"keygate exited during the soak:\n{t.proc.log_tail()}")
        finally:
            t.stop()
    finally:
        mock.stop()


def _soak(bench: Bench, info: dict[str, Any], port: int, pid: int | None, mock_port: int) -> None:
    o = bench.opts
    info["idle_mb"] = rss_mb(pid) if pid else None
    warm = warmup_s(o.soak_s)
    log(
        f"soak: {o.soak_rate:g} req/s for {o.soak_s:g} s (warm-up {warm:g} s) through keygate,"
        f" idle RSS {_mb(info['idle_mb'])}"
    )
    cmd = [sys.executable, "-m", "keygate.benchmark.soak_load"]
    cmd += ["--gateway", f"http://127.0.0.1:{port}", "--mock", f"http://127.0.0.1:{mock_port}"]
    cmd += ["--rate", f"{o.soak_rate:g}", "--seconds", f"{o.soak_s:g}"]
    cmd += ["--model", MODEL, "--unified-model", UNIFIED_MODEL]
    cmd += ["--header", f"Authorization: Bearer {ACCESS_PASSWORD}"]
    before = _mock_count(mock_port)
    series = RssSeries(pid, o.soak_s) if pid else None
    if series:
        series.start()
    try:
        code, out, err = run_bounded(bench.pin.load(cmd), o.soak_s + 90.0, child_env())
    finally:
        samples = series.stop() if series else []
    try:
        load: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    except (orjson.JSONDecodeError, IndexError):
        info["error"] = f"soak client exited {code}: {(err or out).strip()[-500:]}"
        log(f"soak: {info['error']}")
        return
    info["load"] = load
    info["rss"] = rss_figures(samples, warm)
    info["rss"]["series"] = [[round(t, 1), round(v, 2)] for t, v in samples]
    try:
        info["held"] = read_held(port)
        stats = _admin(port, "/api/stats")
        info["gateway_totals"] = {
            k: stats["totals"].get(k) for k in ("requests", "ok", "err_4xx", "err_5xx")
        }
        after = _mock_count(mock_port)
        if before is not None and after is not None:
            info["upstream_tries"] = after - before
    except (OSError, ValueError, KeyError) as exc:
        info["held_error"] = f"{type(exc).__name__}: {exc}"
        log(f"soak: reading the admin API failed: {info['held_error']}")
    info["after_mb"] = rss_mb(pid) if pid else None
    kinds = load["kinds"]
    info["gateway_5xx"] = sum(
        n for k in kinds.values() for s, n in k["gateway_statuses"].items() if s.startswith("5")
    )
    info["gateway_errors"] = sum(k["gateway_errors"] for k in kinds.values())
    info["failed"] = sum(k["failed"] + k["incomplete"] for k in kinds.values())
    info["failed"] += load.get("unfinished", 0) + load.get("skipped", 0)
    info["flagged"] = bool(info["gateway_errors"] or info["failed"])
    _log_soak(info)


def _log_soak(info: dict[str, Any]) -> None:
    for line in soak_summary(info):
        log(line)


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def soak_summary(soak: dict[str, Any]) -> list[str]:
    """The soak's lines under the table."""
    if not soak:
        return []
    if "load" not in soak:
        why = (soak.get("error") or "no figures").strip().splitlines()[0]
        return [f"Soak: not measured ({why[:200]})"]
    load, rss, held_now = soak["load"], soak.get("rss") or {}, soak.get("held") or {}
    lines = [
        f"Soak: {load['rate']:g} req/s offered for {load['seconds']:g} s"
        f" ({load['achieved_rate'] or 0:.1f} sent/s, {sum(load['injected'].values())} upstream"
        f" errors injected: {load['injected']['429']} x 429, {load['injected']['500']} x 500)",
        f"  RSS MB: idle {_f(soak.get('idle_mb'))}, end of warm-up ({rss.get('warmup_s', 0):g} s)"
        f" {_f(rss.get('warmup_mb'))}, end {_f(rss.get('end_mb'))}, max {_f(rss.get('max_mb'))};"
        f" growth after warm-up {_f(rss.get('growth_mb'), 2)}"
        f" (highest {_f(rss.get('growth_max_mb'), 2)}),"
        f" slope {_f(rss.get('slope_mb_per_min'), 3)} MB/min",
    ]
    for kind, k in load["kinds"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in k["statuses"].items()) or "-"
        lines.append(
            f"  {kind:9} sent {k['sent']:6}  {statuses}  ok {k['ok']}"
            f"  p50 {_f(k['p50_ms'], 2)} p99 {_f(k['p99_ms'], 2)} ms"
            + (f"  gateway errors {k['gateway_errors']}" if k["gateway_errors"] else "")
            + (f"  relayed upstream errors {k['upstream_errors']}" if k["upstream_errors"] else "")
            + (f"  failed {k['failed'] + k['incomplete']}" if k["failed"] + k["incomplete"] else "")
        )
    tries, sent = soak.get("upstream_tries"), sum(k["sent"] for k in load["kinds"].values())
    if tries is not None:
        lines.append(
            f"  upstream tries {tries:,} for {sent:,} requests ({tries - sent:,} retries);"
            f" keygate counted {soak.get('gateway_totals') or '-'}"
        )
    if held_now:
        lines.append(
            f"  held at the end: {held_now['slots']} slots, {held_now['queued']} queued,"
            f" {held_now['leases']} key leases ({held_now['keys_seen']} keys read,"
            f" after {held_now['after_s']:.2f} s)"
        )
    elif soak.get("held_error"):
        lines.append(f"  held at the end: not read ({soak['held_error'][:200]})")
    return lines


def soak_checks(soak: dict[str, Any]) -> list[tuple[str, Any, bool | None, str, bool]]:
    """(target, value, ok or None, shown, flagged) for the verdict."""
    names = (
        f"soak: RSS growth after warm-up <= {TARGET_RSS_GROWTH_MB:g} MB",
        "soak: 0 slots or leases held at the end",
        "soak: 0 gateway-made 5xx, every request answered",
    )
    if not soak or "load" not in soak:
        return [(n, None, None, "not measured", False) for n in names]
    flagged = bool(soak.get("flagged"))
    rss = soak.get("rss") or {}
    growth = rss.get("growth_max_mb")
    out: list[tuple[str, Any, bool | None, str, bool]] = [
        (
            names[0],
            growth,
            None if growth is None else growth <= TARGET_RSS_GROWTH_MB,
            "not measured"
            if growth is None
            else f"{growth:+.2f} MB highest ({rss['warmup_mb']:.1f} -> end {rss['end_mb']:.1f}"
            f" MB, slope {_f(rss.get('slope_mb_per_min'), 3)} MB/min)",
            flagged,
        )
    ]
    held_now = soak.get("held")
    total = None if not held_now else held_now["total"]
    out.append(
        (
            names[1],
            total,
            None if total is None else total == 0,
            "not read"
            if not held_now
            else f"{held_now['slots']} slots, {held_now['queued']} queued,"
            f" {held_now['leases']} leases",
            False,
        )
    )
    bad = soak["gateway_5xx"] + soak["failed"]
    out.append(
        (
            names[2],
            bad,
            bad == 0,
            f"{soak['gateway_5xx']} gateway 5xx, {soak['failed']} without a full answer"
            f" ({soak['gateway_errors']} gateway-made errors of any status)",
            False,
        )
    )
    return out
