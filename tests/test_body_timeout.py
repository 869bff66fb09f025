"""A request whose body stalls (`KEYGATE_BODY_TIMEOUT_S`): after its head, a client that stops
sending the body it declared gets 408 in the API's error shape and the connection is closed, on
the proxy and the admin API alike; a body that keeps coming, however slowly, is not cut; and a
body that arrives with its head arms no timer at all."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import orjson
import pytest

from harness import ADMIN_PASSWORD, PASSWORD
from keygate.http.asgi import ClientGone, read_body, respond_json
from keygate.testing.mock_upstream import MockUpstream

KEY = "csk-body-timeout-aaaa0001"
TIMEOUT_S = 1.0
CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def _gateway(gateway_factory: Any) -> Any:
    return gateway_factory(env={"CEREBRAS_API_KEYS": KEY, "KEYGATE_BODY_TIMEOUT_S": str(TIMEOUT_S)})


def _connect(gw: Any) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=10)


def _read_to_eof(sock: socket.socket) -> bytes:
    """The whole answer: the gateway closes the connection after it (a blocking read, so the
    test waits for the answer itself; the socket's timeout bounds it)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _stall(gw: Any, head: bytes, part: bytes) -> tuple[int, dict[str, str], Any, float]:
    """Send `head` and the first `part` of a body, then nothing; the answer, and how long
    after the last byte sent it came."""
    with _connect(gw) as sock:
        sock.sendall(head + part)
        sent = time.monotonic()
        response = _read_to_eof(sock)
        took = time.monotonic() - sent
    status, headers, body = _split(response)
    return status, headers, orjson.loads(body), took


def _post(path: str, auth: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {auth}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_stalled_body_is_answered_408_and_closed(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    gw = _gateway(gateway_factory)
    before = mock.count()

    # the proxy: the prefix route and the unified endpoint
    for path in ("/cerebras/v1/chat/completions", "/v1/chat/completions"):
        status, headers, doc, took = _stall(gw, _post(path, PASSWORD, len(CHAT)), CHAT[:20])
        assert status == 408, doc
        assert headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        assert doc["error"]["code"] == "request_timeout"
        assert "body" in doc["error"]["message"]
        assert took >= TIMEOUT_S * 0.8  # by the timeout, not at once

    # an Anthropic client reads it in its own shape
    status, _, doc, _ = _stall(gw, _post("/claude/v1/messages", PASSWORD, 100), b"{")
    assert status == 408
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"

    # a chunked body that stops between chunks
    chunked = (
        f"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {PASSWORD}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    status, _, doc, _ = _stall(gw, chunked, b'5\r\n{"mod\r\n')
    assert status == 408, doc

    # the admin API
    status, _, doc, _ = _stall(gw, _post("/api/keys", ADMIN_PASSWORD, 200), b'{"provider":')
    assert status == 408, doc
    assert doc["error"]["code"] == "request_timeout"

    assert mock.count() == before  # nothing went upstream
    assert "Traceback" not in gw.log()
    # and the gateway serves on
    with _connect(gw) as sock:
        sock.sendall(_post("/cerebras/v1/chat/completions", PASSWORD, len(CHAT)) + CHAT)
        status, _, _ = _split(sock.recv(65536))
    assert status == 200


def test_a_slow_body_that_keeps_coming_is_not_cut(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = _gateway(gateway_factory)
    with _connect(gw) as sock:
        sock.sendall(_post("/cerebras/v1/chat/completions", PASSWORD, len(CHAT)))
        started = time.monotonic()
        for i in range(0, len(CHAT), 10):
            time.sleep(TIMEOUT_S / 3)  # the client's pace (the behaviour under test)
            sock.sendall(CHAT[i : i + 10])
        assert time.monotonic() - started > 2 * TIMEOUT_S  # longer than the timeout in all
        status, _, _ = _split(sock.recv(65536))
    assert status == 200
    assert mock.records()[-1].body == CHAT


def test_body_timeout_setting() -> None:
    from keygate.config.settings import ConfigError, load_settings
    from keygate.http.connection_limits import ConnectionLimits

    assert ConnectionLimits.from_settings(load_settings({})).body_timeout_s == 30.0
    s = load_settings({"KEYGATE_BODY_TIMEOUT_S": "2.5"})
    assert ConnectionLimits.from_settings(s).body_timeout_s == 2.5
    for value in ("0", "-1", "inf", "soon"):
        with pytest.raises(ConfigError, match="KEYGATE_BODY_TIMEOUT_S"):
            load_settings({"KEYGATE_BODY_TIMEOUT_S": value})


# --- in-process: what the timer costs ------------------------------------------------------


class _CountingLoop:
    """The protocol's loop, counting the body timers it is asked for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.body_timers = 0

    def call_later(self, delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__name__", "") == "_body_timed_out":
            self.body_timers += 1
        return self._loop.call_later(delay, callback, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


async def _echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    try:
        body = await read_body(receive, scope["headers"], 1 << 20)
    except ClientGone:
        return
    await respond_json(send, 200, {"length": len(body)})


async def test_a_body_that_came_with_its_head_arms_no_timer() -> None:
    from uvicorn.server import ServerState

    from keygate.http.connection_limits import ConnectionLimits, LimitedHttpProtocol
    from keygate.server.listen import KeygateConfig

    config = KeygateConfig(
        _echo_length,
        connection_limits=ConnectionLimits(body_timeout_s=0.5),
        lifespan="off",
        log_level="warning",
        http=LimitedHttpProtocol,
    )
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    counting = _CountingLoop(loop)

    def protocol() -> LimitedHttpProtocol:
        proto = LimitedHttpProtocol(config, state, {}, loop)
        proto.loop = counting  # type: ignore[assignment]
        return proto

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = _post("/x", "-", len(CHAT)) + CHAT
        for _ in range(50):  # keep-alive: one request after the other, each whole in one write
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert orjson.loads(await reader.readexactly(length)) == {"length": len(CHAT)}
        assert counting.body_timers == 0

        # a body in three reads, the last long after the first: one timer, moved on
        writer.write(_post("/x", "-", len(CHAT)) + CHAT[:10])
        await writer.drain()
        await asyncio.sleep(0.3)  # the client's pace
        writer.write(CHAT[10:30])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(CHAT[30:])
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert 1 <= counting.body_timers <= 2  # armed once, moved on once when it fired
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
