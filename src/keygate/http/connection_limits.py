"""What a client connection may hold: `LimitedHttpProtocol`, uvicorn's httptools protocol with
nginx-like bounds, and `ConnectionLimits`, the bounds it keeps.

uvicorn with httptools reads a request head whole however large it is (a 64 MB header is read
before the app can answer), keeps a connection that never sends a request open for ever, and
forgets its keep-alive timer once half of the next head arrives. `LimitedHttpProtocol` is its
httptools protocol with nginx-like bounds:

- the request head (request line and headers) may take `max_head_bytes` and `max_headers`, the
  request line `max_request_line`: over the bound the request is answered 431 (414 for the request
  line) and the connection closed (a lingering close, as nginx's, so that a client still sending
  reads the answer instead of a reset). Bytes are counted as they are fed to the parser, and no more
  than the bound is ever fed, so a huge head is never buffered and never reaches the app.
  (A head that a client pipelines into the same read as the previous request's end is counted
  from the next read on: at most one read, 256 KiB, more.)
- `idle_timeout_s` (uvicorn's keep-alive timer, now also armed when a connection opens): the
  longest wait for the first byte of a request; then the connection is closed.
- `header_timeout_s`: from a request's first byte until its head is complete; then 408 and close.
- `body_timeout_s`: the longest a request's body may stall (from the end of its head, or from
  its last bytes, until more come); then 408 and close, and the app reading it sees the client
  gone. The one timer is armed only while a body is incomplete after a read: a body that came
  with its head (most requests) costs a flag test, and a body of many reads one timer, not one
  each (it is moved on when it fires, not at every read). Time the app takes to read (flow
  control paused, a `100 Continue` not yet sent) is not the client's and is not counted.
- `max_connections` open client connections per process; one more is answered 503 and closed,
  with one log line a minute saying so (uvicorn's `limit_concurrency` only answers 503 once a
  request's head was read, counts running tasks too, logs every time, and closes nothing).

`keygate.server.listen` builds uvicorn's Config with these limits and serves with this protocol.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from keygate.config.settings import Settings
from keygate.http.response_writer import ResponseCycle

log = logging.getLogger("keygate.server.listen")  # the name these warnings have always had

LOG_EVERY_S = 60.0
LINGER_S = 2.0  # after a refusal: keep reading (and dropping) what the client still sends
LINGER_BYTES = 4 * 1024 * 1024  # ... for this long and this much, so it reads the answer


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_request_line: int = 8 * 1024
    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    max_connections: int = 0  # 0: no cap
    body_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_request_line=settings.max_request_line,
            max_head_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
            max_connections=settings.max_connections or default_max_connections(),
            body_timeout_s=settings.body_timeout_s,
        )


def default_max_connections() -> int:
    """Half the process's file limit: each client connection may hold an upstream one too."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 1024
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 10_000
    return max(32, soft // 2)


class ThrottledLog:
    """One warning per interval however often it is called; the next one counts the rest."""

    def __init__(self, event: str, interval_s: float = LOG_EVERY_S) -> None:
        self.event = event
        self.interval_s = interval_s
        self.next_at = 0.0
        self.suppressed = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last such message)" if self.suppressed else ""
        self.next_at = now + self.interval_s
        self.suppressed = 0
        log.warning("%s%s", message, more, extra={"event": self.event})


_cap_log = ThrottledLog("connections_capped")
_head_log = ThrottledLog("head_refused")
_malformed_log = ThrottledLog("malformed_request")
_upgrade_log = ThrottledLog("upgrade_ignored")


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a head over the bound."""


DEFAULT_LIMITS = ConnectionLimits()


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads and connection timeouts."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits: ConnectionLimits = getattr(config, "connection_limits", DEFAULT_LIMITS)
        self.limits = limits
        self._max_line = limits.max_request_line
        self._max_head = limits.max_head_bytes
        self._max_headers = limits.max_headers
        self._head_room = limits.max_head_bytes  # bytes the head being read may still take
        self._awaiting_head = True  # between a request's end and the next one's headers
        self._heads_read = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_read_at = 0.0  # loop time of the last bytes of a body not yet complete
        self._refusal = ""  # the bound a parser callback found exceeded
        self._lingering = -1  # bytes still dropped after a refusal; -1: not refused
        self._linger_timer: asyncio.TimerHandle | None = None

    # connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        if cap and len(self.connections) > cap:
            _cap_log.warning(
                f"{cap} client connections open (KEYGATE_MAX_CONNECTIONS): refusing new "
                "connections until some close"
            )
            # closed at once, not lingering: the cap is there to keep file descriptors free
            self._answer(503, "too many open connections; try again later", "server_busy", False)
            return
        # waiting for the first request: the same idle limit as between requests
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._drop(len(data))
            return
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        if self._awaiting_head:
            room = self._head_room
            if len(data) > room:
                self._feed_bounded(data, room)
                return
            self._head_room = room - len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(exc)
            return
        if not self._awaiting_head:
            self._body_read()  # a head was read and its body is not complete
        elif self._head_room < self._max_head and self._header_timer is None:
            self._start_header_timer()  # a head has begun and is not complete

    def _feed_bounded(self, data: bytes, room: int) -> None:
        """Feed a read that goes past the head's bound: the head only up to the bound."""
        self._head_room = 0
        heads = self._heads_read
        view = memoryview(data)
        try:
            self.parser.feed_data(view[:room])
            if self._heads_read == heads:
                long_line = len(getattr(self, "url", b"")) > self._max_line
                self._refuse("line" if long_line else "bytes")
                return
            self.parser.feed_data(view[room:])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(exc)
            return
        if not self._awaiting_head:
            self._body_read()
        elif self._head_room < self._max_head and self._header_timer is None:
            self._start_header_timer()

    def _parse_failed(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        elif self._refusal:
            self._refuse(self._refusal)
        else:
            # Junk from anyone: one throttled line, and an answer in the API's error shape.
            reason = str(exc)[:80] or type(exc).__name__
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            _malformed_log.warning(f"refused a malformed request from {client} with 400: {reason}")
            cycle = self.cycle
            if not self._awaiting_head and cycle is not None and not cycle.response_complete:
                # the body of the request being read is broken: the app must stop waiting
                # for the rest of it (it sees a disconnect), and the connection must end
                cycle.disconnected = True
                cycle.waiting_for_100_continue = False  # nothing may be written after ours
                cycle.message_event.set()
                if cycle.response_started:
                    self.transport.close()
                    return
                self.cycle = None  # type: ignore[assignment]  # answered here: what the app still sends is dropped
            self._answer(400, f"malformed HTTP request: {reason}", "bad_request")

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn warns on every Upgrade request (anyone can send one); they are answered
        as plain HTTP/1.1, which RFC 9110 §7.8 allows, so that is worth a throttled line."""
        _upgrade_log.warning("ignored an Upgrade request header: answered as HTTP/1.1")

    # parser callbacks

    def on_headers_complete(self) -> None:
        # The head is complete and within its byte bound (which is what bounds memory); the
        # request line's and the field count's bounds are checked here, once per request.
        if len(self.url) > self._max_line:
            self._refusal = "line"
            raise _HeadRefused
        if len(self.headers) > self._max_headers:
            self._refusal = "count"
            raise _HeadRefused
        if self.parser.should_upgrade() and _has_body(self.headers):
            # The parser takes all that follows an Upgrade head for the new protocol, so the
            # body would never reach the app (and an empty one would go upstream): refuse.
            self._refusal = "upgrade"
            raise _HeadRefused
        self._awaiting_head = False
        self._head_room = self._max_head
        self._heads_read += 1
        if self._header_timer is not None:
            self._cancel_header_timer()
        # as uvicorn's from here, with keygate's response writer (and no limit_concurrency,
        # which keygate never sets: `max_connections` is its bound)
        parser = self.parser
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        if parser.should_upgrade() and self._should_upgrade():
            return
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        existing = self.cycle
        self.cycle = ResponseCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:  # pipelined: after the one being answered
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def on_message_complete(self) -> None:
        self._awaiting_head = True  # what follows is the next request's head
        if self._body_timer is not None:
            self._cancel_body_timer()
        # as uvicorn's, inlined: this runs for every request
        if (
            self.parser.should_upgrade() and self._should_upgrade()
        ) or self.cycle.response_complete:
            return
        self.cycle.more_body = False
        self.cycle.message_event.set()

    # limits

    def _start_header_timer(self) -> None:
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timed_out
            )

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self._answer(408, "request headers not received in time", "request_timeout")

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _body_read(self) -> None:
        """A read ended inside a body: note when, and arm the timer if it is not."""
        self._body_read_at = self.loop.time()
        if self._body_timer is None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._body_timed_out
            )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._awaiting_head or self._lingering >= 0:
            return
        cycle = self.cycle
        timeout = self.limits.body_timeout_s
        left = self._body_read_at + timeout - self.loop.time()
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # the app has not read what came, or not asked for the rest: not the client's wait
            self._body_read()
            return
        if left > 0:  # more came since the timer was armed: wait from its last bytes
            self._body_timer = self.loop.call_later(left, self._body_timed_out)
            return
        if cycle is not None:
            if cycle.response_complete:
                self.transport.close()  # answered already (without its body): nothing to add
                return
            # the app reading the body must stop waiting for it (it sees the client gone)
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
            self.cycle = None  # type: ignore[assignment]  # answered here: what the app still sends is dropped
        self._answer(408, "request body not received in time", "request_timeout")

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _refuse(self, bound: str) -> None:
        if bound == "upgrade":
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            _upgrade_log.warning(f"refused a request from {client} with 400: Upgrade with a body")
            self._answer(
                400,
                "a request with a body cannot carry an Upgrade header here; send it without one",
                "upgrade_not_supported",
            )
            return
        if bound == "line":
            status, code = 414, "uri_too_long"
            limit = f"request line over {self._max_line} bytes (KEYGATE_MAX_REQUEST_LINE)"
        elif bound == "count":
            status, code = 431, "request_header_fields_too_large"
            limit = f"more than {self._max_headers} header fields (KEYGATE_MAX_HEADERS)"
        else:
            status, code = 431, "request_header_fields_too_large"
            limit = f"request head over {self._max_head} bytes (KEYGATE_MAX_HEADER_BYTES)"
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        _head_log.warning(f"refused a request from {client} with {status}: {limit}")
        self._answer(status, f"{limit}; request refused", code)

    def _answer(self, status: int, message: str, code: str, linger: bool = True) -> None:
        """A gateway error in OpenAI's shape (Anthropic's on /claude), then close."""
        if self.transport.is_closing() or self._lingering >= 0:
            return
        self._cancel_header_timer()
        self._cancel_body_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # an earlier (pipelined) request is still being answered: finish it, then close
            self.cycle.keep_alive = False
            self._lingering = LINGER_BYTES
            return
        url = getattr(self, "url", b"")
        if url.startswith(b"/claude"):
            doc: Any = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": message},
            }
        else:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            doc = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        body = orjson.dumps(doc)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"x-should-retry: %s\r\nconnection: close\r\n\r\n"
            % (len(body), b"true" if status == 503 else b"false")
        )
        self.transport.write(b"".join(head) + body)
        if linger:
            self._close_lingering()
        else:
            self.transport.close()

    def _close_lingering(self) -> None:
        """Close after the answer, like nginx's lingering close: a client still sending its
        request would get a reset instead of the answer if unread data were thrown away at
        once; so shut the sending side, drop what still comes for a moment, then close."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = LINGER_BYTES
        self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _drop(self, size: int) -> None:
        left = self._lingering - size
        self._lingering = max(left, 0)
        if left <= 0:
            self.transport.close()
