"""How a response goes on the wire: uvicorn's request/response cycle with keygate's own writer.

uvicorn writes a response's head as soon as the app sends `http.response.start`, then each body
part in a write of its own, and checks every header field with two regular-expression searches.
For the answers keygate relays whole (the common case: a JSON body with a Content-Length) that
is two system calls and two passes through the transport where one does. `ResponseCycle`:

- holds the head of a length-framed response until its first body part and writes both in one
  call (`writelines`: one `writev`); a chunked response (a stream) gets its head at once, so a
  client sees the status and headers before the first event, as before;
- checks the head in one pass over its bytes (and each distinct name once) instead of two
  searches per field: the same rule (uvicorn's), the same refusal (RuntimeError: the
  connection is closed with nothing of that head sent);
- otherwise frames exactly as uvicorn does: Content-Length counted, chunked when neither length
  nor Transfer-Encoding is given (not for HEAD, 204, 304), `connection: close` when the
  connection will not be kept, HEAD bodies dropped.

An app that fails between the head and the first body part (raises, or returns without a body)
leaves the client a closed connection with no head at all, where uvicorn's had sent the head
first; keygate's relays send the two back to back.

Measured on the plain prefix path: ~4 % fewer instructions per proxied request (callgrind,
707k → 677k) and one system call fewer (strace: three writes per request before, a `write`
upstream and one `writev` to the client after).
"""

from __future__ import annotations

import re
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

# The uvicorn releases whose private httptools protocol and cycle this writer and
# `connection_limits.LimitedHttpProtocol` were written against ([from, to), as in
# pyproject.toml): another may rename what they reach into, so it is refused at start.
UVICORN_SUPPORTED = ((0, 55), (0, 56))


def check_uvicorn(version: str) -> None:
    """A RuntimeError naming the supported range when `version` is outside it."""
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    low, high = UVICORN_SUPPORTED
    if not low <= parts < high:
        raise RuntimeError(
            f"keygate's connection handling subclasses uvicorn {low[0]}.{low[1]}.x internals; "
            f"uvicorn {version} is installed: install 'uvicorn>={low[0]}.{low[1]},"
            f"<{high[0]}.{high[1]}'"
        )


check_uvicorn(uvicorn.__version__)

# uvicorn's rules for a field: no separators or controls in a name (checked once per distinct
# name: a gateway relays the same few again and again), no controls but HTAB in a value
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_CONTROLS = bytes(b for b in range(256) if (b < 0x20 and b != 0x09) or b == 0x7F)
# a name as given → its field's start (`content-type: `) once it passed the check; the names
# that frame the body or end the connection are never in it: they are looked at every time
_FIELDS: dict[bytes, bytes] = {}
_FRAMERS: dict[bytes, bytes] = {}  # those names, as given → lowercased (checked)
_FIELDS_MAX = 1024
_CRLF = b"\r\n"
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_CLOSE = b"connection: close\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


def _checked_name(name: bytes) -> bytes:
    """uvicorn's check of a name, lowercased."""
    if _BAD_NAME.search(name):
        raise RuntimeError("Invalid HTTP header name.")
    return name.lower()


class ResponseCycle(RequestResponseCycle):
    """One request's response (see the module docstring); uvicorn's reading side, flow control
    and keep-alive stay as they are (`server.LimitedHttpProtocol` builds these)."""

    _head: bytes | None = None  # a length-framed head waiting for its first body part

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        try:
            kind = message["type"]
            if not self.response_started:
                if kind != "http.response.start":
                    raise RuntimeError(
                        f"Expected ASGI message 'http.response.start', but got '{kind}'."
                    )
                self.response_started = True
                self.waiting_for_100_continue = False
                framed = self._frame_head(message["status"], message.get("headers", ()))
                if self.chunked_encoding:
                    self.transport.write(framed)  # a stream: the head now, the events as they come
                else:
                    self._head = framed
                return
            if self.response_complete:
                raise RuntimeError(
                    f"Unexpected ASGI message '{kind}' sent, after response already completed."
                )
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            head, self._head = self._head, None
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
                if head is not None:
                    self.transport.write(head)
            elif self.chunked_encoding:
                parts = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
                if not more:
                    parts.append(_LAST_CHUNK)
                if parts:
                    self.transport.writelines(parts)
            else:
                size = len(body)
                if size > self.expected_content_length:
                    if head is not None:
                        self.transport.write(head)  # as uvicorn: the head, then the connection cut
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= size
                if head is None:
                    if body:
                        self.transport.write(body)
                elif body:
                    self.transport.writelines((head, body))
                else:
                    self.transport.write(head)
            if not more:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()
        except RuntimeError:
            # uvloop refuses a write on a transport the client closed under a pipelined
            # request still being answered (uvicorn's own writes are silent there): that
            # answer has nowhere to go, which is no error of the app's
            if not self.transport.is_closing():
                raise
            self.disconnected = True

    def _frame_head(self, status: int, fields: Any) -> bytes:
        headers = [*self.default_headers, *fields] if self.default_headers else fields
        out: list[bytes] = []
        closing = False
        known = _FIELDS.get
        for name, value in headers:  # one pass: any iterable will do
            start = known(name)
            if start is None:
                low = _FRAMERS.get(name) or _checked_name(name)
                start = low + b": "
                if low in _FRAMING:
                    if len(_FRAMERS) < _FIELDS_MAX:
                        _FRAMERS[name] = low
                    closing = self._framing(low, value) or closing
                else:
                    if len(_FIELDS) >= _FIELDS_MAX:
                        _FIELDS.clear()
                    _FIELDS[name] = start
            out += (start, value, _CRLF)
        block = b"".join(out)
        # the names hold no control characters, so taking every control character out must
        # take exactly the fields' own line ends: a control character, CR or LF in a value
        # (which could end the head or add a field) takes more
        if len(block.translate(None, _CONTROLS)) != len(block) - 2 * (len(out) // 3):
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive and not closing:
            block += _CLOSE
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True
            block += _CHUNKED
        return STATUS_LINE[status] + block + _CRLF

    def _framing(self, name: bytes, value: bytes) -> bool:
        """A field that frames the body or ends the connection; True: `connection: close`."""
        if name == b"content-length":
            if self.chunked_encoding is None:
                self.expected_content_length = int(value)
                self.chunked_encoding = False
        elif name == b"transfer-encoding":
            if value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
        elif b"close" in [token.lower().strip() for token in value.split(b",")]:
            self.keep_alive = False
            return True
        return False
