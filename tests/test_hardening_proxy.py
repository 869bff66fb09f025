"""The proxy against a hostile or careless upstream and odd client input: provider keys never
come back to the client or the logs, the query and the path are decided once, browser and
hop-by-hop headers stay with their hop, and keygate's own errors say when retrying is futile."""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from harness import PASSWORD, Gateway, start_gateway, wait_log
from keygate.control.keypool import KeyEntry, mask
from keygate.proxy.redact import Redactor, StreamScrubber
from keygate.testing.mock_upstream import MockUpstream

CHAT = "/v1/chat/completions"
STATUSES = (400, 401, 403, 429, 500)
QUICK = {
    "rps": 0,
    "max_conn": 0,
    "retries": 2,
    "backoff_base_s": 0.01,
    "timeout_first_byte_s": 5,
    "timeout_idle_s": 5,
}


def _key(tag: str) -> str:
    return f"sk-{tag}-{secrets.token_hex(12)}"


# One provider per upstream behaviour, three keys each so that retries use other keys.
PROVIDERS = [f"e{s}" for s in STATUSES] + ["okay", "anth"]
KEYS = {name: [_key(f"{name}{i}") for i in range(3)] for name in PROVIDERS}
ALL_KEYS = [k for keys in KEYS.values() for k in keys]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mock_session: MockUpstream) -> Iterator[Gateway]:
    providers: dict[str, Any] = {
        name: {"base_url": mock_session.url, "key_style": "bearer", **QUICK} for name in KEYS
    }
    providers["anth"]["key_style"] = "x-api-key"
    providers["nokeys"] = {"base_url": mock_session.url, **QUICK}
    env = {f"{name.upper()}_API_KEYS": ",".join(keys) for name, keys in KEYS.items()}
    gw = start_gateway(
        tmp_path_factory.mktemp("hardening"), mock_session, env=env, config={"providers": providers}
    )
    yield gw
    gw.stop()


def raw_request(gw: Gateway, head: str, body: bytes = b"", timeout: float = 10) -> bytes:
    """Every byte the client gets (status line, headers, body), over a plain socket."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        request = head.replace("\n", "\r\n") + "\r\n"
        s.sendall(request.encode() + body)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def chat(gw: Gateway, provider: str, stream: bool = False, auth: str = "authorization") -> bytes:
    body = orjson.dumps(
        {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )
    path = "/v1/messages" if provider == "anth" else CHAT
    credential = f"Bearer {PASSWORD}" if auth == "authorization" else PASSWORD
    return raw_request(
        gw,
        f"POST /{provider}{path} HTTP/1.1\nHost: x\n{auth}: {credential}\n"
        f"content-type: application/json\ncontent-length: {len(body)}\nconnection: close\n",
        body,
    )


def assert_no_whole_key(blob: bytes, where: str) -> None:
    found = [k for k in ALL_KEYS if k.encode() in blob]
    assert not found, f"{where} carries whole pool keys {found}"


def body_of(answer: bytes) -> bytes:
    """The body, with chunked transfer framing taken off."""
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2 :]
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# ----------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("status", STATUSES)
def test_upstream_echoing_the_key_in_errors_is_masked(
    gw: Gateway, mock: MockUpstream, status: int
) -> None:
    mock.set_behavior(None, status=status, echo_key=True)
    answer = chat(gw, f"e{status}")
    assert status_of(answer) == status, answer[:300]
    sent = {r.key for r in mock.records()}
    assert len(mock.records()) >= 2  # retried on other keys, each answer echoing its key
    assert_no_whole_key(answer, f"the {status} answer")
    head, _, body = answer.partition(b"\r\n\r\n")
    # the key of the relayed (last) try, masked, in the body and the echo header
    assert any(mask(k).encode() in body for k in sent), body
    assert re.search(rb"x-echo-key: Bearer sk-\S+\xe2\x80\xa6", head), head
    length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert length == len(body)


def test_upstream_echoing_the_key_in_2xx_bodies_headers_and_streams(
    gw: Gateway, mock: MockUpstream
) -> None:
    mock.set_behavior(None, echo_key=True, chunk_interval_s=0.01)
    for provider in ("okay", "anth"):
        for stream in (False, True):
            auth = "x-api-key" if provider == "anth" else "authorization"
            answer = chat(gw, provider, stream=stream, auth=auth)
            assert status_of(answer) == 200, answer[:300]
            assert_no_whole_key(answer, f"{provider} stream={stream}")
            used = mock.records()[-1].key
            assert used is not None
            assert answer.count(mask(used).encode()) >= 2, answer  # header and body
            if stream:  # the key came split across two chunks
                body = body_of(answer)
                assert b"key in use: " + mask(used).encode() in body, body
                assert body.endswith((b"data: [DONE]\n\n", b'{"type":"message_stop"}\n\n'))
    # the mock's echo of the request headers (the injected Authorization among them)
    answer = raw_request(
        gw,
        f"GET /okay/v1/whatever HTTP/1.1\nHost: x\nauthorization: Bearer {PASSWORD}\n"
        "connection: close\n",
    )
    assert status_of(answer) == 200
    assert_no_whole_key(answer, "the echo answer")
    body = answer.partition(b"\r\n\r\n")[2]
    echoed = orjson.loads(body)["headers"]["authorization"]
    assert echoed == "Bearer " + mask(mock.records()[-1].key or "")


def test_no_key_in_log_requests_or_keys(gw: Gateway, mock: MockUpstream) -> None:
    mock.set_behavior(None, status=401, echo_key=True)
    chat(gw, "e401")
    mock.set_behavior(None, status=500, echo_key=True)
    chat(gw, "e500")
    with gw.client() as c:
        requests = c.get("/api/requests", headers=gw.admin(), params={"limit": 1000})
        stored = c.get("/api/keys", headers=gw.admin())
        live = c.get("/api/keys", headers=gw.admin(), params={"status": "invalid"})
    for r in (requests, stored, live):
        assert r.status_code == 200, r.text
        assert_no_whole_key(r.content, str(r.url))
    assert any(k["last_error"] for k in live.json()["keys"] if k["provider"] == "e401")
    wait_log(gw, r"e500 POST .* status=500")  # lines are batched
    assert_no_whole_key(gw.log_path.read_bytes(), "the gateway log")


def test_stream_scrubber_every_split_point() -> None:
    secret = b"sk-abcdefghijklmnop1234"
    masked = mask(secret.decode()).encode()
    text = b'data: {"x":"before ' + secret + b' after"}\n\n'
    for a in range(len(text) + 1):
        for b in range(a, len(text) + 1, 3):
            scrub = StreamScrubber(secret, masked)
            out = scrub.feed(text[:a]) + scrub.feed(text[a:b]) + scrub.feed(text[b:])
            out += scrub.flush()
            assert out == text.replace(secret, masked), (a, b)


def test_stream_scrubber_never_holds_back_a_normal_event() -> None:
    secret = b"sk-abcdefghijklmnop1234"
    scrub = StreamScrubber(secret, b"sk-a...1234")
    event = b'data: {"choices":[{"delta":{"content":"sk"}}]}\n\n'
    assert scrub.feed(event) == event
    assert scrub.feed(b"data: s") == b"data: "  # an `s` could start the key: it waits
    assert scrub.feed(b"tuff\n\n") == b"stuff\n\n"


def test_redactor_finds_any_pool_key_and_scales() -> None:
    entries = {i: KeyEntry(i, "p", f"sk-{i:08d}-{secrets.token_hex(10)}") for i in range(100_000)}
    entries[-1] = KeyEntry(-1, "p", "odd:key/with+chars==")
    red = Redactor()
    some = [entries[7].secret, entries[99_999].secret, entries[-1].secret]
    text = (
        f'{{"error":"bad key {some[0]}; also x_{some[1]}_y and {some[2]}"}}' + " filler" * 500
    ).encode()
    red.scrub(b"warm", entries)  # the table is built once, outside the timed part
    started = time.perf_counter()
    for _ in range(100):
        out = red.scrub(text, entries)
    per_call_ms = (time.perf_counter() - started) * 10
    for secret in some:
        assert secret.encode() not in out
        assert mask(secret).encode() in out
    assert per_call_ms < 5, per_call_ms


# ----------------------------------------------------------------------------- items 7, 11


def test_encoded_key_param_never_reaches_upstream(gw: Gateway, mock: MockUpstream) -> None:
    for query in (f"%6Bey={PASSWORD}&key=", f"k%65y={PASSWORD}&a=%2Fx", f"key={PASSWORD}&key=zz"):
        answer = raw_request(
            gw, f"GET /okay/v1/models?{query} HTTP/1.1\nHost: x\nconnection: close\n"
        )
        assert status_of(answer) == 200, (query, answer[:300])
        rec = mock.records()[-1]
        assert PASSWORD not in rec.query, query
        assert "key" not in rec.query.lower() and "%6b" not in rec.query.lower(), rec.query
    assert mock.records()[-2].query == "a=/x"  # the rest as sent


def test_bad_query_encoding_is_a_401_not_a_traceback(gw: Gateway, mock: MockUpstream) -> None:
    for query in ("key=%ff", "key=%", "%ff=1&key=%e9", "key=%C3%28"):
        answer = raw_request(
            gw, f"GET /okay/v1/models?{query} HTTP/1.1\nHost: x\nconnection: close\n"
        )
        assert status_of(answer) == 401, (query, answer[:300])
        assert b'"authentication_error"' in answer
    wait_log(gw, r"(?s)(key=- status=401.*){4}")
    assert "Traceback" not in gw.log()
    assert mock.records() == []


# ----------------------------------------------------------------------------- item 8


@pytest.mark.parametrize(
    ("path", "anthropic"),
    [
        ("/okay/../x", False),
        ("/okay/v1/../../x", False),
        ("/okay/v1/%2e%2e/%2E%2E/x", False),
        ("/okay/%2e%2E/x", False),
        ("/anth/v1/../../v1/messages", True),
        ("/v1/../../x", False),
    ],
)
def test_path_escaping_the_base_is_refused(
    gw: Gateway, mock: MockUpstream, path: str, anthropic: bool
) -> None:
    # httpx would resolve dot segments itself: a raw request line says exactly what we mean
    answer = raw_request(
        gw, f"GET {path} HTTP/1.1\nHost: x\nauthorization: Bearer {PASSWORD}\nconnection: close\n"
    )
    assert status_of(answer) == 400, answer
    assert b"x-should-retry: false" in answer
    doc = orjson.loads(body_of(answer))
    if anthropic:
        assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    else:
        assert doc["error"]["code"] == "invalid_path"
    assert mock.records() == []


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/okay/v1/./models/../chat/completions", "/v1/chat/completions"),
        ("/okay/v1/a%2Fb/%2e/c%20d/x/..", "/v1/a%2Fb/c%20d/"),
        ("/okay/v1/files/v1.2.json", "/v1/files/v1.2.json"),
        ("/okay/v1/x/%2e%2e/y", "/v1/y"),
    ],
)
def test_dot_segments_resolved_rest_as_sent(
    gw: Gateway, mock: MockUpstream, path: str, upstream: str
) -> None:
    # httpx would resolve dot segments itself: a raw request line says exactly what we mean
    answer = raw_request(
        gw, f"GET {path} HTTP/1.1\nHost: x\nauthorization: Bearer {PASSWORD}\nconnection: close\n"
    )
    assert status_of(answer) == 200, answer[:300]
    assert mock.records()[-1].raw_path == upstream


# ----------------------------------------------------------------------------- item 10


def _sent_headers(gw: Gateway, mock: MockUpstream, extra: str) -> dict[str, str]:
    answer = raw_request(
        gw,
        f"GET /okay/v1/models HTTP/1.1\nHost: x\nAuthorization: Bearer {PASSWORD}\n"
        f"X-Stays: yes\n{extra}Connection: close\n",
    )
    assert status_of(answer) == 200, answer[:300]
    sent = mock.records()[-1].headers
    assert sent["x-stays"] == "yes"
    return sent


def test_headers_named_in_connection_stay_here(gw: Gateway, mock: MockUpstream) -> None:
    sent = _sent_headers(
        gw,
        mock,
        "Connection: keep-alive\nConnection: X-Hop-One ,x-HOP-two\nconnection: X-Hop-Three\n"
        "X-Hop-One: 1\nX-HOP-TWO: 2\nx-hop-three: 3\n",
    )
    assert [name for name in sent if name.startswith("x-hop")] == []


def test_browser_headers_stay_here(gw: Gateway, mock: MockUpstream) -> None:
    sent = _sent_headers(
        gw,
        mock,
        "Origin: https://page.example\nReferer: https://page.example/app\n"
        'Sec-Fetch-Mode: cors\nSec-Fetch-Site: cross-site\nsec-ch-ua: "Chromium"\n'
        'Sec-CH-UA-Platform: "Linux"\nCookie: a=1\nCookie2: $Version=1\n',
    )
    browser = ("origin", "referer", "cookie", "cookie2")
    assert [name for name in sent if name.startswith("sec-") or name in browser] == []


def test_expose_headers_on_proxied_answers_and_gateway_errors(
    gw: Gateway, mock: MockUpstream
) -> None:
    mock.set_behavior(None, status=429, headers={"retry-after": "0", "x-ratelimit-limit": "9"})
    r = httpx.get(gw.url + "/okay/v1/models", headers=gw.auth())
    assert r.status_code == 429
    assert r.headers["access-control-expose-headers"] == "*"
    mock.set_behavior(None)
    r = httpx.get(gw.url + "/okay/v1/models", headers=gw.auth())
    assert r.status_code == 200
    assert r.headers["access-control-expose-headers"] == "*"
    r = httpx.get(gw.url + "/okay/v1/models")
    assert r.status_code == 401
    assert r.headers["access-control-expose-headers"] == "*"


# ----------------------------------------------------------------------------- item 18


@pytest.mark.parametrize(
    ("path", "auth", "status"),
    [
        ("/nokeys/v1/models", True, 503),
        ("/okay/v1/models", False, 401),
        ("/nosuch/v1/models", True, 404),
        ("/okay/v1/models?key=%ff", False, 401),
    ],
)
def test_unfixable_gateway_errors_say_do_not_retry(
    gw: Gateway, path: str, auth: bool, status: int
) -> None:
    r = httpx.get(gw.url + path, headers=gw.auth() if auth else {})
    assert r.status_code == status
    assert r.headers["x-should-retry"] == "false"


def test_openai_sdk_does_not_retry_no_keys(gw: Gateway, mock: MockUpstream) -> None:
    def served() -> int:
        r = httpx.get(f"{gw.url}/api/requests", headers=gw.admin(), params={"provider": "nokeys"})
        return len(r.json()["requests"])

    before = served()
    client = openai.OpenAI(base_url=f"{gw.url}/nokeys/v1", api_key=PASSWORD, timeout=10)
    assert client.max_retries == 2  # the SDK's default: it would send three requests
    with pytest.raises(openai.APIStatusError) as caught:
        client.models.list()
    assert caught.value.status_code == 503
    assert served() - before == 1
