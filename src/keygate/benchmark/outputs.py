"""What a run leaves behind: bench.json, bench.txt and the chart, and the tool versions."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from keygate.benchmark import report
from keygate.benchmark.nginx import nginx_binary
from keygate.benchmark.wrk import wrk_binary

if TYPE_CHECKING:
    pass


def _short(message: str) -> str:
    """The first line of a start failure and the last lines of the server's output."""
    lines = message.strip().splitlines()
    tail = lines[1:][-3:]
    return "\n    ".join([lines[0], *tail]) if lines else ""


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
