"""What a fuzz run with a hostile upstream and a hostile client found (one test per finding):
an upstream that compresses what it was asked to send plain, and a client that closes its
connection under pipelined requests."""

from __future__ import annotations

import socket
from typing import Any

import anthropic
import openai
import pytest

from harness import PASSWORD, eventually, idle, wait_for
from keygate.testing.mock_upstream import MockUpstream

ENV = {"CEREBRAS_API_KEYS": "csk-hostile-peers-0001", "CLAUDE_API_KEYS": "sk-ant-hostile-0001"}
NO_WAIT = {name: {"rps": 0, "max_conn": 0, "retries": 0} for name in ("cerebras", "claude")}
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(env=ENV, config={"providers": NO_WAIT})


@pytest.mark.parametrize("stream", [False, True])
def test_a_compressed_answer_is_inflated_before_it_is_translated(
    gw: Any, mock: MockUpstream, stream: bool
) -> None:
    """keygate asks for `identity`; an upstream that sends gzip anyway is still translated
    (it was a 502 'could not be translated')."""
    mock.set_behavior(content_encoding="gzip", text="plain words")
    claude = anthropic.Anthropic(base_url=f"{gw.url}/cerebras", api_key=PASSWORD, max_retries=0)
    if stream:
        with claude.messages.stream(model="m", max_tokens=16, messages=MESSAGES) as events:
            text = "".join(events.text_stream)
    else:
        text = claude.messages.create(model="m", max_tokens=16, messages=MESSAGES).content[0].text  # type: ignore[union-attr]
    assert text == "plain words"
    oai = openai.OpenAI(base_url=f"{gw.url}/claude/v1", api_key=PASSWORD, max_retries=0)
    answer = oai.chat.completions.create(model="claude-sonnet-4", messages=MESSAGES)
    assert answer.choices[0].message.content == "plain words"
    assert mock.count() == 2


def test_pipelined_requests_of_a_client_that_left_leave_no_traceback(
    gw: Any, mock: MockUpstream
) -> None:
    """Two requests in one write, then the connection closed: the second answer has nowhere
    to go, which is no error of keygate's (uvloop refused the write and the log showed an
    'Exception in ASGI application' per connection)."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    request = (
        b"POST /cerebras/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + PASSWORD.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    ) + body
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(request * 2)
            sock.shutdown(socket.SHUT_WR)
    # each connection's first request went upstream and came back, its answer written or not
    wait_for(lambda: mock.count() >= 5 and idle(gw, "cerebras"), 10, "the requests ended")
    # and an answer keygate makes itself (an unknown provider's 404)
    mark = len(gw.log())
    refused = request.replace(b"/cerebras/", b"/nosuch/")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(refused * 2)
            sock.shutdown(socket.SHUT_WR)
    eventually(lambda: gw.log()[mark:].count("status=404") >= 5, 10, "the refusals logged")
    assert "Traceback" not in gw.log(), gw.log()[-3000:]
