"""Each dialect's answers as tables: key header, routes, model list, error shape, reset hints."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from keygate.config.catalog import BUILTINS
from keygate.dialects import CREDENTIAL_HEADERS, DIALECTS, KEY_STYLES, dialect_for
from keygate.dialects.anthropic import ANTHROPIC, ANTHROPIC_VERSION
from keygate.dialects.gemini import GEMINI
from keygate.dialects.openai import OPENAI
from keygate.proxy.forward import request_headers

NOW = 1_800_000_000.0


def test_registry_names_every_key_style_once() -> None:
    assert KEY_STYLES == ("bearer", "x-api-key", "gemini")
    assert all(DIALECTS[d.key_style] is d for d in DIALECTS.values())
    assert {b.key_style for b in BUILTINS.values()} <= set(KEY_STYLES)
    assert dialect_for("x-api-key") is ANTHROPIC


@pytest.mark.parametrize(
    ("dialect", "client", "expected"),
    [
        (OPENAI, [], [("authorization", "Bearer sk-1")]),
        (ANTHROPIC, [], [("x-api-key", "sk-1"), ("anthropic-version", ANTHROPIC_VERSION)]),
        (ANTHROPIC, [(b"anthropic-version", b"2024-01-01")], [("x-api-key", "sk-1")]),
        (GEMINI, [], [("x-goog-api-key", "sk-1")]),
    ],
)
def test_key_goes_in_the_family_header(dialect, client, expected) -> None:
    out = request_headers(client, dialect, "sk-1")
    assert out[: len(client)] == [(n.decode(), v.decode()) for n, v in client]
    assert out[len(client) :] == [("accept-encoding", "identity"), *expected]


def test_client_credentials_of_every_family_are_dropped() -> None:
    assert {b"authorization", b"x-api-key", b"x-goog-api-key"} <= CREDENTIAL_HEADERS
    client = [(b"x-api-key", b"pw"), (b"x-goog-api-key", b"pw"), (b"authorization", b"Bearer pw")]
    assert request_headers(client, OPENAI, "sk-1") == [
        ("accept-encoding", "identity"),
        ("authorization", "Bearer sk-1"),
    ]


@pytest.mark.parametrize(
    ("dialect", "rest", "headers", "path", "wire"),
    [
        (OPENAI, "", [], "/v1/chat/completions", OPENAI),
        (ANTHROPIC, "/", [], "/v1/messages", ANTHROPIC),
        (GEMINI, "", [], "/v1beta/openai/chat/completions", OPENAI),
        (GEMINI, "/v1/models", [], "/v1beta/openai/models", OPENAI),
        (GEMINI, "/v1", [], "/v1beta/openai", OPENAI),
        (GEMINI, "/v1beta/openai/chat/completions", [], "/v1beta/openai/chat/completions", OPENAI),
        (
            GEMINI,
            "/v1beta/models/g:generateContent",
            [],
            "/v1beta/models/g:generateContent",
            GEMINI,
        ),
        (GEMINI, "/v1/models/g%3AgenerateContent", [], "/v1/models/g%3AgenerateContent", GEMINI),
        (GEMINI, "/v1/models", [(b"x-goog-api-key", b"k")], "/v1/models", GEMINI),
        (GEMINI, "/v1/chat/completions", [(b"x-goog-api-key", b"k")], None, OPENAI),
    ],
)
def test_route(dialect, rest, headers, path, wire) -> None:
    got_path, got_wire = dialect.route(rest, headers)
    assert got_path == (path or "/v1beta/openai/chat/completions")
    assert got_wire is wire


def test_model_list_request() -> None:
    assert OPENAI.models_request("https://x", "k") == (
        "https://x/v1/models",
        {"authorization": "Bearer k"},
    )
    assert ANTHROPIC.models_request("https://x", "k") == (
        "https://x/v1/models",
        {"x-api-key": "k", "anthropic-version": ANTHROPIC_VERSION},
    )
    assert GEMINI.models_request("https://x", "k") == (
        "https://x/v1beta/models",
        {"x-goog-api-key": "k"},
    )


def test_error_shapes() -> None:
    assert orjson.loads(OPENAI.error_body(429, "slow down", "rate_limited")) == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limited",
        }
    }
    assert orjson.loads(ANTHROPIC.error_body(503, "busy", "no_keys")) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "busy"},
    }
    assert orjson.loads(GEMINI.error_body(429, "slow down", None)) == {
        "error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}
    }
    assert orjson.loads(OPENAI.error_body(418, "teapot", None))["error"]["type"] == "api_error"


def test_each_family_reads_its_own_reset_hints() -> None:
    anthropic_reset = {"anthropic-ratelimit-requests-reset": "2027-01-15T08:00:05Z"}
    openai_reset = {"x-ratelimit-reset-requests": "6m0s"}
    at = datetime(2027, 1, 15, 8, 0, 5, tzinfo=UTC).timestamp()
    assert ANTHROPIC.reset_hint(anthropic_reset, NOW) == at
    assert ANTHROPIC.reset_hint(openai_reset, NOW) is None
    assert GEMINI.reset_hint(anthropic_reset, NOW) is None
    # behind a bearer provider may sit any family (aggregators, other gateways)
    assert OPENAI.reset_hint(openai_reset, NOW) == pytest.approx(NOW + 360)
    assert OPENAI.reset_hint(anthropic_reset, NOW) == at
    for dialect in DIALECTS.values():
        assert dialect.reset_hint({"retry-after-ms": "1500"}, NOW) == pytest.approx(NOW + 1.5)
        assert dialect.reset_hint({"retry-after": "2"}, NOW) == pytest.approx(NOW + 2)
        assert dialect.read_budget({}) is None


def test_usage_is_read_from_both_name_pairs() -> None:
    usage = [0, 0]
    OPENAI.scan_usage(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 7}}', usage)
    assert usage == [5, 7]
    ANTHROPIC.scan_usage(b'{"usage": {"input_tokens": 9, "output_tokens": 2}}', usage)
    assert usage == [9, 7]  # the largest seen of each


def gemini_chunk(text: str, usage: dict[str, int]) -> bytes:
    doc = {
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}],
        "usageMetadata": {
            **usage,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage["promptTokenCount"]}],
        },
        "modelVersion": "gemini-2.5-flash",
    }
    return b"data: " + orjson.dumps(doc) + b"\r\n\r\n"


def test_gemini_usage_metadata_is_read() -> None:
    # a whole answer as the API writes it (indented), thoughts counted as output
    whole = orjson.dumps(
        {
            "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": 8,
                "candidatesTokenCount": 17,
                "totalTokenCount": 40,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
                "thoughtsTokenCount": 15,
            },
            "modelVersion": "gemini-2.5-flash",
        },
        option=orjson.OPT_INDENT_2,
    )
    usage = [0, 0]
    GEMINI.scan_usage(whole, usage, True)
    assert usage == [8, 32]

    # only the total given: output = total - prompt; cached tokens are part of the prompt
    usage = [0, 0]
    GEMINI.scan_usage(
        b'{"usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 60, '
        b'"totalTokenCount": 130}}',
        usage,
        True,
    )
    assert usage == [100, 30]

    # a stream repeats the running totals in every chunk: the last counts, never the sum,
    # however the chunks arrive (one per read, or several in one)
    chunks = [
        gemini_chunk(
            t, {"promptTokenCount": 12, "candidatesTokenCount": n, "totalTokenCount": 12 + n}
        )
        for t, n in (("a", 3), ("b", 7), ("c", 11))
    ]
    for reads in (
        chunks,
        [b"".join(chunks)],
        [chunks[0] + chunks[1][:40], chunks[1][40:] + chunks[2]],
    ):
        usage = [0, 0]
        for read in reads:
            GEMINI.scan_usage(read, usage)
        assert usage == [12, 11], reads

    # the key quoted in a text part is a string, not the answer's usage
    quoted = gemini_chunk(
        'say "usageMetadata": {"promptTokenCount": 999}',
        {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6},
    )
    usage = [0, 0]
    GEMINI.scan_usage(quoted, usage)
    assert usage == [4, 2]

    # nothing else is read as Gemini usage, and Gemini's OpenAI-compatible paths use OPENAI's
    usage = [0, 0]
    GEMINI.scan_usage(b'{"usage": {"prompt_tokens": 5, "completion_tokens": 7}}', usage, True)
    assert usage == [0, 0]
    assert GEMINI.route("/v1/chat/completions", [])[1] is OPENAI


@pytest.mark.parametrize("digits", [13, 30, 5000])
def test_a_usage_count_no_answer_could_have_is_ignored(digits: int) -> None:
    """A hostile upstream's 13+ digit counts never reach the counters (they would break every
    sum and the admin API's JSON), nor raise (Python refuses to read 4,300+ digits)."""
    huge = b"9" * digits
    for answer in (
        b'{"usage":{"prompt_tokens":' + huge + b',"completion_tokens":7}}',
        b'{"usageMetadata":{"promptTokenCount":' + huge + b',"candidatesTokenCount":7}}',
    ):
        usage = [0, 0]
        OPENAI.scan_usage(answer, usage, True)
        GEMINI.scan_usage(answer, usage, True)
        assert usage[0] == 0 and usage[1] in (0, 7)
