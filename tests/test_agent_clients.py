"""The real agent CLIs through keygate: Claude Code (an Anthropic client) on an OpenAI-format
provider, Codex (the Responses API) on the unified endpoint of a Chat-Completions-only one.

Each runs headless in a network namespace with only loopback (`tests/agent_netns.py`), so none
of their traffic can leave the machine; the mock upstream answers in OpenAI's format, first with
a call of the agent's shell tool, then (once the tool's result is back) with text. The CLIs
come from the npm registry (`.ci/install` puts them in `.ci/agents`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("KEYGATE_AGENT_BIN", ROOT / ".ci" / "agents" / "node_modules" / ".bin"))
MARK = "keygate-tool-ok"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="a loopback-only network namespace needs root and unshare",
    ),
]


def run_agent(agent: str, tmp_path: Path) -> dict[str, Any]:
    binary = BIN / agent
    if not binary.exists():
        pytest.skip(f"{binary} is not installed (.ci/install installs it from npm)")
    out = tmp_path / f"{agent}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = ["unshare", "--net", "--", sys.executable, str(ROOT / "tests" / "agent_netns.py")]
    done = subprocess.run(
        [*cmd, agent, str(out), str(binary)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["rc"] == 0, (result["stdout"], result["stderr"][-3000:], result["log"][-3000:])
    return result


def bodies(result: dict[str, Any]) -> list[Any]:
    recs = result["records"]
    assert recs and all(r["path"] == "/v1/chat/completions" for r in recs), recs
    return [json.loads(r["body"]) for r in recs]


def tool_results(body: Any) -> list[str]:
    return [str(m.get("content")) for m in body["messages"] if m.get("role") == "tool"]


def test_claude_code_on_an_openai_format_provider(tmp_path: Path) -> None:
    result = run_agent("claude", tmp_path)
    assert f"Done: the command printed {MARK}." in result["stdout"]
    sent = bodies(result)
    first = sent[0]
    assert first["messages"][0]["role"] == "system"  # its system prompt, as a system message
    assert {t["function"]["name"] for t in first["tools"]} >= {"Bash", "Read", "Edit"}
    assert all(t["type"] == "function" for t in first["tools"])
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    # the round trip: the Bash call ran, its output came back as a tool message
    assert any(MARK in text for body in sent[1:] for text in tool_results(body))
    assert "translated=anthropic→openai" in result["log"]


def test_codex_on_the_unified_endpoint(tmp_path: Path) -> None:
    result = run_agent("codex", tmp_path)
    assert f"Done: the command printed {MARK}." in result["stdout"]
    sent = bodies(result)
    names = {t["function"]["name"] for t in sent[0]["tools"]}
    assert "exec_command" in names
    assert any(MARK in text for body in sent[1:] for text in tool_results(body))
    assert "POST /v1/responses" in result["log"]
    assert "translated=responses→openai" in result["log"]
