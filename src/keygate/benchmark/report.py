"""Turning a run's figures into what people read: a table, a verdict against issue 7, a chart.

Only ratios taken side by side in one run mean anything on a noisy machine, so the table puts
the references in adjacent columns and the verdict compares keygate with bare and direct.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keygate.benchmark.case_soak import soak_checks, soak_summary

REFS = ("direct", "bare", "keygate", "unified", "litellm")

# Targets of issue 7 (2-core machine, one keygate worker, load on the other core).
TARGET_RPS_VS_BARE = 0.80
TARGET_UNIFIED_VS_PREFIX = 0.95  # issue 12: /v1 with groq/… beside /cerebras/v1
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 2.0
TARGET_STREAM_GAP_P99_MS = 5.0
TARGET_STREAM_RSS_MB = 150.0
TARGET_IDLE_RSS_MB = 70.0
TARGET_STARTUP_S = 1.0
TARGET_MANY_KEYS_COST = 0.05
TARGET_CLIENTS_RATIO = 0.95  # issue 15: 10,000 client keys vs the single password, c=50


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: they only compare with runs on the same kind of box."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def busy_cpu_percent(window_s: float = 0.5) -> float | None:
    """How busy the machine is before we start (100 = one whole CPU): other load skews figures."""

    def snapshot() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = snapshot()
        time.sleep(window_s)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    cpus = os.cpu_count() or 1
    dt = total1 - total0
    return 100.0 * cpus * (1 - (idle1 - idle0) / dt) if dt > 0 else None


# ---- table ------------------------------------------------------------------------------------


def dig(d: Any, *path: str) -> Any:
    """d[path[0]][path[1]]…, or None as soon as a level is missing."""
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if digits == 0:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _row_specs(
    data: dict[str, Any],
) -> list[tuple[str, Callable[[dict[str, Any]], Any], int, bool]]:
    """(label, getter on a reference's figures, decimals, ratio meaningful)."""
    specs: list[tuple[str, Callable[[dict[str, Any]], Any], int, bool]] = []
    for c in data["settings"]["concurrency"]:
        k = str(c)
        specs += [
            (f"req/s  c={c}", lambda r, k=k: dig(r, "wrk", k, "rps"), 0, True),
            (f"p50 ms c={c}", lambda r, k=k: dig(r, "wrk", k, "p50_ms"), 3, True),
            (f"p99 ms c={c}", lambda r, k=k: dig(r, "wrk", k, "p99_ms"), 3, True),
        ]
    specs += [
        ("added p50 ms c=1", lambda r: dig(r, "added_c1", "p50_ms"), 3, False),
        ("added p99 ms c=1", lambda r: dig(r, "added_c1", "p99_ms"), 3, False),
    ]
    n = data["settings"]["streams"]
    specs += [
        (f"streams x{n}: TTFC p50 ms", lambda r: dig(r, "streams", "ttfc_p50_ms"), 2, True),
        ("streams: TTFC p99 ms", lambda r: dig(r, "streams", "ttfc_p99_ms"), 2, True),
        ("streams: gap p50 ms", lambda r: dig(r, "streams", "gap_p50_ms"), 2, True),
        ("streams: gap p99 ms", lambda r: dig(r, "streams", "gap_p99_ms"), 2, True),
        ("streams: added TTFC p50 ms", lambda r: dig(r, "streams", "added_ttfc_p50_ms"), 2, False),
        ("streams: added gap p99 ms", lambda r: dig(r, "streams", "added_gap_p99_ms"), 2, False),
        ("streams: chunks lost", lambda r: dig(r, "streams", "chunks_lost"), 0, False),
        ("RSS idle MB", lambda r: dig(r, "memory", "idle_mb"), 1, True),
        ("RSS peak under streams MB", lambda r: dig(r, "memory", "peak_streams_mb"), 1, True),
        ("RSS after load MB", lambda r: dig(r, "memory", "after_load_mb"), 1, True),
        ("start-up s", lambda r: r.get("startup_s"), 3, True),
    ]
    return specs


def format_table(data: dict[str, Any]) -> str:
    """Rows per case, one column per reference, then keygate/bare and keygate/direct."""
    refs = [r for r in REFS if r in data["references"]]
    header = ["case", *refs, "kg/bare", "kg/direct"]
    rows: list[list[str]] = []
    for label, get, digits, ratio_ok in _row_specs(data):
        vals = {r: get(data["references"][r]) for r in refs}
        if all(v is None for v in vals.values()):
            continue
        cells = [label]
        for r in refs:
            cell = _fmt(vals[r], digits)
            if vals[r] is not None and _flagged(data["references"][r], label):
                cell += "!"
            cells.append(cell)
        for base in ("bare", "direct"):
            kg, other = vals.get("keygate"), vals.get(base)
            ok = ratio_ok and isinstance(kg, int | float) and isinstance(other, int | float)
            cells.append(f"{kg / other:.2f}" if ok and other else "-")
        rows.append(cells)
    many = data.get("keys100k") or {}
    if many.get("ratio") is not None and "keygate" in refs:
        n = f"{many['keys']:,} keys"
        flag = "!" if many.get("flagged") else ""
        for label, value in (
            (f"req/s c={many['concurrency']}, 8 keys (paired)", _fmt(many.get("rps_8"), 0) + flag),
            (f"req/s c={many['concurrency']}, {n}", _fmt(many.get("rps_many"), 0) + flag),
            (f"RSS idle MB, {n}", _fmt(many.get("idle_mb"), 1)),
            (f"start-up s, {n}", _fmt(many.get("startup_s"), 3)),
        ):
            cells = [label, *("-" for _ in refs), "-", "-"]
            cells[1 + refs.index("keygate")] = value
            rows.append(cells)
    shared = data.get("redis") or {}
    if shared.get("ratio") is not None and "keygate" in refs:
        for label, value in (
            ("Redis form: added p50 ms c=1", _fmt(shared.get("added_p50_ms"), 3)),
            ("Redis form: added p99 ms c=1", _fmt(shared.get("added_p99_ms"), 3)),
            ("Redis form: req/s c=50 (local)", _fmt(shared.get("rps_local"), 0)),
            ("Redis form: req/s c=50 (redis)", _fmt(shared.get("rps_redis"), 0)),
        ):
            cells = [label, *("-" for _ in refs), "-", "-"]
            cells[1 + refs.index("keygate")] = value
            rows.append(cells)
    quota = data.get("quotas") or {}
    if quota.get("ratio") is not None and "keygate" in refs:
        flag = "!" if quota.get("flagged") else ""
        for label, value in (
            ("quotas: req/s c=50 (off, paired)", _fmt(quota.get("rps_off"), 0) + flag),
            ("quotas: req/s c=50 (every key)", _fmt(quota.get("rps_on"), 0) + flag),
        ):
            cells = [label, *("-" for _ in refs), "-", "-"]
            cells[1 + refs.index("keygate")] = value
            rows.append(cells)
    aff = data.get("affinity") or {}
    if aff.get("ratio") is not None and "keygate" in refs:
        flag = "!" if aff.get("flagged") else ""
        for label, value in (
            ("affinity: req/s c=50 (off, paired)", _fmt(aff.get("rps_off"), 0) + flag),
            ("affinity: req/s c=50 (prefix)", _fmt(aff.get("rps_on"), 0) + flag),
        ):
            cells = [label, *("-" for _ in refs), "-", "-"]
            cells[1 + refs.index("keygate")] = value
            rows.append(cells)
    clients = data.get("clients10k") or {}
    if clients.get("ratio") is not None and "keygate" in refs:
        flag = "!" if clients.get("flagged") else ""
        c = clients["concurrency"]
        for label, value in (
            (f"req/s c={c}, password (paired)", _fmt(clients.get("rps_password"), 0) + flag),
            (
                f"req/s c={c}, {clients['clients']:,} clients",
                _fmt(clients.get("rps_clients"), 0) + flag,
            ),
        ):
            cells = [label, *("-" for _ in refs), "-", "-"]
            cells[1 + refs.index("keygate")] = value
            rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(widths[i]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header)
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
    if many.get("ratio") is not None:
        lines.append(f"{many['keys']:,} keys: {many['ratio']:.3f} of the 8-key throughput")
    if clients.get("ratio") is not None:
        lines.append(
            f"{clients['clients']:,} client keys: {clients['ratio']:.3f} of the password's throughput"
        )
    lines += soak_summary(data.get("soak") or {})
    cal = data.get("calibration") or {}
    if cal.get("added_p99_ms") is not None:
        lines.append(
            f"Crossing CPUs alone (nginx on the server CPU, c=1) adds p50 "
            f"{cal['added_p50_ms']:.3f} ms, p99 {cal['added_p99_ms']:.3f} ms to direct."
        )
    return "\n".join(lines)


def _flagged(ref: dict[str, Any], label: str) -> bool:
    """Mark a cell whose run had errors (non-2xx, socket errors, lost chunks)."""
    if "c=" in label and label.startswith(("req/s", "p50", "p99")):
        c = label.rsplit("c=", 1)[1].split()[0]
        return bool(dig(ref, "wrk", c, "flagged"))
    if label.startswith("streams"):
        return bool(dig(ref, "streams", "flagged"))
    return False


# ---- verdict ----------------------------------------------------------------------------------


def _paired(rounds: dict[str, Any] | None, single: float) -> tuple[float, str]:
    """The ratio a check reads: the median of the rounds' ratios when there were several
    rounds (shown with them), else the one pair's."""
    if not rounds or len(rounds.get("rounds") or ()) < 2:
        return single, f"{single:.0%}"
    listed = ", ".join(f"{r:.2f}" for r in rounds["rounds"])
    return rounds["median"], f"{rounds['median']:.0%} (median of rounds {listed})"


def verdict(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue-7 target with keygate's measured figure and pass / FAIL / n/a."""
    refs = data["references"]
    kg = refs.get("keygate") or {}
    bare = refs.get("bare") or {}
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, ok: bool | None, shown: str, flagged: bool = False) -> None:
        status = "n/a" if ok is None else ("pass" if ok else "FAIL")
        if flagged and ok is not None:
            shown += "  (! run had errors)"
        out.append(
            {"target": name, "value": value, "status": status, "shown": shown, "flagged": flagged}
        )

    k50, b50 = dig(kg, "wrk", "50", "rps"), dig(bare, "wrk", "50", "rps")
    paired = dig(data, "ratios", "50") or {}
    if k50 is not None and b50:
        ratio, shown = _paired(paired.get("keygate/bare"), k50 / b50)
        add(
            "throughput c=50 >= 80% of bare",
            ratio,
            ratio >= TARGET_RPS_VS_BARE,
            f"{shown}: {k50:,.0f} vs {b50:,.0f} req/s",
            bool(dig(kg, "wrk", "50", "flagged") or dig(bare, "wrk", "50", "flagged")),
        )
    else:
        add("throughput c=50 >= 80% of bare", None, None, "not measured")

    u50 = dig(refs.get("unified") or {}, "wrk", "50", "rps")
    if u50 is not None and k50:
        ratio, shown = _paired(paired.get("unified/keygate"), u50 / k50)
        add(
            "unified endpoint c=50 >= 95% of the prefix route",
            ratio,
            ratio >= TARGET_UNIFIED_VS_PREFIX,
            f"{shown}: {u50:,.0f} vs {k50:,.0f} req/s",
            bool(dig(refs.get("unified") or {}, "wrk", "50", "flagged")),
        )

    c1_flag = bool(dig(kg, "wrk", "1", "flagged"))
    for pct, limit in (("p50", TARGET_ADDED_P50_MS), ("p99", TARGET_ADDED_P99_MS)):
        v = dig(kg, "added_c1", f"{pct}_ms")
        shown = "not measured" if v is None else f"{v:.3f} ms"
        floor = [
            f"{label} {x:.3f} ms"
            for label, x in (
                ("bare adds", dig(bare, "added_c1", f"{pct}_ms")),
                ("crossing CPUs adds", dig(data, "calibration", f"added_{pct}_ms")),
            )
            if x is not None
        ]
        if v is not None and floor:
            shown += f" ({'; '.join(floor)})"
        add(
            f"added {pct} at c=1 <= {limit} ms",
            v,
            None if v is None else v <= limit,
            shown,
            c1_flag,
        )

    lost = dig(kg, "streams", "chunks_lost")
    add(
        "streams: 0 chunks lost",
        lost,
        None if lost is None else lost == 0 and not dig(kg, "streams", "failed_streams"),
        "not measured" if lost is None else f"{lost} lost",
    )
    gap = dig(kg, "streams", "added_gap_p99_ms")
    bare_gap = dig(bare, "streams", "added_gap_p99_ms")
    add(
        f"streams: added gap p99 <= {TARGET_STREAM_GAP_P99_MS:g} ms",
        gap,
        None if gap is None else gap <= TARGET_STREAM_GAP_P99_MS,
        "not measured"
        if gap is None
        else f"{gap:.2f} ms" + (f" (bare adds {bare_gap:.2f} ms)" if bare_gap is not None else ""),
        bool(dig(kg, "streams", "flagged")),
    )
    peak = dig(kg, "memory", "peak_streams_mb")
    add(
        f"streams: RSS <= {TARGET_STREAM_RSS_MB:g} MB",
        peak,
        None if peak is None else peak <= TARGET_STREAM_RSS_MB,
        "not measured" if peak is None else f"{peak:.1f} MB",
    )
    idle = dig(kg, "memory", "idle_mb")
    add(
        f"idle RSS <= {TARGET_IDLE_RSS_MB:g} MB",
        idle,
        None if idle is None else idle <= TARGET_IDLE_RSS_MB,
        "not measured" if idle is None else f"{idle:.1f} MB",
    )
    start = kg.get("startup_s")
    add(
        f"start-up <= {TARGET_STARTUP_S:g} s",
        start,
        None if start is None else start <= TARGET_STARTUP_S,
        "not measured" if start is None else f"{start:.3f} s",
    )
    many = data.get("keys100k") or {}
    ratio = many.get("ratio")
    add(
        f"100k keys cost <= {TARGET_MANY_KEYS_COST:.0%}",
        None if ratio is None else 1 - ratio,
        None if ratio is None else 1 - ratio <= TARGET_MANY_KEYS_COST,
        "not measured" if ratio is None else f"{1 - ratio:+.1%} throughput cost",
        bool(many.get("flagged")),
    )
    quota = data.get("quotas") or {}
    ratio = quota.get("ratio")
    add(
        "quotas on every key >= 0.95 of without",
        ratio,
        None if ratio is None else ratio >= 0.95,
        "not measured" if ratio is None else f"{ratio:.2f} of the throughput without quotas",
        bool(quota.get("flagged")),
    )
    aff = data.get("affinity") or {}
    ratio = aff.get("ratio")
    add(
        "prefix affinity >= 0.95 of affinity off",
        ratio,
        None if ratio is None else ratio >= 0.95,
        "not measured" if ratio is None else f"{ratio:.2f} of the throughput with affinity off",
        bool(aff.get("flagged")),
    )
    clients = data.get("clients10k") or {}
    ratio = clients.get("ratio")
    add(
        f"10k clients: >= {TARGET_CLIENTS_RATIO:.0%} of the password",
        ratio,
        None if ratio is None else ratio >= TARGET_CLIENTS_RATIO,
        "not measured" if ratio is None else f"{ratio:.1%} of the password's throughput",
        bool(clients.get("flagged")),
    )
    for check in soak_checks(data.get("soak") or {}):
        add(*check)
    return out


def format_verdict(items: list[dict[str, Any]]) -> str:
    width = max(len(i["target"]) for i in items)
    return "\n".join(f"  {i['status']:<4}  {i['target']:<{width}}  {i['shown']}" for i in items)


# ---- chart ------------------------------------------------------------------------------------


def write_chart(data: dict[str, Any], path: Path) -> str | None:
    """Bars of req/s and latency per concurrency; returns a warning instead when impossible."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'keygate[bench]'): no PNG chart"
    refs = [r for r in REFS if dig(data, "references", r, "wrk")]
    conc = [str(c) for c in data["settings"]["concurrency"]]
    if not refs or not conc:
        return "no throughput figures: no PNG chart"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / len(refs)
    xs = range(len(conc))
    for i, r in enumerate(refs):
        wrk = data["references"][r]["wrk"]
        offs = [x + (i - (len(refs) - 1) / 2) * width for x in xs]
        rps = [dig(wrk, c, "rps") or 0 for c in conc]
        p50 = [dig(wrk, c, "p50_ms") or 0 for c in conc]
        p99 = [dig(wrk, c, "p99_ms") or 0 for c in conc]
        bars = ax1.bar(offs, rps, width, label=r)
        ax1.bar_label(bars, labels=[f"{v:,.0f}" for v in rps], fontsize=7, rotation=90, padding=2)
        ax2.bar(offs, p50, width, label=f"{r} p50", color=bars.patches[0].get_facecolor())
        ax2.scatter(offs, p99, marker="_", s=200, color="black", zorder=3)
    for ax, title, ylabel in (
        (ax1, "Throughput (non-streaming chat completion)", "requests/s"),
        (ax2, "Latency: bars p50, dashes p99", "ms (log)"),
    ):
        ax.set_xticks(list(xs), [f"c={c}" for c in conc])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    ax1.margins(y=0.2)
    ax2.set_yscale("log")
    m = data["machine"]
    fig.suptitle(f"keygate bench, {m['date']}, {m['cpu']}, {m['cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
