"""The layers and the types, each held by the tool made for it: import-linter keeps the contracts
of `[tool.importlinter]` in pyproject.toml, mypy (strict) the packages of `[tool.mypy]`. Both
check the work tree's `src/`, and each test fails with the tool's own report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _report(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def test_imports_keep_the_layer_contracts() -> None:
    """The request path never imports the admin; traffic control and the dialects import
    neither the store nor the HTTP layers; the store imports neither traffic control nor
    anything above it; and every import runs down the floors."""
    # the console script of the Python running the tests (a venv's bin/, Scripts\ on Windows)
    script = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("lint-imports is not installed beside this Python: pip install -e '.[test]'")
    done = subprocess.run(
        [script, "--no-cache"],  # the contracts: pyproject.toml, in the working directory
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and " 0 broken" in done.stdout, _report(done)


@pytest.mark.slow
def test_checked_packages_pass_mypy_strict(tmp_path: Path) -> None:
    """control, dialects, translate, clients, budget, classify and masking type-check under
    `mypy --strict` (the set is `files` in pyproject.toml)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, _report(done)
