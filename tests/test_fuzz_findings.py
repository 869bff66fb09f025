"""What a schema-driven run against the admin API's OpenAPI document and a raw HTTP fuzzer
against the proxy found, one test per finding (plain tests, not fuzzers)."""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import pytest

from harness import PASSWORD, wait_log

KEYS = "csk-fuzzfindings000000001,csk-fuzzfindings000000002"


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(env={"CEREBRAS_API_KEYS": KEYS})


def raw(gw: Any, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# --- admin API ---------------------------------------------------------------------------------


def test_integral_json_floats_are_whole_numbers(gw: Any) -> None:
    """JSON Schema's integer includes 5.0; the API refused it ("must be a whole number")."""
    key_id = gw.api("GET", "/api/keys").json()["keys"][0]["id"]
    resp = gw.api("PATCH", f"/api/keys/{key_id}", json={"rpm": 60.0, "max_conn": 2.0})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["rpm"], resp.json()["max_conn"]) == (60, 2)
    resp = gw.api("PATCH", "/api/providers/cerebras", json={"queue": 726.0, "burst": 9.0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["queue"] == 726 and isinstance(resp.json()["queue"], int)
    for bad in ({"rpm": 1.5}, {"max_conn": float("1e300")}):
        assert gw.api("PATCH", f"/api/keys/{key_id}", json=bad).status_code == 400
    assert gw.api("PATCH", "/api/providers/cerebras", json={"queue": 2.5}).status_code == 400


def test_default_model_put_without_model_is_refused_not_a_clear(gw: Any) -> None:
    """A PUT with no body (or no `model`) answered 200 and cleared the default model."""
    assert gw.api("PUT", "/api/config/default-model", json={"model": "dm-kept"}).status_code == 200
    for kw in ({}, {"json": {}}, {"json": {"provider": "cerebras", "force": True}}):
        resp = gw.api("PUT", "/api/config/default-model", **kw)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "model"
    for provider in ({}, [], 0, False):  # was taken as "the default provider"
        resp = gw.api("PUT", "/api/config/default-model", json={"model": "", "provider": provider})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "provider", resp.text
    providers = gw.api("GET", "/api/config").json()["providers"]
    assert providers["cerebras"] == {"default_model": "dm-kept", "force_model": False}
    assert gw.api("PUT", "/api/config/default-model", json={"model": None}).status_code == 200


def test_openapi_document_says_what_the_api_refuses(gw: Any) -> None:
    """The document allowed values the API refuses with 400: any provider name, an empty
    password, any `status` filter text, extra default-model fields."""
    doc = gw.api("GET", "/api/openapi.json").json()
    names = sorted(p["name"] for p in gw.api("GET", "/api/providers").json()["providers"])

    def body(path: str, method: str) -> dict[str, Any]:
        op = doc["paths"][path][method]
        return op["requestBody"]["content"]["application/json"]["schema"]

    for path in ("/api/keys", "/api/keys/batch"):
        assert body(path, "post")["properties"]["provider"]["enum"] == names
    default_model = body("/api/config/default-model", "put")
    assert default_model["properties"]["provider"]["enum"] == [*names, "", None]
    assert default_model["additionalProperties"] is False
    assert body("/api/session", "post")["properties"]["password"]["minLength"] == 1
    # an empty PATCH is a no-op the API answers 200: the document must not require a body
    for path in ("/api/keys/{id}", "/api/providers/{name}"):
        assert doc["paths"][path]["patch"]["requestBody"]["required"] is False
    # the `status` filter's pattern matches exactly what the API accepts
    params = doc["paths"]["/api/requests"]["get"]["parameters"]
    pattern = next(p for p in params if p["name"] == "status")["schema"]["pattern"]
    for value in ("429", "2xx", "5XX", "error", "ERROR", "", " 404 "):
        assert re.search(pattern, value), value
        assert gw.api("GET", "/api/requests", params={"status": value}).status_code == 200
    for value in ("abc", "6xx", "42", "errors"):
        assert not re.search(pattern, value), value
        assert gw.api("GET", "/api/requests", params={"status": value}).status_code == 400
    # a default model with a control character is refused, and the document says so
    field = doc["components"]["schemas"]["ProviderPatch"]["properties"]["default_model"]
    assert not re.search(field["pattern"], "a\nb") and re.search(field["pattern"], "llama-3.1")
    resp = gw.api("PATCH", "/api/providers/cerebras", json={"default_model": "a\nb"})
    assert resp.status_code == 400
    # more than 500 is served as 500, not refused: the document has no maximum
    params = doc["paths"]["/api/keys"]["get"]["parameters"]
    assert "maximum" not in next(p for p in params if p["name"] == "limit")["schema"]
    assert gw.api("GET", "/api/keys", params={"limit": 501}).status_code == 200


# --- proxy -------------------------------------------------------------------------------------

MALFORMED = [
    b"GET /cerebras/v1/models HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
    b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    b"GET /v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\n\r\n",
]


def test_malformed_requests_get_json_400_and_one_throttled_log_line(gw: Any) -> None:
    """uvicorn's plain-text 400 "Invalid HTTP request received." was written to the log once
    per junk request from anyone (a log-flooding lever)."""
    rounds = 8
    for _ in range(rounds):
        for data in MALFORMED:
            answer = raw(gw, data)
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
            head, _, payload = answer.partition(b"\r\n\r\n")
            assert b"content-type: application/json" in head.lower(), head
            assert b'"code":"bad_request"' in payload, payload
    with gw.client() as c:
        ok = c.post(
            "/cerebras/v1/chat/completions",
            headers={"Authorization": f"Bearer {PASSWORD}"},
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert ok.status_code == 200, ok.text
    log = wait_log(gw, r"refused a malformed request from 127\.0\.0\.1:\d+ with 400")
    assert "Invalid HTTP request received" not in log
    assert len(re.findall(r"malformed request", log)) <= 2, log[-3000:]
    assert "Traceback" not in log


def test_an_8kb_path_makes_a_short_access_line(gw: Any) -> None:
    """Every unauthenticated request's access line carried the whole path (up to the 8 KB
    request-line bound): 40 bytes of request bought 8 KB of log."""
    path = "/cerebras/v1/" + "a" * 7000
    with gw.client() as c:
        assert c.get(path).status_code == 401
    log = wait_log(gw, r"status=401")
    line = next(ln for ln in log.splitlines() if "status=401" in ln)
    assert len(line) < 600, len(line)
    assert "(+6713)" in line  # how much was left out is still said


CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
WEBSOCKET = (
    b"GET /cerebras/v1/models HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket"
    b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def test_websocket_handshake_is_served_as_plain_http(gw: Any) -> None:
    """A WebSocket handshake, from anyone, was a 500 and an ERROR log line ("ASGI callable
    returned without completing handshake") per request; keygate speaks no WebSocket."""
    auth = f"Authorization: Bearer {PASSWORD}\r\n".encode()
    for _ in range(5):
        answer = raw(gw, WEBSOCKET + auth + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        answer = raw(gw, WEBSOCKET + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    log = wait_log(gw, r"status=401")
    assert "ERROR" not in log and "Traceback" not in log
    assert len(re.findall(r"[Uu]pgrade request", log)) <= 1, log[-2000:]


@pytest.mark.parametrize(
    "upgrade",
    [
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    ],
    ids=["h2c", "websocket"],
)
def test_upgrade_with_a_body_is_refused_not_sent_upstream_empty(
    gw: Any, mock: Any, upgrade: bytes
) -> None:
    """The parser hands everything after an Upgrade head to the new protocol: the body was
    dropped and the upstream got an empty one."""
    head = (
        b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + upgrade
        + f"Authorization: Bearer {PASSWORD}\r\nContent-Type: application/json\r\n".encode()
    )
    before = len(mock.records())
    answer = raw(gw, head + b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b'"code":"upgrade_not_supported"' in answer
    chunked = raw(gw, head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 400 "), chunked[:300]
    assert len(mock.records()) == before  # nothing went upstream
    # the same request without the body is served
    bare = raw(gw, head + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert bare.startswith(b"HTTP/1.1 ") and b"upgrade_not_supported" not in bare, bare[:300]
    assert "Traceback" not in gw.log()


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"], ids=["plain", "expect"])
def test_a_broken_chunked_body_ends_the_request_at_once(gw: Any, mock: Any, expect: bytes) -> None:
    """A head that parses and a chunked body that does not: the request being read must end
    (the app waiting for the rest of the body sees a disconnect) with a JSON 400, not hold
    the connection open until the client gives up; with `Expect: 100-continue` nothing is
    written after that answer (that was a traceback)."""
    data = (
        b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + expect
        + f"Authorization: Bearer {PASSWORD}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b'5\r\n{"mod\r\nzz\r\n'
    )
    before = len(mock.records())
    started = time.monotonic()
    answer = raw(gw, data)  # no half-close: only the gateway can end this exchange
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b'"code":"bad_request"' in answer and b"chunk" in answer
    assert len(mock.records()) == before
    wait_log(gw, r"status=499")
    with gw.client() as c:
        ok = c.post(
            "/cerebras/v1/chat/completions",
            headers={"Authorization": f"Bearer {PASSWORD}"},
            content=CHAT,
        )
    assert ok.status_code == 200, ok.text
    assert "Traceback" not in gw.log()
