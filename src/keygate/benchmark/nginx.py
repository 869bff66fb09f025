"""The fast upstream stand-in: nginx answering a fixed chat completion from memory.

nginx with `return 200` costs a few microseconds per request, so in the throughput cases the
stand-in is never what limits the figure; everything it writes stays in a temporary prefix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from keygate.benchmark.procs import HOST, Pinning, Proc, spawn, wait_port

# What an OpenAI-compatible provider answers to a short chat completion (about 400 bytes).
CHAT_COMPLETION_JSON = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    '"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"Hello! This is a fixed answer from the benchmark stand-in."},'
    '"logprobs":null,"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26}}'
)


def nginx_binary() -> str | None:
    """The nginx executable, also when /usr/sbin is not on PATH (as for non-root users)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def render_conf(prefix: Path, port: int, as_root: bool) -> str:
    """A self-contained nginx.conf whose every path lives under `prefix`."""
    body = CHAT_COMPLETION_JSON.replace("\\", "\\\\").replace("'", "\\'")
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / ('tmp_' + kind)};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
{"user root;" if as_root else ""}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    default_type application/json;
{temp}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            return 200 '{body}';
        }}
    }}
}}
"""


def start_nginx(prefix: Path, port: int, pin: Pinning, log_dir: Path) -> Proc:
    """Start nginx in the foreground on `port`; raises RuntimeError with its log if it fails."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not found (Debian: apt-get install nginx-light)")
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_conf(prefix, port, os.geteuid() == 0), encoding="utf-8")
    cmd = [
        binary,
        "-c",
        str(conf),
        "-p",
        str(prefix),
        "-e",
        str(prefix / "error.log"),
        "-g",
        "daemon off;",
    ]
    proc = spawn("nginx", pin.load(cmd), log_dir)
    if not wait_port(port, proc, timeout_s=10.0):
        tail = proc.log_tail()
        err = (
            (prefix / "error.log").read_text(errors="replace")
            if (prefix / "error.log").exists()
            else ""
        )
        proc.stop()
        raise RuntimeError(f"nginx failed to start: {(tail + chr(10) + err).strip()[-2000:]}")
    return proc
