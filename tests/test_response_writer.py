"""keygate's response writer (`keygate.http.response_writer`): one write for a length-framed answer,
the head at once for a stream, and uvicorn's framing rules otherwise."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

from harness import PASSWORD
from keygate.http.response_writer import ResponseCycle

_FRAMING_NAMES = (b"content-length", b"transfer-encoding", b"connection")


class Recorder:
    """A transport that keeps every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, parts: Any) -> None:
        self.calls.append(("writelines", b"".join(parts)))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    @property
    def wire(self) -> bytes:
        return b"".join(data for _, data in self.calls)


class Flow:
    write_paused = False


def cycle(
    method: str = "POST", keep_alive: bool = True
) -> tuple[ResponseCycle, Recorder, list[int]]:
    transport = Recorder()
    done: list[int] = []
    c = ResponseCycle(
        scope={"method": method, "type": "http"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=Flow(),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: done.append(1),
    )
    return c, transport, done


def start(status: int, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def test_a_whole_answer_is_one_write_of_head_and_body() -> None:
    c, t, done = cycle()
    await c.send(start(200, [(b"Content-Type", b"application/json"), (b"content-length", b"2")]))
    assert t.calls == []  # the head waits for the body
    await c.send(body(b"{}"))
    assert len(t.calls) == 1
    assert t.wire == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    )
    assert c.response_complete and done == [1] and not t.closed


async def test_a_stream_gets_its_head_at_once_and_chunks_as_they_come() -> None:
    c, t, done = cycle()
    await c.send(start(200, [(b"content-type", b"text/event-stream")]))
    assert t.wire.endswith(b"transfer-encoding: chunked\r\n\r\n")  # before any event
    await c.send(body(b"data: 1\n\n", more=True))
    assert t.calls[-1][1] == b"9\r\ndata: 1\n\n\r\n"
    await c.send(body(b""))
    assert t.calls[-1][1] == b"0\r\n\r\n" and done == [1]


async def test_later_parts_of_a_length_framed_body_follow_the_first() -> None:
    c, t, _ = cycle()
    await c.send(start(200, [(b"content-length", b"6")]))
    await c.send(body(b"abc", more=True))
    await c.send(body(b"def"))
    assert len(t.calls) == 2 and t.wire.endswith(b"\r\n\r\nabcdef")


async def test_head_answers_send_the_head_only() -> None:
    c, t, done = cycle("HEAD")
    await c.send(start(200, [(b"content-length", b"10")]))
    await c.send(body(b""))
    assert t.wire == b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n" and done == [1]


async def test_no_content_has_no_framing_and_a_closing_connection_says_so() -> None:
    c, t, _ = cycle(keep_alive=False)
    await c.send(start(204, [(b"access-control-max-age", b"86400")]))
    await c.send(body(b""))
    assert b"transfer-encoding" not in t.wire and b"connection: close\r\n" in t.wire
    assert t.closed  # after the answer was written
    c, t, _ = cycle()
    await c.send(start(200, [(b"content-length", b"0"), (b"Connection", b"keep-alive, Close")]))
    await c.send(body(b""))
    assert t.wire.count(b"onnection") == 1 and t.closed


@pytest.mark.parametrize(
    "field",
    [
        (b"x-model", b"a\r\nset-cookie: evil=1"),
        (b"x-model", b"a\nb"),
        (b"x-model", b"nul\x00"),
        (b"bad name", b"v"),
        (b"x:y", b"v"),
    ],
)
async def test_a_field_that_could_break_the_head_is_refused(field: tuple[bytes, bytes]) -> None:
    c, t, _ = cycle()
    with pytest.raises(RuntimeError, match="Invalid HTTP header"):
        await c.send(start(200, [(b"content-length", b"0"), field]))
    assert t.calls == []  # nothing of the head went out


async def test_a_tab_in_a_value_is_allowed_and_lengths_are_held_to() -> None:
    c, _, _ = cycle()
    await c.send(start(200, [(b"x-a", b"one\ttwo"), (b"content-length", b"1")]))
    with pytest.raises(RuntimeError, match="longer than Content-Length"):
        await c.send(body(b"ab"))
    c, _, _ = cycle()
    await c.send(start(200, [(b"content-length", b"3")]))
    with pytest.raises(RuntimeError, match="shorter than Content-Length"):
        await c.send(body(b"ab"))


def test_a_relayed_answer_reaches_the_client_in_one_segment(gateway_factory: Any) -> None:
    """End to end on loopback: head and body of a proxied answer go out in one write, so the
    first read holds the status line and the whole body (with two writes it held the head)."""
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": "sk-writer-aaaa0001"})
    chat = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    request = (
        b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + PASSWORD.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(chat)
        + chat
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        for _ in range(5):
            sock.sendall(request)
            data = sock.recv(1 << 20)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), data[:300]
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
            assert len(rest) == int(fields[b"content-length"])  # all of it, in that one read


async def test_headers_may_be_any_iterable_and_nothing_follows_a_complete_answer() -> None:
    c, t, _ = cycle()
    await c.send(start(200, iter([(b"content-length", b"2")])))  # type: ignore[arg-type]
    await c.send(body(b"{}"))
    assert t.wire == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    with pytest.raises(RuntimeError, match="after response already completed"):
        await c.send(body(b"more"))
    assert t.wire.endswith(b"{}")


async def test_a_body_over_its_length_still_sends_the_head_first() -> None:
    c, t, _ = cycle()
    await c.send(start(200, [(b"content-length", b"1")]))
    with pytest.raises(RuntimeError, match="longer than Content-Length"):
        await c.send(body(b"ab"))
    assert t.wire == b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("field", "part"),
    [
        ((b"x-model", b"a\r\nset-cookie: evil=1"), "value"),
        ((b"bad name", b"v"), "name"),
        ((b"x-a", b"ok\rcontent-length: 9"), "value"),
    ],
)
async def test_the_refusal_names_the_part_that_was_wrong(
    field: tuple[bytes, bytes], part: str
) -> None:
    c, _, _ = cycle()
    with pytest.raises(RuntimeError, match=f"Invalid HTTP header {part}"):
        await c.send(start(200, [field, (b"content-length", b"0")]))


_ANY_BYTES = st.binary(max_size=12) | st.sampled_from(
    [b"x-a", b"ok", b"a\r\nb: c", b"\r\n", b"a:b", b" ", b"\t", b"v\x7f", b"\n", b"\r", b""]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_ANY_BYTES, _ANY_BYTES), max_size=4))
def test_the_head_check_refuses_exactly_what_uvicorns_refuses(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """The one match over the framed fields against uvicorn's two searches per field."""
    kept = [(n, v) for n, v in fields if n.lower() not in _FRAMING_NAMES]  # no framing here
    uvicorn_refuses = any(HEADER_RE.search(n) or HEADER_VALUE_RE.search(v) for n, v in kept)
    c, _, _ = cycle()
    try:
        c._frame_head(200, kept)
        refused = False
    except RuntimeError:
        refused = True
    assert refused == uvicorn_refuses, kept


def test_an_unsupported_uvicorn_is_refused_loudly() -> None:
    """The writer and the protocol subclass uvicorn's private classes: a release outside the
    range they were written against stops keygate at start, naming the range."""
    import uvicorn

    from keygate.http.response_writer import UVICORN_SUPPORTED, check_uvicorn

    check_uvicorn(uvicorn.__version__)  # the installed one is supported (pyproject pins it)
    low, high = UVICORN_SUPPORTED
    for version in (f"{high[0]}.{high[1]}.0", f"{low[0]}.{low[1] - 1}.9", "1.0.0"):
        with pytest.raises(RuntimeError, match=r"install 'uvicorn>=0\.\d+,<0\.\d+'"):
            check_uvicorn(version)
