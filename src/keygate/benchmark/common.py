"""Progress lines and the small figure helpers the runner and its cases share."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the table."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
