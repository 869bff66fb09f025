"""Run one agent CLI (Claude Code or Codex) through keygate and the mock upstream, in a network
namespace that has only loopback (`unshare --net python3 tests/agent_netns.py AGENT OUT BIN`).

Everything the CLI, the gateway and the mock do stays on `lo`: the namespace has no other
interface, so no byte can leave the machine whatever a CLI tries (telemetry and update checks
are switched off as well). The mock answers the first request that offers the agent's shell
tool with a call of it, and everything else with text; what the gateway sent upstream and what
the CLI printed are written to OUT as JSON for the test to judge.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PASSWORD, start_gateway
from keygate.testing.mock_upstream import MockUpstream

MARK = "keygate-tool-ok"
# each agent's shell tool, as the mock calls it
TOOLS: dict[str, dict[str, Any]] = {
    "claude": {"Bash": {"command": f"echo {MARK}", "description": "Print the mark"}},
    "codex": {
        "shell": {"command": ["bash", "-lc", f"echo {MARK}"]},
        "exec_command": {"cmd": f"echo {MARK}"},
        "shell_command": {"command": f"echo {MARK}"},
    },
}
QUIET = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "NO_PROXY": "*",
    "CODEX_DISABLE_UPDATE_CHECK": "1",
    "OTEL_SDK_DISABLED": "true",
}


def only_loopback() -> None:
    """Bring `lo` up and refuse to go on if any other interface exists."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        raise SystemExit(f"not in a loopback-only namespace: {names}")


def agent_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    keep = ("PATH", "LANG", "TERM", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(QUIET)
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})
    env.update(extra)
    return env


def run_claude(binary: str, gw_url: str, work: Path) -> subprocess.CompletedProcess[str]:
    env = agent_env(
        work / "home",
        {
            "ANTHROPIC_BASE_URL": f"{gw_url}/cerebras",
            "ANTHROPIC_API_KEY": PASSWORD,
            "ANTHROPIC_MODEL": "llama3.1-8b",
            "ANTHROPIC_SMALL_FAST_MODEL": "llama3.1-8b",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": "llama3.1-8b",
        },
    )
    cmd = [binary, "-p", f"Run: echo {MARK}", "--allowedTools", "Bash", "--output-format", "text"]
    return subprocess.run(
        cmd,
        env=env,
        cwd=work / "repo",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )


def run_codex(binary: str, gw_url: str, work: Path) -> subprocess.CompletedProcess[str]:
    home = work / "home"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(
        'model = "llama3.1-8b"\n'
        'model_provider = "keygate"\n'
        'approval_policy = "never"\n'
        'sandbox_mode = "danger-full-access"\n'
        "[model_providers.keygate]\n"
        'name = "keygate"\n'
        f'base_url = "{gw_url}/v1"\n'
        'env_key = "KEYGATE_PASSWORD"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n",
        encoding="utf-8",
    )
    env = agent_env(home, {"CODEX_HOME": str(codex_home), "KEYGATE_PASSWORD": PASSWORD})
    cmd = [binary, "exec", "--skip-git-repo-check", f"Run: echo {MARK}"]
    return subprocess.run(
        cmd,
        env=env,
        cwd=work / "repo",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )


def main() -> int:
    agent, out, binary = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    only_loopback()
    with MockUpstream() as mock, tempfile.TemporaryDirectory(prefix="kg-agent-") as tmp:
        work = Path(tmp)
        (work / "repo").mkdir()
        (work / "home").mkdir()
        mock.set_behavior(text=f"Done: the command printed {MARK}.", tool_on_offer=TOOLS[agent])
        config = {"providers": {"cerebras": {"rps": 0, "max_conn": 0}}}
        gw = start_gateway(
            work, mock, env={"CEREBRAS_API_KEYS": "csk-agent-key-0001"}, config=config
        )
        try:
            runner = run_claude if agent == "claude" else run_codex
            done = runner(binary, gw.url, work)
        finally:
            gw.stop()
        result: dict[str, Any] = {
            "rc": done.returncode,
            "stdout": done.stdout[-20000:],
            "stderr": done.stderr[-20000:],
            "log": gw.log()[-20000:],
            "records": [
                {"path": r.path, "status": r.status, "body": r.body.decode("utf-8", "replace")}
                for r in mock.records()
            ],
        }
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
