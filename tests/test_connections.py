"""Client connections: bounded request heads (414/431, nothing buffered or forwarded beyond the
bound), idle and header timeouts, the open-connection cap, and a busy port that stops `serve`
before the banner and the admin token."""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from harness import PASSWORD, eventually, free_port

KEY = "sk-connections-aaaa0001"
CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def keys_env(**extra: str) -> dict[str, str]:
    return {"CEREBRAS_API_KEYS": KEY, **extra}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def connect(gw: Any) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=10)


def head(path: str = "/cerebras/v1/chat/completions", extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PASSWORD}\r\n".encode()
        + extra
        + f"Content-Type: application/json\r\nContent-Length: {len(CHAT)}\r\n\r\n".encode()
    )


def read_response(sock: socket.socket) -> bytes:
    """Everything up to EOF (the gateway closes after a refusal)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send what the gateway will take; it may stop reading and close once over a bound."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def status_of(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    assert match, response[:200]
    return int(match.group(1))


def chat_ok(gw: Any, client: httpx.Client | None = None, **headers: str) -> int:
    c = client or httpx.Client(timeout=10)
    try:
        r = c.post(
            gw.url + "/cerebras/v1/chat/completions",
            content=CHAT,
            headers={"Authorization": f"Bearer {PASSWORD}", **headers},
        )
        return r.status_code
    finally:
        if client is None:
            c.close()


# ---------------------------------------------------------------- item 2: bounded heads


def test_one_mb_header_is_refused_with_431_and_never_buffered(
    gateway_factory: Any, mock: Any
) -> None:
    gw = gateway_factory(env=keys_env())
    for _ in range(20):  # warm up whatever a first request allocates
        assert chat_ok(gw) == 200
    before = rss_kb(gw.proc.pid)

    sock = connect(gw)
    send_all(sock, head(extra=b"X-Big: " + b"a" * (1 << 20) + b"\r\n") + CHAT)
    response = read_response(sock)
    sock.close()
    grew = rss_kb(gw.proc.pid) - before

    assert status_of(response) == 431, response[:300]
    assert b"KEYGATE_MAX_HEADER_BYTES" in response
    assert b"x-should-retry: false" in response.lower()
    assert grew < 5 * 1024, f"RSS grew {grew} kB for one 1 MB header"
    assert len(mock.records()) == 20  # the refused request never went upstream
    assert chat_ok(gw) == 200


def test_unfinished_huge_heads_hold_no_memory(gateway_factory: Any) -> None:
    gw = gateway_factory(env=keys_env())
    for _ in range(20):
        assert chat_ok(gw) == 200
    before = rss_kb(gw.proc.pid)
    junk = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 << 20)  # never ends
    socks = [connect(gw) for _ in range(20)]
    try:
        for sock in socks:
            sock.settimeout(5)
            send_all(sock, junk)
        # with all 20 still open on this side: nothing of the 80 MB is held by the gateway
        grew = rss_kb(gw.proc.pid) - before
        print(f"RSS growth with 20 unfinished 4 MB heads: {grew} kB")
        assert grew < 5 * 1024, f"RSS grew {grew} kB"
        assert chat_ok(gw) == 200
    finally:
        for sock in socks:
            sock.close()


def test_header_count_and_request_line_are_bounded(gateway_factory: Any, mock: Any) -> None:
    gw = gateway_factory(env=keys_env())

    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    sock = connect(gw)
    send_all(sock, head(extra=many) + CHAT)
    response = read_response(sock)
    assert status_of(response) == 431, response[:300]
    assert b"KEYGATE_MAX_HEADERS" in response

    sock = connect(gw)
    send_all(sock, head(path="/cerebras/v1/chat/completions?" + "q" * 9000) + CHAT)
    response = read_response(sock)
    assert status_of(response) == 414, response[:300]
    assert b"KEYGATE_MAX_REQUEST_LINE" in response
    assert mock.records() == []  # neither reached the upstream

    # just under the bounds passes, with every header forwarded
    headers = {f"x-h{i}": "v" for i in range(90)}
    assert chat_ok(gw, **headers) == 200
    assert sum(1 for k in mock.records()[-1].headers if k.startswith("x-h")) == 90

    # the bounds are configurable
    small = gateway_factory(env=keys_env(KEYGATE_MAX_HEADERS="20"))
    assert chat_ok(small, **{f"x-h{i}": "v" for i in range(10)}) == 200
    assert chat_ok(small, **{f"x-h{i}": "v" for i in range(30)}) == 431


def test_normal_traffic_is_unaffected(gateway_factory: Any, mock: Any) -> None:
    gw = gateway_factory(env=keys_env())
    # one keep-alive connection, 40 requests of ~20 kB of headers each: the count is per request
    fat = {f"x-fat{i}": "f" * 2000 for i in range(10)}
    with httpx.Client(timeout=10) as client:
        for _ in range(40):
            assert chat_ok(gw, client, **fat) == 200
    assert len(mock.records()) == 40

    # a large body is not a large head
    body = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * (2 << 20) + b'"}]}'
    r = httpx.post(
        gw.url + "/cerebras/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {PASSWORD}", "Content-Type": "application/json"},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    assert len(mock.records()[-1].body) == len(body)

    # three pipelined requests in one write, the last with a header near the bound
    sock = connect(gw)
    near = b"".join(b"X-Near%d: " % i + b"n" * 7000 + b"\r\n" for i in range(4))  # ~28 kB
    one = head() + CHAT
    last = head(extra=near).replace(b"Host: x", b"Host: x\r\nConnection: close") + CHAT
    sock.sendall(one + one + last)
    response = read_response(sock)
    sock.close()
    assert response.count(b"HTTP/1.1 200 OK") == 3, response[:500]


# ---------------------------------------------------------------- item 3: idle and slow sockets


def open_sockets(gw: Any, n: int, first: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        if first:
            sock.sendall(first)
        socks.append(sock)
    return socks


def wait_closed(socks: list[socket.socket], deadline: float) -> dict[socket.socket, float]:
    """When each socket saw EOF (or a reset), until `deadline` (monotonic)."""
    closed: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    closed[sock] = time.monotonic()
                    sel.unregister(sock)
    return closed


def test_idle_and_half_header_sockets_are_closed_while_traffic_continues(
    gateway_factory: Any,
) -> None:
    timeout = 2.0
    gw = gateway_factory(
        env=keys_env(KEYGATE_IDLE_TIMEOUT_S=str(timeout), KEYGATE_HEADER_TIMEOUT_S=str(timeout))
    )
    ok: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                ok.append(chat_ok(gw, client))
                ok.append(httpx.get(gw.url + "/healthz", timeout=10).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        t0 = time.monotonic()
        idle = open_sockets(gw, 150)
        half = open_sockets(gw, 150, first=b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHo")
        # a keep-alive connection that answered one request, then sends half of the next head
        kept = open_sockets(gw, 10, first=b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in kept:
            assert b"200 OK" in sock.recv(65536)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        opened = time.monotonic() - t0
        socks = idle + half + kept
        closed = wait_closed(socks, deadline=t0 + opened + timeout + 5)
        took = max(closed.values(), default=t0) - t0
    finally:
        stop.set()
        worker.join(30)
    print(f"{len(closed)} of {len(socks)} closed after {took:.2f}s; {len(ok)} requests meanwhile")
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} sockets still open"
    assert min(closed.values()) - t0 >= timeout * 0.8  # by the timeout, not at once
    assert len(ok) >= 10 and set(ok) == {200}, ok
    for sock in socks:
        sock.close()


def test_connection_cap_refuses_extra_connections_and_logs_once(gateway_factory: Any) -> None:
    cap = 20
    gw = gateway_factory(env=keys_env(KEYGATE_MAX_CONNECTIONS=str(cap)))
    held = open_sockets(gw, cap)
    try:
        extras = open_sockets(gw, 5)
        for sock in extras:
            response = read_response(sock)
            assert status_of(response) == 503, response[:300]
            assert b"too many open connections" in response
            sock.close()
        for sock in held:  # the ones under the cap are served
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in sock.recv(65536)
    finally:
        for sock in held:
            sock.close()
    log = gw.log()
    assert log.count("client connections open (KEYGATE_MAX_CONNECTIONS)") == 1, log
    eventually(  # the gateway notices the closes, then serves again
        lambda: httpx.get(gw.url + "/healthz", timeout=5).status_code == 200,
        10,
        "serving again after the held sockets closed",
        interval=0.05,
        ignoring=httpx.HTTPError,
    )


def test_malformed_requests_log_one_line_not_one_each(gateway_factory: Any) -> None:
    """Unauthenticated garbage is answered 400; the log says so once, not once per request."""
    gw = gateway_factory(env=keys_env())
    for i in range(30):
        with connect(gw) as sock:
            send_all(sock, b"GARBAGE\x01 /%d HTTP/9.9\r\n\r\n" % i)
            assert status_of(read_response(sock)) == 400
    assert chat_ok(gw) == 200
    assert gw.log().count("refused a malformed request") == 1, gw.log()


# ---------------------------------------------------------------- item 16: busy port


@pytest.mark.parametrize("args", [[], ["--workers", "2"]], ids=["one", "workers"])
def test_busy_port_fails_before_banner_and_token(gateway_factory: Any, args: list[str]) -> None:
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        gw = gateway_factory(wait=False, port=port, args=args, admin_password=None)
        rc = gw.proc.wait(30)
    finally:
        holder.close()
    log = gw.log()
    assert rc != 0, log
    assert log.count(f"cannot listen on 127.0.0.1:{port}") == 1, log
    assert len(log.strip().splitlines()) == 1, log
    assert "listening" not in log and "admin token" not in log, log

    again = gateway_factory(data_dir=gw.data_dir, args=args, admin_password=None)
    tokens = re.findall(r"admin token\s+(kg-admin-\S+)", again.log())
    assert len(tokens) == 1, again.log()
    r = httpx.get(again.url + "/api/keys", headers={"Authorization": f"Bearer {tokens[0]}"})
    assert r.status_code == 200, r.text


def test_connection_settings_from_env_and_bad_values() -> None:
    from keygate.config.settings import ConfigError, load_settings
    from keygate.server.listen import ConnectionLimits

    s = load_settings({"KEYGATE_IDLE_TIMEOUT_S": "0.5", "KEYGATE_MAX_HEADERS": "50"})
    limits = ConnectionLimits.from_settings(s)
    assert (limits.idle_timeout_s, limits.max_headers, limits.max_head_bytes) == (0.5, 50, 32768)
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 0 < limits.max_connections < soft  # by default below the file limit
    for name, value in [
        ("KEYGATE_IDLE_TIMEOUT_S", "inf"),
        ("KEYGATE_HEADER_TIMEOUT_S", "0"),
        ("KEYGATE_MAX_HEADER_BYTES", "10"),
        ("KEYGATE_MAX_CONNECTIONS", "-1"),
    ]:
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})
