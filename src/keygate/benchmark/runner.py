"""The benchmark run: stand-ins up, each reference measured in turn, everything stopped.

Order matters for fairness and for the clock: the servers are started cold one by one on nginx
(start-up, idle memory), then every concurrency runs direct, bare and keygate back to back; then
the 100,000-key instance is compared with the 8-key one, interleaved; last come the streams
through the mock, whose servers are left idle afterwards to read their memory once load stops.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from keygate.benchmark import report
from keygate.benchmark.nginx import nginx_binary, start_nginx
from keygate.benchmark.procs import (
    Pinning,
    detect_pinning,
    free_port,
    http_request,
    raise_fd_limit,
    rss_mb,
    run_bounded,
)
from keygate.benchmark.servers import (
    ACCESS_PASSWORD,
    AUTH_HEADERS,
    CHAT_BODY,
    MODEL,
    StartError,
    Target,
    child_env,
    litellm_available,
    start_bare,
    start_keygate,
    start_litellm,
    start_mock,
    start_redis,
)
from keygate.benchmark.wrk import WrkResult, lua_script, run_wrk, wrk_binary

SERVER_REFS = ("bare", "keygate", "litellm")
CASES = ("wrk", "stream", "memory", "keys100k", "redis")
ALIASES = {"nonstream": "wrk", "streams": "stream", "100k": "keys100k", "many-keys": "keys100k"}
MANY_KEYS_CONCURRENCY = 50


@dataclass(slots=True)
class Options:
    """Everything a run depends on; `__init__.main` fills it from the command line."""

    quick: bool = False
    duration_s: float = 10.0
    concurrency: list[int] = field(default_factory=lambda: [1, 10, 50, 200])
    streams: int = 500
    chunks: int = 64
    chunk_interval_s: float = 0.05
    post_load_wait_s: float = 60.0
    many_keys: int = 100_000
    skip: set[str] = field(default_factory=set)
    out: Path = Path("bench/results")
    start_timeout_s: float = 30.0
    pin: bool = True
    settle_s: float = 1.0
    warmup_s: float = 1.0


def log(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the table."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


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
        self.targets: list[Target] = []
        self.calibration: dict[str, Any] = {}
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

    def wrk(self, target: Target, concurrency: int, duration_s: float) -> WrkResult:
        r = run_wrk(target.url, self.script, concurrency, duration_s, self.pin)
        if r.non_2xx:  # show what the failures were: one more request, outside the timing
            try:
                status, body = http_request(
                    target.port, "POST", target.path, CHAT_BODY, AUTH_HEADERS
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

    # ---- phases -------------------------------------------------------------------------------

    def run_nonstreaming(self, nginx_port: int) -> Target | None:
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
        self.refs.setdefault("direct", {})
        servers: list[Target] = []
        for ref in self.server_refs():
            try:
                t = self.start(ref, upstream, probe=True)
            except StartError as exc:
                self.fail(ref, exc)
                continue
            entry = self.refs.setdefault(ref, {})
            entry["startup_s"] = t.startup_s
            entry["command"] = t.command
            entry.setdefault("memory", {})["idle_mb"] = self.idle_rss(t)
            log(
                f"{ref:8} started in {t.startup_s:.3f} s, idle RSS {_mb(entry['memory']['idle_mb'])}"
            )
            servers.append(t)
        if self.want("wrk"):
            for t in servers:  # unrecorded: first connections, lazy imports, caches
                if self.opts.warmup_s > 0:
                    self.wrk(t, 10, self.opts.warmup_s)
            for c in self.opts.concurrency:
                for t in [direct, *servers]:
                    if t.proc is None or t.proc.alive():
                        self.refs[t.name].setdefault("wrk", {})[str(c)] = self.wrk_case(t, c)
            if self.pin.enabled and 1 in self.opts.concurrency:
                self.calibrate_cross_cpu()
        keep: Target | None = None
        for t in servers:
            if t.proc and t.proc.alive():
                self.refs[t.name]["memory"]["after_wrk_mb"] = rss_mb(t.proc.pid)
            keep_for = self.want("keys100k") or self.want("redis")
            if t.name == "keygate" and keep_for and t.proc and t.proc.alive():
                keep = t
            else:
                t.stop()
        return keep

    def calibrate_cross_cpu(self) -> None:
        """direct at c=1 with nginx on the server's CPU: what crossing CPUs alone costs.

        On virtual machines a request that wakes an idle vCPU can wait milliseconds, which no
        proxy can avoid; this figure tells that floor apart from what the proxy adds.
        """
        cpu = self.pin.server_cpu
        port = free_port()
        prefix = self.tmp / "nginx-xcpu"
        try:
            ng = start_nginx(prefix, port, Pinning(cpu, cpu), self.tmp / "logs")
        except RuntimeError as exc:
            self.notes.append(f"cross-CPU calibration skipped: {exc}")
            return
        try:
            r = self.wrk(Target("direct", port, "/v1/chat/completions"), 1, self.opts.duration_s)
        finally:
            ng.stop()
        direct_c1 = self.refs["direct"]["wrk"].get("1") or {}
        self.calibration = {
            "what": "direct at c=1 with nginx pinned to the server CPU (load on the other)",
            "wrk": r.to_json(),
            "added_p50_ms": _diff(r.p50_ms, direct_c1.get("p50_ms")),
            "added_p99_ms": _diff(r.p99_ms, direct_c1.get("p99_ms")),
        }
        log(
            f"cross-CPU c=1    {r.rps:10,.0f} req/s  p50 {_ms(r.p50_ms)}  p99 {_ms(r.p99_ms)}"
            " (nginx on the server CPU: the cost of crossing CPUs alone)"
        )

    def run_many_keys(self, kg8: Target, nginx_port: int) -> None:
        """keygate with many keys vs the 8-key instance, interleaved so drift hits both alike."""
        n = self.opts.many_keys
        keys = [f"csk-many{i:07d}" + "k" * 40 for i in range(n)]
        info: dict[str, Any] = {"keys": n, "concurrency": MANY_KEYS_CONCURRENCY}
        self.keys100k = info
        try:
            t = self.start(
                "keygate",
                f"http://127.0.0.1:{nginx_port}",
                probe=True,
                keys=keys,
                label="keygate-many",
                timeout_s=max(self.opts.start_timeout_s, 120.0),
            )
        except StartError as exc:
            info["error"] = str(exc)
            self.failures[f"keygate with {n:,} keys"] = str(exc)
            log(f"{n:,} keys: {exc}")
            return
        info["startup_s"] = t.startup_s
        info["import_s"] = t.import_s
        info["idle_mb"] = self.idle_rss(t)
        log(
            f"keygate with {n:,} keys: imported in {t.import_s or 0:.2f} s, started in"
            f" {t.startup_s:.3f} s, idle {_mb(info['idle_mb'])}"
        )
        if self.opts.warmup_s > 0:
            self.wrk(t, 10, self.opts.warmup_s)
        half = max(1.0, self.opts.duration_s / 2)
        runs: dict[str, list[dict[str, Any]]] = {"8": [], "many": []}
        for _ in range(2):
            for label, target in (("8", kg8), ("many", t)):
                r = self.wrk(target, MANY_KEYS_CONCURRENCY, half)
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

    def run_redis(self, kg8: Target, nginx_port: int) -> None:
        """The Redis form against the local form, interleaved: added latency at c=1, and
        throughput at c=50 (issue 6: what sharing limits across instances costs)."""
        info: dict[str, Any] = {}
        self.redis = info
        try:
            redis_proc, url = start_redis(self.pin, self.tmp / "logs")
        except StartError as exc:
            info["error"] = str(exc)
            log(f"redis case skipped: {exc}")
            return
        try:
            t = self.start(
                "keygate",
                f"http://127.0.0.1:{nginx_port}",
                probe=True,
                label="keygate-redis",
                extra_env={"KEYGATE_REDIS_URL": url},
            )
        except StartError as exc:
            redis_proc.stop()
            info["error"] = str(exc)
            self.failures["keygate with Redis"] = str(exc)
            log(f"keygate with Redis: {exc}")
            return
        try:
            if self.opts.warmup_s > 0:
                self.wrk(t, 10, self.opts.warmup_s)
            half = max(1.0, self.opts.duration_s / 2)
            for conc in (1, MANY_KEYS_CONCURRENCY):
                runs: dict[str, list[WrkResult]] = {"local": [], "redis": []}
                for _ in range(2):
                    for label, target in (("local", kg8), ("redis", t)):
                        r = self.wrk(target, conc, half)
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

    def stream_load(self, target: Target) -> dict[str, Any]:
        """Run the stream client process against `target` and summarise its figures."""
        o = self.opts
        per_stream = o.chunks * o.chunk_interval_s + 30.0
        cmd = [sys.executable, "-m", "keygate.benchmark.streams", "--url", target.url]
        cmd += ["--streams", str(o.streams), "--model", MODEL, "--timeout", f"{per_stream:.0f}"]
        cmd += ["--header", f"Authorization: Bearer {ACCESS_PASSWORD}"]
        code, out, err = run_bounded(self.pin.load(cmd), per_stream + 60.0, child_env())
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

    def run_streaming(self, started_ok: set[str]) -> None:
        """Streams direct to the mock, then through each server on its own fresh instance."""
        o = self.opts
        try:
            mock = self.track(start_mock(self.pin, self.tmp / "logs", o.chunks, o.chunk_interval_s))
        except StartError as exc:
            self.notes.append(str(exc))
            log(f"{exc}; streaming case skipped")
            return
        upstream = f"http://127.0.0.1:{mock.port}"
        direct = self.stream_load(mock)
        self.refs.setdefault("direct", {})["streams"] = direct
        self._log_streams("direct", direct)
        waiting: list[tuple[float, str, Target]] = []
        for ref in self.server_refs():
            if ref not in started_ok:
                continue
            try:
                t = self.start(ref, upstream, probe=False)
            except StartError as exc:
                self.fail(ref, exc)
                continue
            mem = self.refs.setdefault(ref, {}).setdefault("memory", {})
            mem["stream_instance_idle_mb"] = self.idle_rss(t)
            sampler = RssSampler(t.proc.pid) if t.proc and self.want("memory") else None
            if sampler:
                sampler.start()
            try:
                summary = self.stream_load(t)
            finally:
                if sampler:
                    mem["peak_streams_mb"] = sampler.stop()
            ended = time.perf_counter()
            mem["end_of_load_mb"] = rss_mb(t.proc.pid) if t.proc else None
            self._added_vs_direct(summary, direct)
            self.refs[ref]["streams"] = summary
            self._log_streams(ref, summary)
            if self.want("memory") and t.proc and t.proc.alive():
                waiting.append((ended, ref, t))
            else:
                t.stop()
        mock.stop()
        for ended, ref, t in sorted(waiting, key=lambda w: w[0]):
            pause = ended + o.post_load_wait_s - time.perf_counter()
            if pause > 0:
                log(f"waiting {pause:.0f} s for {ref}'s memory after load")
                time.sleep(pause)
            mem = self.refs[ref]["memory"]
            mem["after_load_mb"] = rss_mb(t.proc.pid) if t.proc else None
            mem["after_load_wait_s"] = o.post_load_wait_s
            log(f"{ref:8} RSS {o.post_load_wait_s:g} s after load: {_mb(mem['after_load_mb'])}")
            t.stop()

    @staticmethod
    def _added_vs_direct(summary: dict[str, Any], direct: dict[str, Any]) -> None:
        for key in ("ttfc_p50_ms", "ttfc_p99_ms", "gap_p50_ms", "gap_p99_ms"):
            mine, base = summary.get(key), direct.get(key)
            if mine is not None and base is not None:
                summary[f"added_{key}"] = mine - base
        if "content_events" in summary and "content_events" in direct:
            summary["lost_vs_direct"] = direct["content_events"] - summary["content_events"]

    @staticmethod
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
            kg8 = self.run_nonstreaming(nginx_port)
            if kg8 is not None:
                try:
                    if self.want("keys100k"):
                        self.run_many_keys(kg8, nginx_port)
                    if self.want("redis"):
                        self.run_redis(kg8, nginx_port)
                finally:
                    kg8.stop()
            nginx.stop()
            started = {r for r in self.server_refs() if r not in self.failures}
            if self.want("stream"):
                self.run_streaming(started)
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
        data: dict[str, Any] = {
            "schema": 1,
            "machine": self.machine,
            "tools": _tool_versions(),
            "settings": {
                "quick": o.quick,
                "duration_s": o.duration_s,
                "concurrency": o.concurrency,
                "streams": o.streams,
                "chunks": o.chunks,
                "chunk_interval_s": o.chunk_interval_s,
                "post_load_wait_s": o.post_load_wait_s,
                "many_keys": o.many_keys,
                "skip": sorted(o.skip),
                "pinning": {"server_cpu": self.pin.server_cpu, "load_cpu": self.pin.load_cpu},
            },
            "references": {r: self.refs[r] for r in report.REFS if r in self.refs},
            "keys100k": self.keys100k or None,
            "redis": self.redis or None,
            "calibration": self.calibration or None,
            "failures": self.failures,
            "flags": flags,
            "notes": self.notes,
            "elapsed_s": elapsed_s,
        }
        data["verdict"] = report.verdict(data)
        return data


def _short(message: str) -> str:
    """The first line of a start failure and the last lines of the server's output."""
    lines = message.strip().splitlines()
    tail = lines[1:][-3:]
    return "\n    ".join([lines[0], *tail]) if lines else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _tool_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    probes: dict[str, Callable[[], list[str]]] = {
        "nginx": lambda: [nginx_binary() or "nginx", "-v"],
        "wrk": lambda: [wrk_binary() or "wrk", "-v"],
    }
    for name, cmd in probes.items():
        try:
            p = subprocess.run(cmd(), capture_output=True, text=True, timeout=5, check=False)
            out[name] = (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            out[name] = "?"
    return out


def write_outputs(data: dict[str, Any], out_dir: Path) -> tuple[str, list[Path], list[str]]:
    """bench.json, bench.txt and bench.png in `out_dir`; returns (text, files, warnings)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    m = data["machine"]
    text = "\n".join(
        [
            f"keygate bench  {m['date']}  {m['cpu']}, {m['cores']} cores, Python {m['python']}"
            + ("  [quick]" if data["settings"]["quick"] else ""),
            "",
            report.format_table(data),
            "",
            "Targets (issue 7):",
            report.format_verdict(data["verdict"]),
        ]
        + (
            ["", "Flagged (errors during the run):", *[f"  {f}" for f in data["flags"]]]
            if data["flags"]
            else []
        )
        + (
            ["", "Not measured:", *[f"  {_short(v)}" for v in data["failures"].values()]]
            if data["failures"]
            else []
        )
        + (["", *data["notes"]] if data["notes"] else [])
        + [
            f"\n{'(! = run had errors) ' if data['flags'] else ''}"
            f"whole suite {data['elapsed_s']:.0f} s; figures in bench.json"
        ]
    )
    files = [out_dir / "bench.json", out_dir / "bench.txt"]
    files[0].write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    files[1].write_text(text + "\n", encoding="utf-8")
    warnings: list[str] = []
    warn = report.write_chart(data, out_dir / "bench.png")
    if warn:
        warnings.append(warn)
    else:
        files.append(out_dir / "bench.png")
    return text, files, warnings
