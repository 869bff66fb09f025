"""What the gateway remembers about traffic: a log line per request, the recent-requests ring,
and per-provider counters with a per-second series for the dashboard. All in memory; the
flusher copies counters to the store in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections import deque
from typing import Any, NamedTuple

import orjson

log = logging.getLogger("keygate")

SERIES_SECONDS = 300
_LATENCY_SAMPLES = 64  # per second; enough for p50/p95 on a chart
LOGGED_ROUTE_MAX = 300  # characters of a path in an access line; the rest is counted


class RequestRecord(NamedTuple):
    ts: float
    provider: str
    method: str
    path: str
    model: str
    key_id: int | None
    key: str  # masked
    status: int
    latency_ms: float
    retries: int
    error: str
    route: str = ""  # a routed request's targets as tried: "groq/x (429) → cerebras/y"
    translated: str = ""  # `anthropic→openai` when the request changed API family
    client_name: str = ""  # the client key's name (SPEC §13); "" for the password or open

    def public(self) -> dict[str, Any]:
        doc = self._asdict()
        doc["latency_ms"] = round(self.latency_ms, 2)  # here, not per request: round() is slow
        return doc


class Second:
    __slots__ = ("count", "errors", "latencies", "t")

    def __init__(self, t: int) -> None:
        self.t = t
        self.count = 0
        self.errors = 0
        self.latencies: list[float] = []


class ProviderStats:
    """Counters for one provider since start (the store holds the all-time totals)."""

    __slots__ = (
        "err_4xx",
        "err_5xx",
        "flushed",
        "ok",
        "requests",
        "series",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.ok = 0
        self.err_4xx = 0
        self.err_5xx = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.flushed = (0, 0, 0, 0, 0, 0)
        self.series: deque[Second] = deque(maxlen=SERIES_SECONDS)

    def counters(self) -> tuple[int, int, int, int, int, int]:
        return (self.requests, self.ok, self.err_4xx, self.err_5xx, self.tokens_in, self.tokens_out)

    def record(self, status: int, latency_ms: float, now: float) -> None:
        self.requests += 1
        if status < 400:
            self.ok += 1
        elif status < 500:
            self.err_4xx += 1
        else:
            self.err_5xx += 1
        t = int(now)
        series = self.series
        if not series or series[-1].t != t:
            series.append(Second(t))
        sec = series[-1]
        sec.count += 1
        if status >= 400:
            sec.errors += 1
        if len(sec.latencies) < _LATENCY_SAMPLES:
            sec.latencies.append(latency_ms)

    def timeline(self, seconds: int = 120) -> list[dict[str, Any]]:
        """One point per second for the last `seconds`, zeros where nothing happened."""
        now = int(time.time())
        by_t = {s.t: s for s in self.series}
        out = []
        for t in range(now - seconds + 1, now + 1):
            s = by_t.get(t)
            if s is None:
                out.append({"t": t, "rps": 0, "errors": 0, "p50": None, "p95": None})
                continue
            lat = sorted(s.latencies)
            out.append(
                {
                    "t": t,
                    "rps": s.count,
                    "errors": s.errors,
                    "p50": round(lat[len(lat) // 2], 2) if lat else None,
                    "p95": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 2) if lat else None,
                }
            )
        return out


class AccessLog:
    """One line per request, without the `logging` machinery: formatting and writing through
    `logging` cost a fifth of the proxy's throughput. Lines share a timestamp string per
    second and go to stderr in batches, at most `FLUSH_S` late. In JSON mode (KEYGATE_LOG_FORMAT)
    a line is one orjson-encoded object, batched the same way."""

    FLUSH_S = 0.1
    MAX_LINES = 256

    def __init__(self, enabled: bool = True, fd: int = 2) -> None:
        self.enabled = enabled
        self.json = False
        self._fd = fd
        self._lines: list[bytes] = []
        self._second = -1
        self._stamp = ""
        self._stamp_b = b""
        self._words: dict[tuple[Any, ...], bytes] = {}  # ("kind", value...) → its bytes
        self._iso_second = -1
        self._iso = ""
        self._timer: Any = None

    def stamp(self, now: float) -> str:
        self.stamp_bytes(now)
        return f"{self._stamp},{int((now - int(now)) * 1000):03d}"

    def iso(self, now: float) -> str:
        """UTC, millisecond precision, as log collectors expect it."""
        second = int(now)
        if second != self._iso_second:
            self._iso_second = second
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._iso}.{int((now - second) * 1000):03d}Z"

    def request(self, record: RequestRecord, upstream_status: int, peer: str = "") -> None:
        """The access line of one request (its record in the recent-requests ring), in the
        configured format; `peer` is the client's address."""
        (
            now,
            provider,
            method,
            route,
            model,
            key_id,
            masked,
            status,
            latency_ms,
            retries,
            error,
            via,
            translated,
            client_name,
        ) = record
        if len(route) > LOGGED_ROUTE_MAX:  # a path may be 8 KB, sent by anyone
            route = route[:LOGGED_ROUTE_MAX] + f"…(+{len(route) - LOGGED_ROUTE_MAX})"
        if self.json:
            self._append(
                orjson.dumps(
                    {
                        "time": self.iso(now),
                        "level": "info",
                        "event": "request",
                        "provider": provider or None,
                        "method": method,
                        "route": route,
                        "key_id": key_id,
                        "key": masked or None,
                        "client": peer or None,
                        "client_name": client_name or None,
                        "status": status,
                        "upstream_status": upstream_status,
                        "latency_ms": round(latency_ms, 1),
                        "retries": retries,
                        "error": error or None,
                        "model": model or None,
                        "via": via or None,
                        "translated": translated or None,
                    }
                )
                + b"\n"
            )
            return
        # bytes `%`-formatting over pieces encoded once per distinct value: a third of the
        # cost of the same line as an f-string (whose masked key's `…` would also make every
        # piece of a str line two bytes wide)
        words = self._words
        head = words.get(("head", provider, method, route, masked, key_id))
        if head is None:
            shown = f"{masked}#{key_id}" if key_id is not None else "-"
            head = self._word_of(
                ("head", provider, method, route, masked, key_id),
                f"{provider or '-'} {method} {route} key={shown}".encode(),
            )
        tail = words.get(("tail", peer, model, via))
        if tail is None:
            tail = self._word_of(
                ("tail", peer, model, via),
                (
                    (f" client={peer}" if peer else "")
                    + (f" model={_word(model)}" if model else "")
                    + (f" via={via!r}" if via else "")  # a routed request's targets
                ).encode(),
            )
        line = b"%s,%03d INFO %s status=%d upstream=%d ms=%.1f retries=%d%s" % (
            self.stamp_bytes(now),
            (now % 1) * 1000,
            head,
            status,
            upstream_status,
            latency_ms,
            retries,
            tail,
        )
        if translated or client_name or error:
            line += (
                (f" translated={translated}" if translated else "")
                + (f" client_name={_word(client_name)}" if client_name else "")
                + (f" error={error!r}" if error else "")
            ).encode("utf-8", "replace")
        self._append(line + b"\n")

    def _word_of(self, key: tuple[Any, ...], encoded: bytes) -> bytes:
        """Remember `encoded` for `key`: a gateway logs the same few providers, routes, keys,
        peers and models again and again (bounded: routes and models come from clients)."""
        if len(self._words) >= 4096:
            self._words.clear()
        self._words[key] = encoded
        return encoded

    def stamp_bytes(self, now: float) -> bytes:
        """The second's timestamp (`stamp` without the milliseconds), as bytes."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp_b = self._stamp.encode()
        return self._stamp_b

    def write(self, now: float, text: str) -> None:
        self._append(f"{self.stamp(now)} INFO {text}\n".encode("utf-8", "replace"))

    def _append(self, line: bytes) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= self.MAX_LINES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            data = b"".join(self._lines)
            self._lines.clear()
            with contextlib.suppress(OSError):
                os.write(self._fd, data)


access_log = AccessLog()

# LogRecord attributes that are not extra fields given by the caller
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """An event as one JSON object: time, level, event (a caller's `extra={"event": ...}`, else
    "log"), logger, message, and any other `extra` fields (provider, key_id, key, error...)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": access_log.iso(record.created),
            "level": record.levelname.lower(),
            "event": "log",
            "logger": record.name,
            "pid": record.process,  # which worker, with --workers
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's `log_config` for JSON mode (its own messages as JSON lines too); {} for text."""
    if log_format != "json":
        return {}
    return {
        "log_config": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "keygate.observe.JsonFormatter"}},
            "handlers": {
                "default": {
                    "class": "logging.StreamHandler",
                    "formatter": "json",
                    "stream": "ext://sys.stderr",
                }
            },
            "loggers": {
                name: {"handlers": ["default"], "level": "INFO", "propagate": False}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
        }
    }


def print_block(text: str, event: str, **fields: Any) -> None:
    """A multi-line message (the banner): as it is in text mode, one JSON object in JSON mode."""
    if access_log.json:
        access_log.flush()
        doc = {"time": access_log.iso(time.time()), "level": "info", "event": event}
        line = orjson.dumps({**doc, **fields, "message": text}).decode()
        print(line, file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def setup_logging(level: str = "info", log_format: str = "text") -> None:
    """Plain lines on stderr (or JSON objects); one handler, no colour, cheap to format."""
    root = logging.getLogger("keygate")
    access_log.json = log_format == "json"
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if access_log.json:
        handler.setFormatter(JsonFormatter())
        top = logging.getLogger()
        if not top.handlers:  # other libraries' warnings (asyncio, aiohttp) as JSON too
            top.addHandler(handler)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper() if level.upper() in logging.getLevelNamesMapping() else "INFO")
    root.propagate = False
    access_log.enabled = root.isEnabledFor(logging.INFO)


_NOT_IN_A_WORD = re.compile(r"[ '\"=]")


def _word(text: str) -> str:
    """A name as one token of the text line (quoted when it has spaces or quotes)."""
    return text if text.isprintable() and not _NOT_IN_A_WORD.search(text) else repr(text)
