"""Server-sent events, incrementally: bytes in any split → (event, data) as each one completes.

Only the unfinished line and the event being assembled are held, so a stream costs the same
memory at its first byte and its millionth. Lines end in LF or CRLF (what every provider
sends); a CR split from its LF across two reads is handled.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_EVENT_BYTES = 16 << 20  # an event larger than this is a broken upstream, not an answer


class SSEError(ValueError):
    """The upstream's bytes are not an event stream keygate can follow."""


class SSEParser:
    __slots__ = ("_buf", "_data", "_event", "_size")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, bytes]]:
        """Every event completed by `chunk`, in order: (the `event:` name or None, data)."""
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        find = buf.find
        while True:
            end = find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    yield self._dispatch()
                else:
                    self._event = None  # an event without data is not dispatched
                continue
            self._line(line)
        rest = buf[start:]
        if len(rest) + self._size > MAX_EVENT_BYTES:
            raise SSEError("an upstream event exceeds the size limit")
        self._buf = rest

    def close(self) -> Iterator[tuple[str | None, bytes]]:
        """At the end of the stream: an event the upstream did not terminate with a blank line."""
        if self._buf:
            line, self._buf = self._buf.rstrip(b"\r"), b""
            self._line(line)
        if self._data:
            yield self._dispatch()

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            self._data.append(value)
            self._size += len(value)
            if self._size > MAX_EVENT_BYTES:
                raise SSEError("an upstream event exceeds the size limit")
        elif line.startswith(b"event:"):
            self._event = line[6:].strip().decode("utf-8", "replace")
        # comments (`:`), `id:`, `retry:` and unknown fields carry nothing to translate

    def _dispatch(self) -> tuple[str | None, bytes]:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = self._event
        self._event = None
        self._data = []
        self._size = 0
        return event, data
