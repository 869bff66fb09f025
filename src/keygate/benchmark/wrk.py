"""Non-streaming load with wrk: a generated Lua script for the POST, and a parser for its report.

wrk is a well-kept C load generator that one core can drive far past any Python server, so the
figures measure the server, not the client.
"""

from __future__ import annotations

import re
import shutil
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keygate.benchmark.procs import Pinning, run_bounded

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SI = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}
_LAT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.M)
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL_RE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCK_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M)
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)", re.M)
_LUA_PLAIN = frozenset(string.ascii_letters + string.digits + " -_.,:;/{}[]()+=*@#$%&!?<>|~^'")
_PCT_FIELD = {"50": "p50_ms", "75": "p75_ms", "90": "p90_ms", "99": "p99_ms"}
_AVG_RE = re.compile(r"^\s*Latency\s+([\d.]+)(us|ms|s|m|h)\s", re.M)


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def lua_script(body: bytes, headers: Mapping[str, str]) -> str:
    """A wrk script that sends every request as this POST."""

    def quote(text: str | bytes) -> str:
        # A plain Lua string with every other byte as a decimal escape: safe for any input.
        raw = text.encode() if isinstance(text, str) else text
        return '"' + "".join(chr(b) if chr(b) in _LUA_PLAIN else f"\\{b:03d}" for b in raw) + '"'

    lines = ['wrk.method = "POST"', f"wrk.body = {quote(body)}"]
    lines += [f"wrk.headers[{quote(k)}] = {quote(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class WrkResult:
    """One wrk run; `error` is set when the run itself failed and the figures mean nothing."""

    concurrency: int
    duration_s: float
    rps: float = 0.0
    requests: int = 0
    avg_ms: float | None = None
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    error: str = ""
    sample: str = ""  # one failing answer, to show what the errors were

    @property
    def error_count(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    @property
    def flagged(self) -> bool:
        """A run with any failed request or socket error does not count as a clean figure."""
        return bool(self.error) or self.error_count > 0 or self.requests == 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["errors"] = self.error_count
        d["flagged"] = self.flagged
        return d


def parse_wrk(text: str, concurrency: int, duration_s: float) -> WrkResult:
    """Read the figures out of `wrk --latency` output."""
    r = WrkResult(concurrency=concurrency, duration_s=duration_s)
    m = _RPS_RE.search(text)
    if m is None:
        r.error = "no Requests/sec in wrk output"
        return r
    r.rps = float(m.group(1))
    if (m := _TOTAL_RE.search(text)) is not None:
        r.requests = int(m.group(1))
    if (m := _AVG_RE.search(text)) is not None:
        r.avg_ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    for pct, value, unit in _LAT_RE.findall(text):
        ms = float(value) * _UNIT_MS[unit]
        key = _PCT_FIELD.get(pct)
        if key:
            setattr(r, key, ms)
    if (m := _SOCK_RE.search(text)) is not None:
        r.socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    if (m := _NON2XX_RE.search(text)) is not None:
        r.non_2xx = int(m.group(1))
    return r


def run_wrk(
    url: str,
    script: Path,
    concurrency: int,
    duration_s: float,
    pin: Pinning,
    timeout: str = "5s",
) -> WrkResult:
    """One bounded wrk run with a single thread (the load core is one CPU)."""
    binary = wrk_binary()
    if binary is None:
        return WrkResult(concurrency, duration_s, error="wrk not found")
    secs = max(1, round(duration_s))
    cmd = [
        binary,
        "-t1",
        f"-c{concurrency}",
        f"-d{secs}s",
        "--latency",
        "--timeout",
        timeout,
        "-s",
        str(script),
        url,
    ]
    code, out, err = run_bounded(pin.load(cmd), timeout_s=secs + 30)
    result = parse_wrk(out, concurrency, secs)
    if code != 0 and not result.error:
        result.error = f"wrk exited {code}"
    elif err.strip() and not result.error:  # e.g. a Lua error: wrk then sends plain GETs
        result.error = "wrk complained"
    if result.error:
        result.error += ": " + (err.strip() or out.strip())[-500:]
    return result
