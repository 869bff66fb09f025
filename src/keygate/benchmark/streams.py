"""Streaming load client: N concurrent SSE chat completions, timing every event.

Runs as its own process (pinned to the load core) so that the harness's memory sampler and the
GIL it holds never delay a chunk; prints one JSON summary on stdout.

    python -m keygate.benchmark.streams --url URL --streams 500 --chunks 64 [--header 'K: V']
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(pct / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class StreamStat:
    """What one stream saw: status, first-chunk time, every content event's arrival."""

    status: int = 0
    ttfc: float | None = None
    content_times: list[float] = field(default_factory=list)
    other_events: int = 0
    done: bool = False
    error: str = ""


def _content_of(payload: bytes) -> bool:
    """True for a content chunk of an OpenAI chat.completion.chunk stream.

    That is a delta with a `content` field and no `role`: the opening role chunk and the closing
    finish_reason chunk do not count. An empty string still counts, since the upstream sent it as
    one of its chunks (the mock splits a short text into more pieces than it has characters).
    """
    try:
        obj = orjson.loads(payload)
        choices = obj.get("choices")
        if not choices:
            return False
        delta = choices[0].get("delta") or {}
        return "content" in delta and "role" not in delta
    except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
        return False


def _anthropic_kind(payload: bytes) -> str:
    """The `type` of an Anthropic stream event ("" when it is not one)."""
    try:
        kind = orjson.loads(payload).get("type")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return kind if isinstance(kind, str) else ""


async def one_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    anthropic: bool = False,
) -> StreamStat:
    """Read one SSE response event by event (split on blank lines), noting when each arrives."""
    st = StreamStat()
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            st.status = resp.status
            buf = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                buf += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
                *events, buf = buf.split(b"\n\n")
                for event in events:
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if st.ttfc is None:
                            st.ttfc = now - t0
                        if anthropic:
                            kind = _anthropic_kind(payload)
                            if kind == "content_block_delta":
                                st.content_times.append(now)
                            elif kind == "message_stop":
                                st.done = True
                            else:
                                st.other_events += 1
                        elif payload == b"[DONE]":
                            st.done = True
                        elif _content_of(payload):
                            st.content_times.append(now)
                        else:
                            st.other_events += 1
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        st.error = f"{type(exc).__name__}: {exc}"[:200]
    return st


async def run_streams(
    url: str,
    n: int,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    anthropic: bool = False,
) -> dict[str, Any]:
    """Open all `n` streams at once on one pooled session and summarise what came back."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stats = await asyncio.gather(
            *(one_stream(session, url, body, headers, anthropic) for _ in range(n))
        )
    wall = time.perf_counter() - t0
    ttfc = sorted(s.ttfc * 1000.0 for s in stats if s.ttfc is not None)
    gaps = sorted((b - a) * 1000.0 for s in stats for a, b in itertools.pairwise(s.content_times))
    statuses: dict[str, int] = {}
    for s in stats:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    errors = [s.error for s in stats if s.error]
    return {
        "streams": n,
        "wall_s": wall,
        "statuses": statuses,
        "failed_streams": sum(1 for s in stats if s.error or not 200 <= s.status < 300),
        "incomplete_streams": sum(1 for s in stats if not s.done),
        "errors": errors[:5],
        "error_count": len(errors),
        "content_events": sum(len(s.content_times) for s in stats),
        "other_events": sum(s.other_events for s in stats),
        "min_content_per_stream": min((len(s.content_times) for s in stats), default=0),
        "ttfc_p50_ms": percentile(ttfc, 50),
        "ttfc_p99_ms": percentile(ttfc, 99),
        "ttfc_max_ms": ttfc[-1] if ttfc else None,
        "gap_p50_ms": percentile(gaps, 50),
        "gap_p99_ms": percentile(gaps, 99),
        "gap_max_ms": gaps[-1] if gaps else None,
        "gap_mean_ms": sum(gaps) / len(gaps) if gaps else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Concurrent SSE stream load client.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per stream")
    parser.add_argument(
        "--format",
        choices=("openai", "anthropic"),
        default="openai",
        help="the client's API: Chat Completions or Anthropic Messages (max_tokens, events)",
    )
    args = parser.parse_args(argv)
    anthropic = args.format == "anthropic"
    headers = {"Content-Type": "application/json"}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    body = orjson.dumps(
        {
            "model": args.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "stream": True,
            **({"max_tokens": 1024} if anthropic else {}),
        }
    )
    gc.disable()  # a collector pause in the client would show up as a gap in every stream
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run_streams(args.url, args.streams, body, headers, args.timeout, anthropic))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
