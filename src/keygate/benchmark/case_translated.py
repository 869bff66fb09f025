"""The translated cases: an Anthropic client (Messages) on an OpenAI-format provider, so every
request, answer and stream event changes family inside keygate.

Non-streaming: wrk posts a Messages request to `/cerebras/v1/messages` on the keygate already
measured on nginx (nginx answers its chat completion; keygate turns it into a Message), at
each concurrency, next to keygate's plain figure. Streams: a fresh keygate in front of the mock
(with a text long enough that no content chunk is empty, so chunk counts compare one to one),
its streams read as Anthropic events, against the same mock read directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keygate.benchmark.case_streams import (
    RssSampler,
    _added_vs_direct,
    _log_streams,
    stream_load,
)
from keygate.benchmark.common import _ms, log
from keygate.benchmark.procs import http_request, rss_mb
from keygate.benchmark.servers import AUTH_HEADERS, MODEL, StartError, Target, start_mock
from keygate.benchmark.wrk import lua_script, run_wrk

if TYPE_CHECKING:
    from keygate.benchmark.runner import Bench

MESSAGES_PATH = "/cerebras/v1/messages"
MESSAGES_BODY = (
    b'{"model":"' + MODEL.encode() + b'","max_tokens":64,'
    b'"messages":[{"role":"user","content":"Say hello."}]}'
)


def run_translated_wrk(bench: Bench, keygate: Target) -> None:
    """Messages requests through the running keygate, at each concurrency."""
    target = Target("keygate", keygate.port, MESSAGES_PATH, keygate.proc)
    status, body = http_request(target.port, "POST", MESSAGES_PATH, MESSAGES_BODY, AUTH_HEADERS)
    entry = bench.translated.setdefault("wrk", {})
    if status != 200 or b'"type":"message"' not in body:
        msg = f"translated request answered {status}: {body[:200].decode(errors='replace')}"
        bench.translated["error"] = msg
        log(msg)
        return
    script = bench.tmp / "messages.lua"
    script.write_text(lua_script(MESSAGES_BODY, AUTH_HEADERS), encoding="utf-8")
    plain = bench.refs.get("keygate", {}).get("wrk", {})
    for c in bench.opts.concurrency:
        r = run_wrk(target.url, script, c, bench.opts.duration_s, bench.pin)
        result = r.to_json()
        base = plain.get(str(c), {}).get("rps")
        if base:
            result["of_keygate_plain"] = r.rps / base
        bare = bench.refs.get("bare", {}).get("wrk", {}).get(str(c), {}).get("rps")
        if bare:
            result["of_bare"] = r.rps / bare
        entry[str(c)] = result
        flag = f"  ERRORS {r.error_count} {r.error[:200]}" if r.flagged else ""
        log(
            f"{'anth→oai':8} c={c:<4} {r.rps:10,.0f} req/s"
            f"  p50 {_ms(r.p50_ms)}  p99 {_ms(r.p99_ms)}{flag}"
        )


def run_translated_streams(bench: Bench) -> None:
    """Anthropic-client streams through a fresh keygate on the mock, against the mock direct."""
    o = bench.opts
    text = "word " * max(1, o.chunks)  # every one of the `chunks` pieces has characters
    try:
        mock = bench.track(
            start_mock(bench.pin, bench.tmp / "logs", o.chunks, o.chunk_interval_s, text=text)
        )
    except StartError as exc:
        bench.translated["streams_error"] = str(exc)
        log(f"{exc}; translated streams skipped")
        return
    try:
        direct = stream_load(bench, mock)
        _log_streams("direct", direct)
        try:
            t = bench.start("keygate", f"http://127.0.0.1:{mock.port}", probe=False)
        except StartError as exc:
            bench.translated["streams_error"] = str(exc)
            log(str(exc))
            return
        memory: dict[str, Any] = {}
        sampler = RssSampler(t.proc.pid) if t.proc else None
        if sampler:
            sampler.start()
        try:
            summary = stream_load(
                bench, Target("keygate", t.port, MESSAGES_PATH, t.proc), "anthropic"
            )
        finally:
            if sampler:
                memory["peak_streams_mb"] = sampler.stop()
        memory["end_of_load_mb"] = rss_mb(t.proc.pid) if t.proc else None
        t.stop()
        _added_vs_direct(summary, direct)
        summary["memory"] = memory
        bench.translated["streams"] = summary
        bench.translated["streams_direct"] = direct
        _log_streams("anth→oai", summary)
    finally:
        mock.stop()
