"""The streaming case: many long streams through the mock, direct and through each server,
with the servers' memory sampled during and read again after the load."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from keygate.benchmark.common import _mb, log
from keygate.benchmark.procs import rss_mb, run_bounded
from keygate.benchmark.servers import (
    ACCESS_PASSWORD,
    MODEL,
    StartError,
    Target,
    child_env,
    start_mock,
)

if TYPE_CHECKING:
    from keygate.benchmark.runner import Bench


class RssSampler(threading.Thread):
    """Reads a server's RSS every `interval_s` while load runs and keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak: float | None = None
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            value = rss_mb(self.pid)
            if value is not None:
                self.peak = value if self.peak is None else max(self.peak, value)
                self.samples += 1
            if self._halt.wait(self.interval_s):
                return

    def stop(self) -> float | None:
        self._halt.set()
        self.join(timeout=5)
        return self.peak


def stream_load(bench: Bench, target: Target, fmt: str = "openai") -> dict[str, Any]:
    """Run the stream client process against `target` and summarise its figures."""
    o = bench.opts
    per_stream = o.chunks * o.chunk_interval_s + 30.0
    cmd = [sys.executable, "-m", "keygate.benchmark.streams", "--url", target.url]
    cmd += ["--format", fmt]
    cmd += ["--streams", str(o.streams), "--model", MODEL, "--timeout", f"{per_stream:.0f}"]
    cmd += ["--header", f"Authorization: Bearer {ACCESS_PASSWORD}"]
    code, out, err = run_bounded(bench.pin.load(cmd), per_stream + 60.0, child_env())
    try:
        summary: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    except (orjson.JSONDecodeError, IndexError):
        return {"error": f"stream client exited {code}: {(err or out).strip()[-500:]}"}
    expected = o.streams * o.chunks
    summary["chunks_expected"] = expected
    summary["chunks_lost"] = max(0, expected - summary["content_events"])
    summary["flagged"] = bool(
        summary["chunks_lost"]
        or summary["failed_streams"]
        or summary["incomplete_streams"]
        or summary["error_count"]
    )
    return summary


def run_streaming(bench: Bench, started_ok: set[str]) -> None:
    """Streams direct to the mock, then through each server on its own fresh instance."""
    o = bench.opts
    try:
        mock = bench.track(start_mock(bench.pin, bench.tmp / "logs", o.chunks, o.chunk_interval_s))
    except StartError as exc:
        bench.notes.append(str(exc))
        log(f"{exc}; streaming case skipped")
        return
    upstream = f"http://127.0.0.1:{mock.port}"
    direct = stream_load(bench, mock)
    bench.refs.setdefault("direct", {})["streams"] = direct
    _log_streams("direct", direct)
    waiting: list[tuple[float, str, Target]] = []
    for ref in bench.server_refs():
        if ref not in started_ok:
            continue
        try:
            t = bench.start(ref, upstream, probe=False)
        except StartError as exc:
            bench.fail(ref, exc)
            continue
        mem = bench.refs.setdefault(ref, {}).setdefault("memory", {})
        mem["stream_instance_idle_mb"] = bench.idle_rss(t)
        sampler = RssSampler(t.proc.pid) if t.proc and bench.want("memory") else None
        if sampler:
            sampler.start()
        try:
            summary = stream_load(bench, t)
        finally:
            if sampler:
                mem["peak_streams_mb"] = sampler.stop()
        ended = time.perf_counter()
        mem["end_of_load_mb"] = rss_mb(t.proc.pid) if t.proc else None
        _added_vs_direct(summary, direct)
        bench.refs[ref]["streams"] = summary
        _log_streams(ref, summary)
        if bench.want("memory") and t.proc and t.proc.alive():
            waiting.append((ended, ref, t))
        else:
            t.stop()
    mock.stop()
    for ended, ref, t in sorted(waiting, key=lambda w: w[0]):
        pause = ended + o.post_load_wait_s - time.perf_counter()
        if pause > 0:
            log(f"waiting {pause:.0f} s for {ref}'s memory after load")
            time.sleep(pause)
        mem = bench.refs[ref]["memory"]
        mem["after_load_mb"] = rss_mb(t.proc.pid) if t.proc else None
        mem["after_load_wait_s"] = o.post_load_wait_s
        log(f"{ref:8} RSS {o.post_load_wait_s:g} s after load: {_mb(mem['after_load_mb'])}")
        t.stop()


def _added_vs_direct(summary: dict[str, Any], direct: dict[str, Any]) -> None:
    for key in ("ttfc_p50_ms", "ttfc_p99_ms", "gap_p50_ms", "gap_p99_ms"):
        mine, base = summary.get(key), direct.get(key)
        if mine is not None and base is not None:
            summary[f"added_{key}"] = mine - base
    if "content_events" in summary and "content_events" in direct:
        summary["lost_vs_direct"] = direct["content_events"] - summary["content_events"]


def _log_streams(ref: str, s: dict[str, Any]) -> None:
    if "error" in s:
        log(f"{ref:8} streams: {s['error']}")
        return

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    log(
        f"{ref:8} streams x{s['streams']}: TTFC p50 {f(s['ttfc_p50_ms'])} p99 "
        f"{f(s['ttfc_p99_ms'])} ms, gap p50 {f(s['gap_p50_ms'])} p99 {f(s['gap_p99_ms'])} ms, "
        f"lost {s['chunks_lost']}, failed {s['failed_streams']}"
        + (f"  ERRORS {s['errors'][:2]}" if s["flagged"] else "")
    )
