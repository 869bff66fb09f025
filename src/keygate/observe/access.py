"""A log line per request, written in batches without the `logging` machinery."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from keygate.observe.stats import RequestRecord

LOGGED_ROUTE_MAX = 300  # characters of a path in an access line; the rest is counted


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
_NOT_IN_A_WORD = re.compile(r"[ '\"=]")


def _word(text: str) -> str:
    """A name as one token of the text line (quoted when it has spaces or quotes)."""
    return text if text.isprintable() and not _NOT_IN_A_WORD.search(text) else repr(text)
