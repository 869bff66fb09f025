"""Prompt-cache key affinity (SPEC §15): keygate with `affinity: prefix` against the same build
with `affinity: off`, interleaved so drift hits both alike. Bodies are what an agent sends: a
system prompt of a few KB, tool definitions and a few turns, from many conversations in turn, so
every request is parsed, named, and its pin read and kept. nginx answers, so the figure is
keygate's own cost (issue 25: the case with affinity on at >= 0.95 of the one without)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from keygate.benchmark.common import log
from keygate.benchmark.servers import AUTH_HEADERS, MODEL, StartError, Target

if TYPE_CHECKING:
    from keygate.benchmark.runner import Bench

AFFINITY_CONCURRENCY = 50
TARGET_AFFINITY_RATIO = 0.95
CONVERSATIONS = 64  # bodies the script sends in turn: one per conversation at its 2nd-4th turn
CHAT_PATH = "/cerebras/v1/chat/completions"


def conversation_body(n: int) -> bytes:
    """Turn 2 to 4 of conversation `n`: ~6 KB of system prompt, tools and history."""
    rules = " ".join(f"Rule {i}: answer precisely and cite the file you read." for i in range(60))
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{t}",
                "description": "Reads a file of the repository and returns its text. " * 3,
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
                    "required": ["path"],
                },
            },
        }
        for t in range(6)
    ]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"You are agent {n}. {rules}"},
        {"role": "user", "content": f"Task {n}: find where the pool releases its keys."},
    ]
    for turn in range(1 + n % 3):
        messages.append({"role": "assistant", "content": f"Step {turn}: reading the code now."})
        messages.append({"role": "user", "content": f"Go on with step {turn + 1}."})
    return orjson.dumps({"model": MODEL, "messages": messages, "tools": tools, "max_tokens": 32})


def lua_rotation(bodies: list[bytes], headers: dict[str, str]) -> str:
    """A wrk script that sends the bodies in turn (each thread from its own start)."""

    def quote(raw: bytes) -> str:
        return "[==[" + raw.decode() + "]==]"

    lines = ['wrk.method = "POST"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines.append("local bodies = {" + ",\n".join(quote(b) for b in bodies) + "}")
    lines += [
        "local i = math.random(#bodies)",
        "request = function()",
        "  i = i % #bodies + 1",
        "  return wrk.format(nil, nil, nil, bodies[i])",
        "end",
    ]
    return "\n".join(lines) + "\n"


def run_affinity(bench: Bench, nginx_port: int) -> None:
    info: dict[str, Any] = {"concurrency": AFFINITY_CONCURRENCY, "conversations": CONVERSATIONS}
    bench.affinity = info
    bodies = [conversation_body(n) for n in range(CONVERSATIONS)]
    info["body_bytes"] = sum(map(len, bodies)) // len(bodies)
    script = bench.tmp / "affinity.lua"
    script.write_text(lua_rotation(bodies, AUTH_HEADERS), encoding="utf-8")
    targets: dict[str, Target] = {}
    try:
        for label in ("off", "prefix"):
            t = bench.start(
                "keygate",
                f"http://127.0.0.1:{nginx_port}",
                probe=True,
                label=f"keygate-affinity-{label}",
                provider_extra={"affinity": label},
            )
            t.path, t.body, t.script = CHAT_PATH, bodies[0], script
            targets[label] = t
    except StartError as exc:
        info["error"] = str(exc)
        bench.failures["keygate with affinity"] = str(exc)
        log(f"keygate with affinity: {exc}")
        for t in targets.values():
            t.stop()
        return
    try:
        if bench.opts.warmup_s > 0:
            for t in targets.values():
                bench.wrk(t, 10, bench.opts.warmup_s)
        half = max(1.0, bench.opts.duration_s / 2)
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "prefix": []}
        for _ in range(2):
            for label, t in targets.items():
                r = bench.wrk(t, AFFINITY_CONCURRENCY, half)
                runs[label].append(r.to_json())
                log(f"keygate  c={AFFINITY_CONCURRENCY} affinity {label:6} {r.rps:10,.0f} req/s")
        info["runs"] = runs
        info["rps_off"] = sum(r["rps"] for r in runs["off"]) / len(runs["off"])
        info["rps_on"] = sum(r["rps"] for r in runs["prefix"]) / len(runs["prefix"])
        info["ratio"] = info["rps_on"] / info["rps_off"] if info["rps_off"] else None
        info["flagged"] = any(r["flagged"] for rs in runs.values() for r in rs)
        log(f"affinity prefix: {info['ratio'] or 0:.0%} of the run with affinity off")
    finally:
        for t in targets.values():
            t.stop()
