"""The gateway core over raw HTTP (httpx and plain sockets) against the mock upstream.

Most tests share one `keygate serve` process per module (starting one costs ~0.5 s); its
providers have no rate limits and no retries so tests do not wait on each other, and the
timeouts are small so the timeout tests are quick. Tests that need another environment (no
password, disguise) start their own gateway with `gateway_factory`.
"""

from __future__ import annotations

import gzip
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

import keygate
from harness import PASSWORD, Gateway, admission, eventually, free_port, idle, start_gateway
from keygate.testing.mock_upstream import MockUpstream, Recorded

SECOND_PASSWORD = "second-pass"
ALIAS_PASSWORD = "third pass"  # via AUTH_PASSWORD; the space is part of it
PASSWORDS = (PASSWORD, SECOND_PASSWORD, ALIAS_PASSWORD)
KEYS = {
    "cerebras": ["sk-cere-aaaa1111", "sk-cere-bbbb2222"],
    "claude": ["sk-ant-claude-cccc3333"],
    "gemini": ["AIza-gemini-dddd4444"],
    "groq": ["gsk-groq-eeee5555"],
    "deepseek": ["sk-deep-ffff6666"],
    "xai": ["xai-grok-gggg7777"],
    "mylocal": ["sk-local-hhhh8888"],
    "deadend": ["sk-dead-iiii9999"],
    "openai": ["sk-proj-openai-jjjj0000"],
}
ALL_KEYS = [k for keys in KEYS.values() for k in keys]
FAST = {"rps": 0, "max_conn": 0, "retries": 0, "timeout_first_byte_s": 1, "timeout_idle_s": 1}
BODY_LIMIT = int(0.001 * 1024 * 1024)  # groq's max_body_mb below
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def closed_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture(scope="module")
def core(
    tmp_path_factory: pytest.TempPathFactory, mock_session: MockUpstream, closed_port: int
) -> Iterator[Gateway]:
    providers: dict[str, Any] = {
        name: dict(FAST) for name in ("cerebras", "claude", "gemini", "groq", "deepseek", "xai")
    }
    providers["groq"]["max_body_mb"] = 0.001
    providers["openai"] = {**FAST, "max_conn": 1}  # one at a time: the next one queues
    providers["deepseek"]["default_model"] = "ds-default"
    providers["xai"].update(default_model="grok-forced", force_model=True)
    providers["mylocal"] = {"base_url": mock_session.url, "key_style": "bearer", **FAST}
    providers["deadend"] = {"base_url": f"http://127.0.0.1:{closed_port}", **FAST}
    env = {f"{name.upper()}_API_KEYS": ",".join(keys) for name, keys in KEYS.items()}
    env["ACCESS_PASSWORD"] = f"{PASSWORD}, {SECOND_PASSWORD}"
    env["AUTH_PASSWORD"] = ALIAS_PASSWORD
    gw = start_gateway(
        tmp_path_factory.mktemp("core"),
        mock_session,
        env=env,
        config={"providers": providers},
        password=PASSWORD,  # ACCESS_PASSWORD in `env` adds the second one
    )
    yield gw
    gw.stop()


@pytest.fixture
def client(core: Gateway, mock: MockUpstream) -> Iterator[httpx.Client]:
    """An authenticated client on the shared gateway; the mock is reset for the test."""
    with httpx.Client(base_url=core.url, headers=core.auth(), timeout=10) as c:
        yield c


def only_record(mock: MockUpstream) -> Recorded:
    recs = mock.records()
    assert len(recs) == 1, [(r.method, r.path) for r in recs]
    return recs[0]


def assert_no_secret_leak(rec: Recorded) -> None:
    """No gateway password anywhere in what the upstream received; no client cookie."""
    blob = (
        rec.path + "?" + rec.query + "\n" + "\n".join(f"{k}: {v}" for k, v in rec.headers.items())
    ).encode() + rec.body
    for pw in PASSWORDS:
        assert pw.encode() not in blob
    assert "cookie" not in rec.headers


def assert_gateway_error(r: httpx.Response, status: int, anthropic: bool = False) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["access-control-allow-origin"] == "*"
    doc = r.json()
    if anthropic:
        assert doc["type"] == "error"
        assert set(doc["error"]) == {"type", "message"}
    else:
        assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["message"]
    return doc["error"]


def raw_request(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send bytes on a fresh connection and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    m = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                    if m and len(body) >= int(m.group(1)):
                        break
                    if not m and body.endswith(b"0\r\n\r\n"):  # end of a chunked body
                        break
        except (TimeoutError, ConnectionResetError):
            pass
    return out


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_every_method_passes_with_identical_body(
    client: httpx.Client, mock: MockUpstream, method: str
) -> None:
    body = b"" if method == "GET" else bytes(range(256)) + b'{"not": json at all'
    r = client.request(
        method,
        "/cerebras/v1/echo/thing",
        params={"x": "1", "y": "two", "z": ""},
        content=body,
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["method"] == method
    rec = only_record(mock)
    assert (rec.method, rec.path, rec.query) == (method, "/v1/echo/thing", "x=1&y=two&z=")
    assert rec.body == body
    assert rec.headers["content-type"] == "application/octet-stream"
    assert rec.headers["authorization"] in {f"Bearer {k}" for k in KEYS["cerebras"]}


def test_head_request_passes(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.head("/cerebras/v1/models")
    assert r.status_code == 200
    assert r.content == b""
    assert only_record(mock).method == "HEAD"


def test_query_kept_and_key_param_stripped(core: Gateway, mock: MockUpstream) -> None:
    # the password as ?key= (Gemini style) authenticates and never reaches the upstream
    r = httpx.get(f"{core.url}/cerebras/v1/models?alt=sse&key={PASSWORD}&b=1&keyring=1&key")
    assert r.status_code == 200, r.text
    rec = only_record(mock)
    assert rec.query == "alt=sse&b=1&keyring=1"
    assert rec.key == KEYS["cerebras"][0] or rec.key == KEYS["cerebras"][1]
    assert_no_secret_leak(rec)


def test_percent_encoded_path_is_forwarded_as_sent(
    client: httpx.Client, mock: MockUpstream
) -> None:
    # `%3F` must stay part of the path (decoded it would start a query); `%20` must not become
    # a raw space in the upstream request line.
    r = client.get("/cerebras/v1/files/a%3Fb%20c?x=1")
    assert r.status_code == 200, r.text
    rec = only_record(mock)
    assert (rec.path, rec.query) == ("/v1/files/a?b c", "x=1")


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/cerebras", CHAT),
        ("/cerebras/", CHAT),
        ("/claude", "/v1/messages"),
        ("/claude/", "/v1/messages"),
        ("/gemini", "/v1beta/openai/chat/completions"),
        ("/mylocal/", CHAT),
    ],
)
def test_provider_root_goes_to_chat_path(
    client: httpx.Client, mock: MockUpstream, path: str, upstream: str
) -> None:
    r = client.post(path, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert only_record(mock).path == upstream


def test_v1_goes_to_default_provider(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.post("/v1/chat/completions", json={"model": "llama3.1-8b", "messages": []})
    assert r.status_code == 200
    assert r.headers["x-keygate-provider"] == "cerebras"
    rec = only_record(mock)
    assert rec.path == "/v1/chat/completions"
    assert rec.key in KEYS["cerebras"]


def test_v1_models_is_the_merged_list(client: httpx.Client, mock: MockUpstream) -> None:
    """SPEC §10: the default provider's models plain, every other provider's with its prefix."""
    r = client.get("/v1/models")
    assert r.status_code == 200
    ids = [m["id"] for m in r.json()["data"]]
    assert "mock-model" in ids
    assert {f"{p}/mock-model" for p in KEYS if p not in ("cerebras", "deadend")} <= set(ids)
    assert not any(i.startswith("deadend/") for i in ids)  # unreachable: nothing to list
    assert r.headers["x-keygate-provider"] == "keygate"
    all_keys = {k for keys in KEYS.values() for k in keys}
    assert all(rec.path.endswith("models") and rec.key in all_keys for rec in mock.records())


def test_round_robin_over_keys(client: httpx.Client, mock: MockUpstream) -> None:
    for _ in range(4):
        assert client.get("/cerebras/v1/models").status_code == 200
    keys = [r.key for r in mock.records()]
    assert sorted(keys) == sorted(KEYS["cerebras"] * 2)
    assert keys[0] != keys[1] and keys[1] != keys[2]


def test_gemini_openai_path_rewrite_and_bearer(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.post("/gemini/v1/chat/completions", json={"model": "gemini-2.0-flash"})
    assert r.status_code == 200, r.text
    rec = only_record(mock)
    assert rec.path == "/v1beta/openai/chat/completions"
    assert rec.headers["authorization"] == f"Bearer {KEYS['gemini'][0]}"
    assert "x-goog-api-key" not in rec.headers
    mock.reset()
    # the OpenAI-compatible path written out in full is not rewritten twice
    assert client.get("/gemini/v1beta/openai/models").status_code == 200
    rec = only_record(mock)
    assert rec.path == "/v1beta/openai/models"
    assert rec.headers["authorization"] == f"Bearer {KEYS['gemini'][0]}"


def test_gemini_native_path_uses_x_goog_api_key(core: Gateway, mock: MockUpstream) -> None:
    # a Google SDK sends its key (here: the gateway password) as x-goog-api-key
    body = b'{"contents":[{"parts":[{"text":"hi"}]}]}'
    r = httpx.post(
        f"{core.url}/gemini/v1beta/models/gemini-2.0-flash:generateContent?alt=sse",
        content=body,
        headers={"x-goog-api-key": PASSWORD, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    rec = only_record(mock)
    assert rec.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert rec.query == "alt=sse"
    assert rec.headers["x-goog-api-key"] == KEYS["gemini"][0]
    assert "authorization" not in rec.headers
    assert rec.body == body
    assert_no_secret_leak(rec)


def test_header_hygiene(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.post(
        "/cerebras/v1/chat/completions",
        content=b'{"model":"m","messages":[]}',
        headers={
            "content-type": "application/json",
            "cookie": "session=client-secret",
            "accept-encoding": "gzip, br",
            "x-forwarded-for": "10.1.2.3",
            "proxy-authorization": "Basic abc",
            "x-custom-trace": "keep-me",
            "user-agent": "my-client/1.0",
            "connection": "keep-alive, x-hop",
            "x-hop": "hop-only",
        },
    )
    assert r.status_code == 200, r.text
    rec = only_record(mock)
    h = rec.headers
    assert h["accept-encoding"] == "identity"
    assert h["authorization"] in {f"Bearer {k}" for k in KEYS["cerebras"]}
    assert h["x-custom-trace"] == "keep-me"
    assert h["user-agent"] == "my-client/1.0"
    for dropped in ("cookie", "x-forwarded-for", "proxy-authorization", "x-hop", "x-api-key"):
        assert dropped not in h, dropped
    assert_no_secret_leak(rec)


def test_expect_not_forwarded_and_utf8_header_values(core: Gateway, mock: MockUpstream) -> None:
    body = b'{"model":"m","messages":[]}'
    req = (
        b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {PASSWORD}\r\n".encode()
        + "X-Title: Überset 翻译\r\n".encode()
        + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        s.sendall(req)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    rec = only_record(mock)
    assert rec.body == body
    assert "expect" not in rec.headers  # the gateway has the body already
    assert rec.headers["x-title"] == "Überset 翻译"  # the client's bytes, not re-encoded


def test_a_bare_client_gets_keygate_agent_and_json_type(core: Gateway, mock: MockUpstream) -> None:
    """A client that names neither an agent nor a type (a raw socket): the upstream sees
    keygate's agent and JSON, not the HTTP library's agent or application/octet-stream; a
    body-less request gets no Content-Type at all."""
    body = b'{"model":"m","messages":[]}'
    head = b"Host: x\r\n" + f"Authorization: Bearer {PASSWORD}\r\n".encode()
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        s.sendall(b"POST /cerebras/v1/chat/completions HTTP/1.1\r\n" + head)
        s.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    rec = only_record(mock)
    assert rec.headers["user-agent"] == f"keygate/{keygate.__version__}"
    assert rec.headers["content-type"] == "application/json"
    assert "aiohttp" not in str(rec.headers).lower()
    mock.reset()
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        s.sendall(b"GET /cerebras/v1/models HTTP/1.1\r\n" + head + b"\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    rec = only_record(mock)
    assert "content-type" not in rec.headers
    assert rec.headers["user-agent"] == f"keygate/{keygate.__version__}"


def test_claude_key_style(core: Gateway, mock: MockUpstream) -> None:
    body = b'{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    r = httpx.post(
        f"{core.url}/claude/v1/messages",
        content=body,
        headers={"x-api-key": PASSWORD, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"
    rec = only_record(mock)
    assert rec.headers["x-api-key"] == KEYS["claude"][0]
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in rec.headers
    assert rec.body == body
    assert_no_secret_leak(rec)
    mock.reset()
    # the client's own anthropic-version is kept, not duplicated
    r = httpx.post(
        f"{core.url}/claude/v1/messages",
        content=body,
        headers={"authorization": f"Bearer {PASSWORD}", "anthropic-version": "2099-01-01"},
    )
    assert r.status_code == 200
    assert only_record(mock).headers["anthropic-version"] == "2099-01-01"


def test_custom_provider_from_config(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.post("/mylocal/v1/chat/completions", json={"model": "llama", "messages": []})
    assert r.status_code == 200, r.text
    rec = only_record(mock)
    assert rec.headers["authorization"] == f"Bearer {KEYS['mylocal'][0]}"


# ----------------------------------------------------------------------------- model fill


def test_default_model_filled_only_when_missing(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.post("/deepseek/v1/chat/completions", content=b'{"messages": []}')
    assert r.status_code == 200, r.text
    assert orjson.loads(only_record(mock).body) == {"messages": [], "model": "ds-default"}
    assert r.json()["model"] == "ds-default"
    mock.reset()
    named = b'{ "model" : "deepseek-chat",\n  "messages": [ ] }'
    assert client.post("/deepseek/v1/chat/completions", content=named).status_code == 200
    assert only_record(mock).body == named  # byte for byte
    mock.reset()
    # not a model-bearing path: untouched
    other = b'{"purpose": "batch"}'
    assert client.post("/deepseek/v1/files", content=other).status_code == 200
    assert only_record(mock).body == other
    mock.reset()
    # not JSON: the upstream judges it, the gateway passes it as sent
    assert client.post("/deepseek/v1/chat/completions", content=b"{oops").status_code == 400
    assert only_record(mock).body == b"{oops"


def test_force_model(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.post("/xai/v1/chat/completions", json={"model": "grok-other", "messages": []})
    assert r.status_code == 200, r.text
    assert orjson.loads(only_record(mock).body) == {"model": "grok-forced", "messages": []}
    mock.reset()
    already = b'{"model":  "grok-forced", "messages":[]}'
    assert client.post("/xai/v1/chat/completions", content=already).status_code == 200
    assert only_record(mock).body == already


def test_no_model_fill_without_default(client: httpx.Client, mock: MockUpstream) -> None:
    body = b'{"messages":[{"role":"user","content":"hi"}]}'
    assert client.post("/cerebras/v1/chat/completions", content=body).status_code == 200
    assert only_record(mock).body == body


# ----------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"authorization": f"Bearer {PASSWORD}"}, ""),
        ({"authorization": f"bearer {SECOND_PASSWORD}"}, ""),
        ({"x-api-key": PASSWORD}, ""),
        ({"x-goog-api-key": SECOND_PASSWORD}, ""),
        ({}, f"?key={PASSWORD}"),
        ({"authorization": f"Bearer {ALIAS_PASSWORD}"}, ""),
        ({}, "?key=third%20pass"),
    ],
    ids=["bearer", "bearer-2nd", "x-api-key", "x-goog-api-key", "query", "alias", "alias-query"],
)
def test_auth_accepted(
    core: Gateway, mock: MockUpstream, headers: dict[str, str], query: str
) -> None:
    r = httpx.get(f"{core.url}/cerebras/v1/models{query}", headers=headers)
    assert r.status_code == 200, r.text
    assert_no_secret_leak(only_record(mock))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {PASSWORD}"},
        {"x-api-key": PASSWORD + "x"},
        {"authorization": "Bearer third"},  # half of "third pass" is not a password
        {"authorization": "Bearer"},
    ],
    ids=["none", "wrong", "basic", "longer", "half", "empty"],
)
def test_auth_rejected(core: Gateway, mock: MockUpstream, headers: dict[str, str]) -> None:
    r = httpx.post(f"{core.url}/cerebras/v1/chat/completions", json={}, headers=headers)
    err = assert_gateway_error(r, 401)
    assert err["type"] == "authentication_error"
    assert err["code"] == "invalid_api_key"
    r = httpx.post(f"{core.url}/claude/v1/messages", json={}, headers=headers)
    assert assert_gateway_error(r, 401, anthropic=True)["type"] == "authentication_error"
    assert mock.records() == []


def test_unknown_provider_needs_auth_first(core: Gateway, mock: MockUpstream) -> None:
    assert_gateway_error(httpx.get(f"{core.url}/nosuch/v1/models"), 401)
    assert_gateway_error(httpx.get(f"{core.url}/cerebras-x/v1/models"), 401)
    r = httpx.get(f"{core.url}/nosuch/v1/models", headers=core.auth())
    assert assert_gateway_error(r, 404)["code"] == "not_found"
    assert mock.records() == []


def test_proxy_open_without_password(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": KEYS["cerebras"][0]}, password=None)
    r = httpx.post(f"{gw.url}/cerebras/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 200, r.text
    # an SDK sends some api_key anyway: it is not forwarded
    r = httpx.get(f"{gw.url}/cerebras/v1/models", headers={"authorization": "Bearer whatever"})
    assert r.status_code == 200
    assert mock.records()[-1].headers["authorization"] == f"Bearer {KEYS['cerebras'][0]}"
    assert_gateway_error(httpx.get(f"{gw.url}/nosuch/x"), 404)
    log = gw.log()
    assert re.search(r"WARNING.*proxy auth is OFF", log), log
    assert "proxy auth    on" not in log


def test_banner_with_password(core: Gateway) -> None:
    log = core.log()
    assert "proxy auth    on (3 passwords)" in log
    assert "proxy auth is OFF" not in log
    assert re.search(r"cerebras\s+2 keys", log)
    assert re.search(r"mylocal\s+1 key   rps=", log)  # singular, the columns still aligned
    assert not re.search(r"\b1 keys\b", log)


# ----------------------------------------------------------------------------- CORS


def test_cors_preflight(core: Gateway, mock: MockUpstream) -> None:
    r = httpx.options(
        f"{core.url}/cerebras/v1/chat/completions",
        headers={
            "origin": "chrome-extension://abc",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-api-key",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} <= methods
    allowed = r.headers["access-control-allow-headers"].lower()
    assert allowed == "*" or {"authorization", "content-type", "x-api-key"} <= {
        h.strip() for h in allowed.split(",")
    }
    assert mock.records() == []


def test_cors_on_normal_responses(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.get("/cerebras/v1/models", headers={"origin": "https://example.com"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    # an upstream's own CORS header is kept, not doubled
    mock.set_behavior(headers={"Access-Control-Allow-Origin": "https://only.me"})
    r = client.get("/cerebras/v1/models")
    assert r.headers.get_list("access-control-allow-origin") == ["https://only.me"]


# ----------------------------------------------------------------------------- headers/body


def test_gzip_body_passes_byte_identical(client: httpx.Client, mock: MockUpstream) -> None:
    doc = {"object": "list", "data": [{"id": f"model-{i}"} for i in range(200)]}
    compressed = gzip.compress(orjson.dumps(doc), mtime=0)
    mock.set_behavior(body=compressed, headers={"Content-Encoding": "gzip", "X-Up": "yes"})
    with client.stream("GET", "/cerebras/v1/models") as r:
        raw = b"".join(r.iter_raw())
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["x-up"] == "yes"
    assert int(r.headers["content-length"]) == len(compressed)
    assert raw == compressed  # byte for byte what the upstream sent
    assert orjson.loads(gzip.decompress(raw)) == doc
    assert client.get("/cerebras/v1/models").json() == doc  # a client decodes it as usual
    assert mock.records()[0].headers["accept-encoding"] == "identity"


def test_gzip_from_mock_knob_decodes(client: httpx.Client, mock: MockUpstream) -> None:
    mock.set_behavior(content_encoding="gzip")
    r = client.post("/cerebras/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.json()["choices"][0]["message"]["content"] == "Hello from mock"


def test_upstream_error_relayed_as_is(client: httpx.Client, mock: MockUpstream) -> None:
    mock.set_behavior(status=400, body=b'{"error":{"message":"bad thing"}}')
    r = client.post("/cerebras/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 400
    assert r.json() == {"error": {"message": "bad thing"}}


def test_huge_upstream_error_body_keeps_length_consistent(
    client: httpx.Client, mock: MockUpstream, core: Gateway
) -> None:
    mock.set_behavior(status=500, body=b"x" * (2 << 20))
    r = client.get("/cerebras/v1/models")  # httpx fails on a short body
    assert r.status_code == 500
    assert int(r.headers["content-length"]) == len(r.content) > 0
    assert httpx.get(f"{core.url}/healthz").status_code == 200
    assert core.proc.poll() is None


# ----------------------------------------------------------------------------- streaming


def stream_body() -> dict[str, Any]:
    return {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def test_stream_chunks_arrive_spaced(client: httpx.Client, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=2, chunk_interval_s=0.3)
    arrivals: list[tuple[float, bytes]] = []
    start = time.monotonic()
    with client.stream("POST", "/cerebras/v1/chat/completions", json=stream_body()) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic() - start, chunk))
    text = b"".join(c for _, c in arrivals)
    events = [e for e in text.split(b"\n\n") if e]
    assert len(events) == 5 and events[-1] == b"data: [DONE]"  # role, 2 contents, final, DONE
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first < 0.25, arrivals  # the first event did not wait for the rest
    assert last >= 1.1, arrivals  # 4 gaps of 0.3 s
    # at least one piece arrived in each 0.3 s window: they came as they were sent
    times = [t for t, _ in arrivals]
    assert len({int((t - first) / 0.25) for t in times}) >= 4, arrivals


def test_client_disconnect_cancels_upstream(core: Gateway, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=50, chunk_interval_s=0.1)
    body = orjson.dumps(stream_body())
    req = (
        b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {PASSWORD}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        s.sendall(req)
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        eventually(lambda: len(mock.records()) == 1, 2, "the request reached the upstream")
        assert mock.records()[0].ended is None  # still streaming
    closed = time.monotonic()
    eventually(lambda: mock.records()[0].ended is not None, 2, "the upstream stream was hung up on")
    took = time.monotonic() - closed
    rec = mock.records()[0]
    assert rec.disconnected and not rec.completed
    assert took < 1.0, took
    eventually(lambda: mock.inflight == 0, 1, "the upstream has no request left in flight")


def test_client_disconnect_while_waiting_for_upstream(core: Gateway, mock: MockUpstream) -> None:
    mock.set_behavior(delay_s=0.8)
    body = b'{"model":"m","messages":[]}'
    req = (
        b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {PASSWORD}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        s.sendall(req)
        eventually(lambda: len(mock.records()) == 1, 2, "the request reached the upstream")
    closed = time.monotonic()
    eventually(
        lambda: mock.records()[0].ended is not None, 2, "the upstream request was hung up on"
    )
    took = time.monotonic() - closed
    assert took < 0.5, took  # well before the upstream's 0.8 s answer
    assert mock.records()[0].disconnected


def test_queued_request_is_never_sent_after_client_leaves(
    core: Gateway, mock: MockUpstream
) -> None:
    mock.set_behavior(delay_s=0.6)
    url = f"{core.url}/openai/v1/chat/completions"
    first: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: first.append(httpx.post(url, json={"model": "a"}, headers=core.auth()))
    )
    worker.start()
    eventually(lambda: len(mock.records()) == 1, 2, "the first request holds openai's only slot")
    body = b'{"model":"queued"}'
    req = (
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {PASSWORD}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        s.sendall(req)
        eventually(
            lambda: admission(core, "openai")["queued"] == 1,
            2,
            "the second request waits in openai's queue",
        )
    assert first == []  # it left while the first still held the slot
    worker.join(5)
    assert first[0].status_code == 200
    # the queue place and the slot were given back
    eventually(lambda: idle(core, "openai"), 2, "openai has nothing in flight or queued")
    assert [orjson.loads(r.body)["model"] for r in mock.records()] == ["a"]
    # A request still queued would take the freed slot ahead of this one (first come, first
    # served) and reach the upstream before it.
    mock.set_behavior()
    r = httpx.post(url, json={"model": "c"}, headers=core.auth(), timeout=5)
    assert r.status_code == 200
    assert [orjson.loads(r.body)["model"] for r in mock.records()] == ["a", "c"]


def test_hanging_upstream_gives_504(client: httpx.Client, mock: MockUpstream) -> None:
    mock.set_behavior(hang=True)
    start = time.monotonic()
    r = client.post("/cerebras/v1/chat/completions", json={"model": "m", "messages": []})
    took = time.monotonic() - start
    err = assert_gateway_error(r, 504)
    assert err["type"] == "timeout_error"
    assert 0.9 <= took < 1.8, took  # timeout_first_byte_s: 1, retries: 0
    r = client.post("/claude/v1/messages", json={"model": "m", "messages": []})
    assert assert_gateway_error(r, 504, anthropic=True)["type"] == "timeout_error"
    # the gateway hung up on the upstream
    assert len(mock.records()) == 2  # both reached it (an empty list would pass below)
    eventually(
        lambda: all(rec.ended is not None for rec in mock.records()),
        1,
        "every upstream request was hung up on",
    )
    assert all(rec.disconnected for rec in mock.records())


def test_silent_stream_is_cut(client: httpx.Client, mock: MockUpstream) -> None:
    mock.set_behavior(chunks=3, chunk_interval_s=2.5)  # timeout_idle_s: 1
    got = b""
    start = time.monotonic()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/cerebras/v1/chat/completions", json=stream_body()) as r,
    ):
        assert r.status_code == 200
        for chunk in r.iter_raw():
            got += chunk
    took = time.monotonic() - start
    assert got.startswith(b"data: ")  # the first event came through
    assert b"[DONE]" not in got
    assert 0.9 <= took < 2.0, took
    eventually(lambda: mock.records()[0].ended is not None, 1, "the upstream stream ended")
    assert mock.records()[0].disconnected


def test_reset_mid_stream(client: httpx.Client, mock: MockUpstream, core: Gateway) -> None:
    mock.push(reset_after_chunks=1, chunks=5)
    got = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/cerebras/v1/chat/completions", json=stream_body()) as r,
    ):
        assert r.status_code == 200
        for chunk in r.iter_raw():
            got += chunk
    assert got.startswith(b"data: ") and b"[DONE]" not in got
    # the gateway is fine and serves the next request in full
    r = client.post("/cerebras/v1/chat/completions", json=stream_body())
    assert r.status_code == 200
    assert r.text.endswith("data: [DONE]\n\n")
    assert core.proc.poll() is None


def test_streaming_anthropic_events_pass(client: httpx.Client, mock: MockUpstream) -> None:
    body = {"model": "c", "max_tokens": 5, "stream": True, "messages": []}
    r = client.post("/claude/v1/messages", json=body)
    assert r.status_code == 200
    events = re.findall(r"^event: (\S+)$", r.text, re.MULTILINE)
    assert events[0] == "message_start" and events[-1] == "message_stop"


# ----------------------------------------------------------------------------- limits, errors


def test_body_limit_with_content_length(client: httpx.Client, mock: MockUpstream) -> None:
    big = b'{"model":"m","pad":"' + b"a" * BODY_LIMIT + b'"}'
    err = assert_gateway_error(client.post("/groq/v1/chat/completions", content=big), 413)
    assert err["code"] == "request_too_large"
    # the limit is the provider's: cerebras takes the same body, and sends it upstream whole
    r = client.post("/cerebras/v1/echo", content=big)
    assert r.status_code == 200 and r.json()["body_len"] == len(big), r.text
    small = b'{"model":"m","pad":"' + b"a" * (BODY_LIMIT - 100) + b'"}'
    assert client.post("/groq/v1/echo", content=small).status_code == 200
    assert [(r.path, r.body) for r in mock.records()] == [("/v1/echo", big), ("/v1/echo", small)]


def test_body_limit_chunked(client: httpx.Client, mock: MockUpstream, core: Gateway) -> None:
    def pieces() -> Iterator[bytes]:
        for _ in range(8):
            yield b"a" * 400

    r = client.post("/groq/v1/echo", content=pieces())  # no length: chunked
    assert_gateway_error(r, 413)
    assert mock.records() == []
    # under the limit a chunked body passes whole, as sent
    r = client.post("/groq/v1/echo", content=iter([b"x" * 500, b"y" * 500]))
    assert r.status_code == 200
    assert only_record(mock).body == b"x" * 500 + b"y" * 500
    mock.reset()
    # the whole body in a single chunk, in one write
    body = b"b" * (BODY_LIMIT + 10)
    req = (
        b"POST /groq/v1/echo HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {PASSWORD}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(body)
        + body
        + b"\r\n0\r\n\r\n"
    )
    assert raw_request(core.port, req).startswith(b"HTTP/1.1 413")
    assert mock.records() == []


def test_claude_413_in_anthropic_shape(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = gateway_factory(
        env={"CLAUDE_API_KEYS": KEYS["claude"][0]},
        config={"providers": {"claude": {"max_body_mb": 0.001}}},
    )
    r = httpx.post(f"{gw.url}/claude/v1/messages", content=b"x" * 2000, headers=gw.auth())
    assert assert_gateway_error(r, 413, anthropic=True)["type"] == "request_too_large"
    assert mock.records() == []


def test_anthropic_client_413_on_a_translating_provider(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    """Refused before the adapter is chosen (the body is read first), still in the Anthropic
    shape the client reads: on the prefix route and on the unified endpoint."""
    gw = gateway_factory(
        env={"CEREBRAS_API_KEYS": KEYS["cerebras"][0]},
        config={"providers": {"cerebras": {"max_body_mb": 0.001}}},
    )
    for path in ("/cerebras/v1/messages", "/v1/messages"):
        r = httpx.post(f"{gw.url}{path}", content=b"x" * 2000, headers=gw.auth())
        assert assert_gateway_error(r, 413, anthropic=True)["type"] == "request_too_large"
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=b"x" * 2000, headers=gw.auth())
    assert assert_gateway_error(r, 413)["code"] == "request_too_large"
    assert mock.records() == []


def test_provider_without_keys_gives_503(client: httpx.Client, mock: MockUpstream) -> None:
    r = client.post("/nvidia/v1/chat/completions", json={"model": "m"})
    assert assert_gateway_error(r, 503)["code"] == "no_keys"
    assert mock.records() == []


def test_closed_upstream_port_gives_502(client: httpx.Client) -> None:
    start = time.monotonic()
    r = client.post("/deadend/v1/chat/completions", json={"model": "m"})
    assert assert_gateway_error(r, 502)["code"] == "upstream_unreachable"
    assert time.monotonic() - start < 1.0


def test_garbage_requests_never_kill_the_gateway(core: Gateway, mock: MockUpstream) -> None:
    auth = f"Authorization: Bearer {PASSWORD}\r\n".encode()
    cases = {
        "bad json": b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{not json",
        "huge header": b"GET /cerebras/v1/models HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"X-Big: "
        + b"h" * 200_000
        + b"\r\n\r\n",
        "bad content-length": b"POST /cerebras/v1/echo HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Length: abc\r\n\r\nxyz",
        "negative content-length": b"POST /cerebras/v1/echo HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Length: -5\r\n\r\n",
        "http/1.0": b"GET /cerebras/v1/models HTTP/1.0\r\n" + auth + b"\r\n",
        "no version": b"GET /cerebras/v1/models\r\n\r\n",
        "binary": bytes(range(256)) * 4,
        "bad method": b"BR\x00EW / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    answers = {name: raw_request(core.port, data) for name, data in cases.items()}
    status = {name: a[:12] for name, a in answers.items()}
    assert status["bad json"] == b"HTTP/1.1 400"  # the upstream's verdict, relayed
    assert re.match(rb"HTTP/1\.[01] 200", answers["http/1.0"]), answers["http/1.0"][:200]
    assert b'"mock-model"' in answers["http/1.0"]
    assert status["bad content-length"] == b"HTTP/1.1 400"
    assert status["negative content-length"] == b"HTTP/1.1 400"
    # the gateway's own refusal, in JSON, and nothing of it goes upstream
    refusals = {"huge header": 431, "binary": 400, "bad method": 400, "no version": 401}
    for name, code in refusals.items():
        head, _, body = answers[name].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % code), (name, answers[name][:300])
        assert b'{"error":{"message":' in body, (name, answers[name][:300])
    assert sorted(r.path for r in mock.records()) == ["/v1/chat/completions", "/v1/models"]
    assert core.proc.poll() is None
    r = httpx.get(f"{core.url}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


# ----------------------------------------------------------------------------- health, root, log


def test_healthz(core: Gateway) -> None:
    r = httpx.get(f"{core.url}/healthz", headers=core.admin())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["status"] == "ok"
    assert doc["version"]
    assert doc["providers"]["cerebras"]["keys"] == 2
    assert "nvidia" not in doc["providers"]  # no keys
    assert not any(k in r.text for k in ALL_KEYS)


def test_root_redirects_to_admin(core: Gateway) -> None:
    r = httpx.get(f"{core.url}/")
    assert r.status_code in (301, 302, 307, 308)
    assert r.headers["location"] == "/admin/"


def test_root_disguised_as_nginx(gateway_factory: Any) -> None:
    gw = gateway_factory(env={"KEYGATE_DISGUISE": "nginx"})
    r = httpx.get(f"{gw.url}/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>Welcome to nginx!</title>" in r.text
    assert "keygate" not in r.text.lower()


def test_log_line_per_request_without_secrets(
    client: httpx.Client, mock: MockUpstream, core: Gateway
) -> None:
    assert client.post("/cerebras/v1/chat/completions", json={"model": "logged"}).status_code == 200
    assert client.get("/claude/v1/models", params={"key": PASSWORD}).status_code == 200
    assert httpx.get(f"{core.url}/cerebras/v1/models?key=wrong-pass").status_code == 401

    def lines() -> list[str]:
        return core.log().splitlines()

    pattern = re.compile(
        r"cerebras POST /cerebras/v1/chat/completions key=(sk-c…(1111|2222))#\d+ "
        r"status=200 upstream=200 ms=\d+\.\d retries=0"
    )
    claude = re.compile(r"claude GET /claude/v1/models key=sk-a…3333#\d+ status=200 .*retries=0")
    refused = re.compile(r"GET /cerebras/v1/models key=- status=401")
    # lines are written in batches, at most 0.1 s after the request
    for wanted in (pattern, claude, refused):
        eventually(
            lambda w=wanted: any(w.search(line) for line in lines()),
            2,
            f"a log line matching {wanted.pattern!r}",
        )
    log = core.log()
    for secret in (*ALL_KEYS, *PASSWORDS, "wrong-pass"):
        assert secret not in log, secret
