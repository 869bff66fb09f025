"""The benchmark run: stand-ins up, each reference measured in turn, everything stopped.

Order matters for fairness and for the clock: the servers are started cold one by one on nginx
(start-up, idle memory), then every concurrency runs direct, bare and keygate back to back; then
the 100,000-key instance is compared with the 8-key one, interleaved; then come the streams
through the mock, whose servers are left idle afterwards to read their memory once load stops,
and last the minutes-long soak. This module is that order and the figures' assembly; the cases
themselves are in the ``case_*`` modules, and the files a run writes in ``outputs``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keygate.benchmark import report
from keygate.benchmark.case_affinity import run_affinity
from keygate.benchmark.case_clients import run_clients
from keygate.benchmark.case_quota import run_quotas
from keygate.benchmark.case_scale import run_many_keys, run_redis
from keygate.benchmark.case_soak import run_soak
from keygate.benchmark.case_streams import run_streaming
from keygate.benchmark.case_translated import run_translated_streams
from keygate.benchmark.case_wrk import run_nonstreaming
from keygate.benchmark.common import _ms, log
from keygate.benchmark.nginx import nginx_binary, start_nginx
from keygate.benchmark.outputs import _tool_versions, write_outputs
from keygate.benchmark.procs import (
    Pinning,
    detect_pinning,
    free_port,
    http_request,
    raise_fd_limit,
    rss_mb,
)
from keygate.benchmark.servers import (
    AUTH_HEADERS,
    CHAT_BODY,
    Target,
    litellm_available,
    start_bare,
    start_keygate,
    start_litellm,
)
from keygate.benchmark.wrk import WrkResult, lua_script, run_wrk, wrk_binary

__all__ = ["ALIASES", "CASES", "SERVER_REFS", "Bench", "Options", "log", "write_outputs"]

SERVER_REFS = ("bare", "keygate", "litellm")
CASES = (
    "wrk",
    "stream",
    "memory",
    "keys100k",
    "redis",
    "translated",
    "quotas",
    "clients10k",
    "affinity",
    "soak",
)
ALIASES = {
    "nonstream": "wrk",
    "streams": "stream",
    "100k": "keys100k",
    "many-keys": "keys100k",
    "clients": "clients10k",
}


@dataclass(slots=True)
class Options:
    """Everything a run depends on; `__init__.main` fills it from the command line."""

    quick: bool = False
    duration_s: float = 10.0
    rounds: int = 4  # interleaved rounds of each wrk concurrency; ratios are their median
    concurrency: list[int] = field(default_factory=lambda: [1, 10, 50, 200])
    streams: int = 500
    chunks: int = 64
    chunk_interval_s: float = 0.05
    post_load_wait_s: float = 60.0
    many_keys: int = 100_000
    clients: int = 10_000
    soak_s: float = 300.0  # the soak case: seconds of load at `soak_rate` req/s
    soak_rate: float = 200.0
    skip: set[str] = field(default_factory=set)
    out: Path = Path("bench/results")
    start_timeout_s: float = 30.0
    pin: bool = True
    settle_s: float = 1.0
    warmup_s: float = 1.0


class Bench:
    """One invocation: holds the figures and the processes to stop."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.pin: Pinning = detect_pinning() if opts.pin else Pinning()
        self.refs: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}
        self.notes: list[str] = []
        self.keys100k: dict[str, Any] = {}
        self.redis: dict[str, Any] = {}
        self.translated: dict[str, Any] = {}  # Anthropic client → OpenAI-format provider
        self.quotas: dict[str, Any] = {}
        self.affinity: dict[str, Any] = {}  # prefix affinity on against off, same bodies
        self.clients10k: dict[str, Any] = {}
        self.soak: dict[str, Any] = {}
        self.targets: list[Target] = []
        self.calibration: dict[str, Any] = {}
        self.ratios: dict[str, dict[str, Any]] = {}  # per concurrency: median of rounds' ratios
        self.tmp = Path()
        self.script = Path()
        self.machine = report.machine_info()  # before the harness pins itself to one CPU

    # ---- helpers ------------------------------------------------------------------------------

    def want(self, name: str) -> bool:
        return name not in self.opts.skip

    def server_refs(self) -> list[str]:
        names = [r for r in SERVER_REFS if self.want(r)]
        if "litellm" in names and not litellm_available():
            names.remove("litellm")
        return names

    def track(self, target: Target) -> Target:
        self.targets.append(target)
        return target

    def fail(self, ref: str, exc: Exception) -> None:
        msg = str(exc)
        self.failures.setdefault(ref, msg)
        self.refs.setdefault(ref, {})["error"] = msg
        log(msg)

    def start(self, ref: str, upstream: str, probe: bool, **kw: Any) -> Target:
        """Start a server reference on `upstream`; `probe` = wait for a proxied request."""
        timeout = kw.pop("timeout_s", self.opts.start_timeout_s)
        logs = self.tmp / "logs"
        if ref == "bare":
            t = start_bare(upstream, self.pin, logs, timeout, probe=probe)
        elif ref == "keygate":
            t = start_keygate(upstream, self.pin, self.tmp, logs, timeout, probe=probe, **kw)
        elif ref == "litellm":
            t = start_litellm(upstream, self.pin, self.tmp, logs, max(timeout, 90.0), probe=probe)
        else:
            raise ValueError(ref)
        return self.track(t)

    def wrk(
        self, target: Target, concurrency: int, duration_s: float, script: Path | None = None
    ) -> WrkResult:
        r = run_wrk(
            target.url, script or target.script or self.script, concurrency, duration_s, self.pin
        )
        if r.non_2xx:  # show what the failures were: one more request, outside the timing
            try:
                status, body = http_request(
                    target.port, "POST", target.path, target.body, AUTH_HEADERS
                )
                r.sample = f"{status} {body[:300].decode(errors='replace')}"
            except OSError as exc:
                r.sample = f"{type(exc).__name__}: {exc}"
        return r

    def wrk_case(self, target: Target, concurrency: int) -> dict[str, Any]:
        """One recorded wrk run, logged; notes it when the server died during it."""
        r = self.wrk(target, concurrency, self.opts.duration_s)
        flag = f"  ERRORS {r.error_count} {r.error[:200]} {r.sample[:200]}" if r.flagged else ""
        log(
            f"{target.name:8} c={concurrency:<4} {r.rps:10,.0f} req/s"
            f"  p50 {_ms(r.p50_ms)}  p99 {_ms(r.p99_ms)}{flag}"
        )
        if target.proc is not None and not target.proc.alive():
            self.notes.append(f"{target.name} exited during the c={concurrency} run")
            log(f"{target.name} exited during the run:\n{target.proc.log_tail()}")
        return r.to_json()

    def idle_rss(self, target: Target) -> float | None:
        time.sleep(self.opts.settle_s)
        return rss_mb(target.proc.pid) if target.proc else None

    # ---- whole run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        if nginx_binary() is None or wrk_binary() is None:
            raise RuntimeError(
                "nginx and wrk are required (Debian: apt-get install nginx-light wrk)"
            )
        raise_fd_limit()
        with contextlib.ExitStack() as stack:
            self.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kg-bench-")))
            (self.tmp / "logs").mkdir()
            stack.callback(self._stop_all)  # runs before the directory is removed
            self.script = self.tmp / "post.lua"
            self.script.write_text(lua_script(CHAT_BODY, AUTH_HEADERS), encoding="utf-8")
            busy = report.busy_cpu_percent()
            self.machine["busy_cpu_percent_before"] = busy
            if busy is not None and busy > 15:
                note = f"the machine was already {busy:.0f}% busy (of one CPU) before the run"
                self.notes.append(f"Warning: {note}: figures are noisy.")
                log(f"warning: {note}; figures will be noisy")
            if self.pin.enabled:
                log(f"pinning: servers on CPU {self.pin.server_cpu}, load on {self.pin.load_cpu}")
            else:
                log("not pinning (needs taskset and 2 CPUs): figures will be noisier")
            nginx_port = free_port()
            nginx = start_nginx(self.tmp / "nginx", nginx_port, self.pin, self.tmp / "logs")
            stack.callback(nginx.stop)
            kg8 = run_nonstreaming(self, nginx_port)
            if kg8 is not None:
                try:
                    if self.want("keys100k"):
                        run_many_keys(self, kg8, nginx_port)
                    if self.want("redis"):
                        run_redis(self, kg8, nginx_port)
                    if self.want("quotas"):
                        run_quotas(self, kg8, nginx_port)
                    if self.want("clients10k"):
                        run_clients(self, kg8, nginx_port)
                finally:
                    kg8.stop()
            if self.want("affinity"):
                run_affinity(self, nginx_port)
            nginx.stop()
            started = {r for r in self.server_refs() if r not in self.failures}
            if self.want("stream"):
                run_streaming(self, started)
                if self.want("translated") and "keygate" in started:
                    run_translated_streams(self)
            if self.want("soak"):  # last: minutes long, and its own keygate and mock
                run_soak(self)
        return self.result(time.perf_counter() - t0)

    def _stop_all(self) -> None:
        for t in reversed(self.targets):
            t.stop()

    def result(self, elapsed_s: float) -> dict[str, Any]:
        o = self.opts
        direct_c1 = report.dig(self.refs, "direct", "wrk", "1")
        for ref, entry in self.refs.items():
            mine = report.dig(entry, "wrk", "1")
            if ref != "direct" and mine and direct_c1:
                entry["added_c1"] = {
                    f"{p}_ms": mine[f"{p}_ms"] - direct_c1[f"{p}_ms"]
                    for p in ("p50", "p99")
                    if mine.get(f"{p}_ms") is not None and direct_c1.get(f"{p}_ms") is not None
                }
        flags = [
            f"{ref} c={c}: {r['errors']} errors{' (' + r['error'][:120] + ')' if r['error'] else ''}"
            for ref, entry in self.refs.items()
            for c, r in (entry.get("wrk") or {}).items()
            if r["flagged"]
        ]
        flags += [
            f"{ref} streams: lost {s.get('chunks_lost')}, failed {s.get('failed_streams')}"
            f"{', ' + s['error'] if 'error' in s else ''}"
            for ref, entry in self.refs.items()
            if (s := entry.get("streams")) and (s.get("flagged") or "error" in s)
        ]
        if "error" in self.soak:
            flags.append(f"soak: {self.soak['error'].strip().splitlines()[0][:200]}")
        elif self.soak.get("flagged"):
            flags.append(
                f"soak: {self.soak['gateway_errors']} gateway-made errors,"
                f" {self.soak['failed']} without a full answer"
            )
        data: dict[str, Any] = {
            "schema": 1,
            "machine": self.machine,
            "tools": _tool_versions(),
            "settings": {
                "quick": o.quick,
                "duration_s": o.duration_s,
                "rounds": o.rounds,
                "concurrency": o.concurrency,
                "streams": o.streams,
                "chunks": o.chunks,
                "chunk_interval_s": o.chunk_interval_s,
                "post_load_wait_s": o.post_load_wait_s,
                "many_keys": o.many_keys,
                "clients": o.clients,
                "soak_s": o.soak_s,
                "soak_rate": o.soak_rate,
                "skip": sorted(o.skip),
                "pinning": {"server_cpu": self.pin.server_cpu, "load_cpu": self.pin.load_cpu},
            },
            "references": {r: self.refs[r] for r in report.REFS if r in self.refs},
            "keys100k": self.keys100k or None,
            "redis": self.redis or None,
            "translated": self.translated or None,
            "quotas": self.quotas or None,
            "affinity": self.affinity or None,
            "clients10k": self.clients10k or None,
            "soak": self.soak or None,
            "calibration": self.calibration or None,
            "ratios": self.ratios or None,
            "failures": self.failures,
            "flags": flags,
            "notes": self.notes,
            "elapsed_s": elapsed_s,
        }
        data["verdict"] = report.verdict(data)
        return data
