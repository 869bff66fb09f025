"""Soak load client: requests at a fixed rate (open loop) for a set time, in a mix of kinds.

Request `i` is sent at `start + i / rate` whatever happened to the ones before, so a gateway that
slows down shows as latency and as requests in flight, never as a lower offered load. Kinds,
drawn from a seeded generator: whole answers on the prefix route and on the unified endpoint,
streams read to the end, and streams the client leaves after their first content chunk. Before
some requests the client scripts the mock upstream (its `/_mock/behavior` control endpoint) to
answer the next upstream try with a 429 (the key told to wait 250 ms) or a 500, which keygate retries
on another key. Runs as its own process on the load CPU and prints one JSON summary on stdout.

    python -m keygate.benchmark.soak_load --gateway URL --mock URL --rate 200 --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from keygate.benchmark.streams import percentile

PREFIX_PATH = "/cerebras/v1/chat/completions"
UNIFIED_PATH = "/v1/chat/completions"
KINDS = ("whole", "unified", "stream", "abandoned")
UPSTREAM_MARK = b"mock upstream"  # in every error body the mock makes (keygate relays it as is)
# what the mock is told to answer the next upstream try with
INJECT = {
    "429": {"times": 1, "status": 429, "headers": {"retry-after-ms": "250", "retry-after": "1"}},
    "500": {"times": 1, "status": 500},
}


@dataclass(slots=True)
class Tally:
    """What one kind of request saw; latencies in ms (answers read to the end)."""

    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    ok: int = 0
    incomplete: int = 0  # a 200 stream without its end, a whole 200 without an answer
    gateway_errors: int = 0  # non-2xx keygate made itself
    gateway_statuses: dict[str, int] = field(default_factory=dict)  # those, by status
    upstream_errors: int = 0  # non-2xx relayed from the upstream (its body says so)
    failed: int = 0  # no answer at all: connection error or timeout
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def add_status(self, status: int) -> None:
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def to_json(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "sent": self.sent,
            "statuses": dict(sorted(self.statuses.items())),
            "ok": self.ok,
            "incomplete": self.incomplete,
            "gateway_errors": self.gateway_errors,
            "gateway_statuses": dict(sorted(self.gateway_statuses.items())),
            "upstream_errors": self.upstream_errors,
            "failed": self.failed,
            "errors": self.errors[:5],
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else None,
        }


@dataclass(slots=True)
class Mix:
    stream: float
    abandoned: float
    unified: float
    error_429: float
    error_500: float

    def kind(self, r: float) -> str:
        for kind, share in (
            ("stream", self.stream),
            ("abandoned", self.abandoned),
            ("unified", self.unified),
        ):
            if r < share:
                return kind
            r -= share
        return "whole"

    def inject(self, r: float) -> str | None:
        if r < self.error_429:
            return "429"
        if r < self.error_429 + self.error_500:
            return "500"
        return None


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.gateway = args.gateway.rstrip("/")
        self.mock = args.mock.rstrip("/")
        self.rate = args.rate
        self.seconds = args.seconds
        self.max_inflight = args.max_inflight
        self.headers = {"Content-Type": "application/json"}
        for h in args.header:
            name, _, value = h.partition(":")
            self.headers[name.strip()] = value.strip()
        chat = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}
        self.bodies = {
            "whole": orjson.dumps({"model": args.model, **chat}),
            "unified": orjson.dumps({"model": args.unified_model, **chat}),
            "stream": orjson.dumps({"model": args.model, **chat, "stream": True}),
        }
        self.bodies["abandoned"] = self.bodies["stream"]
        self.mix = Mix(args.stream, args.abandoned, args.unified, args.error_429, args.error_500)
        self.rng = random.Random(args.seed)
        self.tally = {k: Tally() for k in KINDS}
        self.injected = {"429": 0, "500": 0}
        self.inject_failed = 0
        self.skipped = 0  # not sent: `max_inflight` requests were already waiting
        self.inflight = 0
        self.peak_inflight = 0
        self.late: list[float] = []  # ms between a request's due time and its start

    async def one(self, session: aiohttp.ClientSession, kind: str, inject: str | None) -> None:
        t = self.tally[kind]
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        try:
            if inject is not None:
                try:
                    async with session.post(
                        self.mock + "/_mock/behavior", data=orjson.dumps(INJECT[inject])
                    ) as r:
                        await r.read()
                        if r.status == 200:
                            self.injected[inject] += 1
                        else:
                            self.inject_failed += 1
                except (TimeoutError, aiohttp.ClientError, OSError):
                    self.inject_failed += 1
            await self.request(session, kind, t)
        finally:
            self.inflight -= 1

    async def request(self, session: aiohttp.ClientSession, kind: str, t: Tally) -> None:
        url = self.gateway + (UNIFIED_PATH if kind == "unified" else PREFIX_PATH)
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=self.bodies[kind], headers=self.headers) as resp:
                t.add_status(resp.status)
                if not 200 <= resp.status < 300:
                    body = await resp.read()
                    if UPSTREAM_MARK in body:
                        t.upstream_errors += 1
                    else:
                        t.gateway_errors += 1
                        key = str(resp.status)
                        t.gateway_statuses[key] = t.gateway_statuses.get(key, 0) + 1
                        if len(t.errors) < 5:
                            t.errors.append(f"{resp.status} {body[:200].decode(errors='replace')}")
                    return
                if kind == "whole" or kind == "unified":
                    body = await resp.read()
                    done = b'"chat.completion"' in body
                elif kind == "stream":
                    done = await _read_stream(resp, to_end=True)
                else:  # the client leaves after the first content chunk
                    done = await _read_stream(resp, to_end=False)
                    resp.close()
                if done:
                    t.ok += 1
                    t.latencies.append((time.perf_counter() - t0) * 1000.0)
                else:
                    t.incomplete += 1
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            t.failed += 1
            if len(t.errors) < 5:
                t.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async def run(self) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=30.0, sock_connect=10.0)
        n = int(self.rate * self.seconds)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            start = time.perf_counter()
            for i in range(n):
                due = start + i / self.rate
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.late.append(max(0.0, (time.perf_counter() - due) * 1000.0))
                kind = self.mix.kind(self.rng.random())
                inject = self.mix.inject(self.rng.random())
                if self.inflight >= self.max_inflight:
                    self.skipped += 1
                    continue
                self.tally[kind].sent += 1
                task = asyncio.create_task(self.one(session, kind, inject))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            load_s = time.perf_counter() - start
            if tasks:  # every request has its 30 s total timeout: this ends
                await asyncio.wait(set(tasks), timeout=40.0)
            unfinished = len(tasks)
            for task in list(tasks):
                task.cancel()
            drained_s = time.perf_counter() - start - load_s
        late = sorted(self.late)
        return {
            "rate": self.rate,
            "seconds": self.seconds,
            "scheduled": n,
            "load_s": load_s,
            "drain_s": drained_s,
            "achieved_rate": (n - self.skipped) / load_s if load_s > 0 else None,
            "skipped": self.skipped,
            "unfinished": unfinished,
            "peak_inflight": self.peak_inflight,
            "late_p99_ms": percentile(late, 99),
            "late_max_ms": late[-1] if late else None,
            "injected": self.injected,
            "inject_failed": self.inject_failed,
            "kinds": {k: v.to_json() for k, v in self.tally.items()},
        }


async def _read_stream(resp: aiohttp.ClientResponse, to_end: bool) -> bool:
    """Read SSE events; True at `[DONE]` (or at the first content chunk unless `to_end`)."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        *events, buf = buf.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return True
                if not to_end and b'"content"' in payload and b'"role"' not in payload:
                    return True
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Open-loop soak load through keygate.")
    p.add_argument("--gateway", required=True, help="keygate's base URL")
    p.add_argument("--mock", required=True, help="the mock upstream's base URL (scripted)")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--model", default="bench-model")
    p.add_argument("--unified-model", default="groq/bench-model")
    p.add_argument("--stream", type=float, default=0.20, help="share of streams read to the end")
    p.add_argument("--abandoned", type=float, default=0.02, help="share of streams left early")
    p.add_argument("--unified", type=float, default=0.10, help="share of whole answers on /v1")
    p.add_argument("--error-429", type=float, default=0.02, help="share preceded by a 429")
    p.add_argument("--error-500", type=float, default=0.02, help="share preceded by a 500")
    p.add_argument("--max-inflight", type=int, default=2000, help="bound on open requests")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        p.error("--rate and --seconds must be positive")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(Soak(args).run())
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
