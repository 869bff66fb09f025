"""The quota pieces one at a time: the token estimate, the day boundary in a zone, the budget
headers each dialect reads, the settings' checks, and the mock's per-key limits."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from keygate.config.quotaday import day_window, parse_day_reset
from keygate.config.settings import ConfigError, load_settings
from keygate.control.quota import Announced, Ticket, estimate_parsed, estimate_tokens
from keygate.dialects import DIALECTS
from keygate.testing.mock_upstream import MockUpstream

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("body", "completion"),
    [
        (b'{"model":"m","max_tokens": 300,"messages":[]}', 300),
        (b'{"max_completion_tokens":77,"model":"m"}', 77),
        (b'{"generationConfig":{"maxOutputTokens":1000}}', 1000),
        (b'{"model":"m","messages":[{"role":"user","content":"max_tokens"}]}', 1024),
        (b'{"model":"m","max_tokens":null}', 1024),
        # a small max_tokens nested in a tool's schema before the real one cannot shrink it
        (b'{"tools":[{"parameters":{"max_tokens":1}}],"max_tokens":100000}', 100000),
    ],
)
def test_estimate_is_prompt_bytes_over_4_plus_the_completion(body: bytes, completion: int) -> None:
    assert estimate_tokens(body, 1024) == len(body) // 4 + completion


def test_a_parsed_estimate_reads_the_top_level_allowance_only() -> None:
    nested = {"tools": [{"parameters": {"max_tokens": 1}}], "messages": []}
    assert estimate_parsed({**nested, "max_tokens": 900}, 40, 7) == 10 + 900
    assert estimate_parsed(nested, 40, 7) == 10 + 7  # none at the top: the default
    assert estimate_parsed({"max_output_tokens": 5}, 0, 7) == 5  # the Responses API's name
    assert estimate_parsed({"generationConfig": {"maxOutputTokens": 9}}, 0, 7) == 9
    for odd in (True, -1, "100", float("nan"), None):
        assert estimate_parsed({"max_tokens": odd}, 0, 7) == 7
    assert estimate_parsed({"max_tokens": 10**30}, 0, 7) == 10**9  # bounded


def test_ticket_estimates_once_and_only_when_asked() -> None:
    usage = [0, 0]
    t = Ticket(b'{"max_tokens":10}', 5, usage)
    assert t._tokens == -1, "nothing computed until a quota needs it"
    assert t.tokens == 4 + 10
    assert t.actual(14) == 14, "no usage reported: the estimate stands"
    usage[:] = [3, 4]
    assert t.actual(14) == 7
    assert Ticket(None, 5, usage).tokens == 0


def test_day_window_in_a_zone_follows_its_wall_clock() -> None:
    start, end = day_window(NOW, "00:00 UTC")
    assert start <= NOW < end and end - start == 86400 and start % 86400 == 0
    la = ZoneInfo("America/Los_Angeles")
    # the day of the spring DST switch is 23 hours long
    switch = datetime(2026, 3, 8, 12, 0, tzinfo=la).timestamp()
    start, end = day_window(switch, "00:00 America/Los_Angeles")
    assert end - start == 23 * 3600
    assert datetime.fromtimestamp(start, la).hour == 0
    start, end = day_window(switch, "06:30 America/Los_Angeles")
    local = datetime.fromtimestamp(start, la)
    assert (local.hour, local.minute) == (6, 30) and start <= switch < end


@pytest.mark.parametrize("bad", ["24:00 UTC", "7 UTC", "00:00 Mars/Base", "", "noon"])
def test_day_reset_must_be_a_time_and_a_zone(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_day_reset(bad)
    assert parse_day_reset("6:05") == (6, 5, "UTC")


def test_openai_and_groq_budget_headers() -> None:
    h = {
        "x-ratelimit-limit-requests": "14400",
        "x-ratelimit-remaining-requests": "14370",
        "x-ratelimit-reset-requests": "2m59.56s",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5997",
        "x-ratelimit-reset-tokens": "30ms",
    }
    found = {b.window: b for b in DIALECTS["bearer"].read_budget(h) or []}
    assert set(found) == {"rph", "tpm"}, "the window follows from how far away the reset is"
    assert found["rph"].remaining == 14370 and found["rph"].limit == 14400
    assert found["tpm"].remaining == 5997 and found["tpm"].limit == 6000


def test_cerebras_budget_headers_name_their_windows() -> None:
    h = {
        "x-ratelimit-limit-requests-day": "14400",
        "x-ratelimit-remaining-requests-day": "14399",
        "x-ratelimit-reset-requests-day": "33011.382867",
        "x-ratelimit-limit-tokens-minute": "60000",
        "x-ratelimit-remaining-tokens-minute": "59500",
        "x-ratelimit-reset-tokens-minute": "11.38",
    }
    found = {b.window: b for b in DIALECTS["bearer"].read_budget(h) or []}
    assert found["rpd"].remaining == 14399 and found["tpm"].remaining == 59500


def test_anthropic_budget_headers() -> None:
    soon = _iso(time.time() + 30)
    h = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": soon,
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": soon,
        "anthropic-ratelimit-output-tokens-remaining": "7000",
        "anthropic-ratelimit-output-tokens-reset": soon,
    }
    found = DIALECTS["x-api-key"].read_budget(h) or []
    assert [b.window[0] for b in found] == ["r", "t"]
    assert found[1].remaining == 7000, "the lowest token budget bounds the total"


def test_no_budget_headers_nothing_announced() -> None:
    for dialect in DIALECTS.values():
        assert dialect.read_budget({"content-type": "application/json"}) is None
    past = {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "junk"}
    assert DIALECTS["bearer"].read_budget(past) is None
    assert isinstance(Announced("rpm", 1, NOW), Announced)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("quota_day_reset", "25:00 UTC", "HH:MM"),
        ("quota_day_reset", "00:00 Nowhere/City", "unknown time zone"),
        ("key_rpd", -1, "≥ 0"),
        ("key_tpm", "lots", "whole number"),
    ],
)
def test_quota_settings_are_checked(
    tmp_path: Path, field: str, value: object, problem: str
) -> None:
    cfg = tmp_path / "k.yaml"
    cfg.write_text(f"providers:\n  groq:\n    {field}: {value!r}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, config_path=cfg)
    assert f"providers.groq.{field}" in str(info.value) and problem in str(info.value)


def test_quota_settings_from_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "k.yaml"
    cfg.write_text(
        "providers:\n  gemini:\n    key_rpd: 1500\n    key_tpm: 1000000\n"
        '    quota_day_reset: "0:00 America/Los_Angeles"\n',
        encoding="utf-8",
    )
    g = load_settings(env={}, config_path=cfg).providers["gemini"]
    assert (g.key_rpd, g.key_tpm, g.quota_day_reset) == (
        1500,
        1_000_000,
        "00:00 America/Los_Angeles",
    )


def test_mock_enforces_and_announces_per_key_limits() -> None:
    with MockUpstream() as mock:
        mock.set_limit(requests=2, window_s=60, style="cerebras")
        url = f"{mock.url}/v1/chat/completions"
        body = {"model": "m", "messages": []}

        def post(key: str) -> httpx.Response:
            return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"})

        first = post("sk-one")
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining-requests-day"] == "1"
        assert first.headers["x-ratelimit-limit-requests-day"] == "2"
        assert post("sk-one").status_code == 200
        third = post("sk-one")
        assert third.status_code == 429 and float(third.headers["retry-after"]) > 0
        assert post("sk-two").status_code == 200, "each key its own window"
        assert mock.refused == 1 and mock.limit_of("sk-one").refused == 1


# --- hostile budget headers (issue 32, items 7 and 8) ----------------------------------------

HUGE = "9" * 7000  # more digits than int() takes from a string
HOSTILE = [
    "inf",
    "-inf",
    "Infinity",
    "nan",
    "-5",
    "+5",
    "1e308",
    "1E3",
    "0x10",
    "1_000",
    "",
    "\u0661\u0662",  # Arabic-Indic digits: float() and int() take them
    "\uff11\uff12",  # fullwidth digits
    "12ms",
    "1h2m3s",
    HUGE + "-",
]


def _id(value: object) -> str | None:
    """Short test ids for long values."""
    return f"{len(value)}-chars" if isinstance(value, str) and len(value) > 40 else None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, ZoneInfo("UTC")).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12", 12),
        ("012", 12),
        ("12.9", 12),
        ("0", 0),
        (HUGE, "max"),
        ("99999999999999999999", "max"),
        *((v, None) for v in HOSTILE),
    ],
    ids=_id,
)
def test_announced_counts_are_bounded_non_negative_integers(value: str, expected: object) -> None:
    from keygate.dialects.budget import COUNT_MAX

    want = COUNT_MAX if expected == "max" else expected
    openai_style = {
        "x-ratelimit-remaining-requests": value,
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-requests": value,
    }
    anthropic_style = {
        "anthropic-ratelimit-requests-remaining": value,
        "anthropic-ratelimit-requests-reset": _iso(time.time() + 30),
        "anthropic-ratelimit-requests-limit": value,
    }
    for dialect, headers in (("bearer", openai_style), ("x-api-key", anthropic_style)):
        found = DIALECTS[dialect].read_budget(headers)
        if want is None:
            assert found is None, (dialect, value)
            continue
        assert found is not None, (dialect, value)
        (b,) = found
        assert (b.window, b.remaining, b.limit) == ("rpm", want, want), (dialect, value)
    # a limit that is no count is no limit; the remaining count still stands
    (b,) = DIALECTS["bearer"].read_budget({**openai_style, "x-ratelimit-remaining-requests": "7"})
    assert b.remaining == 7 and b.limit == (0 if want is None else want)


@pytest.mark.parametrize(
    ("value", "window", "seconds"),
    [
        ("30s", "rpm", 30.0),
        ("12ms", "rpm", 0.012),
        ("1.5", "rpm", 1.5),
        ("6m0s", "rph", 360.0),
        ("2m59.56s", "rph", 179.56),
        ("1h2m3s", "rpd", 3723.0),
        ("33011.382867", "rpd", 33011.382867),
        ("24h", "rpd", 86400.0),
        *(
            (v, None, None)
            for v in (
                "inf",
                "-inf",
                "nan",
                "-5",
                "0",
                "1e308",
                "1e308s",
                "0x10",
                "",
                "\u0661\u0662",
                "\u0661\u0662s",
                HUGE,
                HUGE + "s",
                "1hfoo",
                "s",
                "1m-1s",
                "26h",
                "86400000",
                "1e3s",
            )
        ),
    ],
    ids=_id,
)
def test_announced_resets_parse_strictly_and_stay_within_a_day(
    value: str, window: str | None, seconds: float | None
) -> None:
    h = {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": value}
    found = DIALECTS["bearer"].read_budget(h)
    if window is None:
        assert found is None, value
        return
    assert found is not None, value
    (b,) = found
    assert b.window == window
    assert b.reset_at - time.time() == pytest.approx(seconds, abs=1.0)


def test_a_named_window_resets_within_its_length() -> None:
    far = {
        "x-ratelimit-remaining-tokens-minute": "0",
        "x-ratelimit-reset-tokens-minute": "3600",  # a minute's window cannot reset in an hour
        "x-ratelimit-remaining-requests-day": "0",
        "x-ratelimit-reset-requests-day": "200000",  # nor a day's in two days
    }
    assert DIALECTS["bearer"].read_budget(far) is None
    near = {
        **far,
        "x-ratelimit-reset-tokens-minute": "59.5",
        "x-ratelimit-reset-requests-day": "86000",
    }
    found = {b.window for b in DIALECTS["bearer"].read_budget(near) or []}
    assert found == {"rpd", "tpm"}
    now = time.time()
    anthropic_far = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "9999-12-31T23:59:59Z",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": _iso(now + 3 * 86400),
    }
    assert DIALECTS["x-api-key"].read_budget(anthropic_far) is None


HINT_NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("headers", "after"),
    [
        ({"retry-after": "120"}, 120.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "1h2m3s"}, 3723.0),
        ({"retry-after": "12ms"}, 0.012),
        ({"retry-after": "Tue, 14 Nov 2023 22:14:20 GMT"}, 60.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"anthropic-ratelimit-requests-reset": "2023-11-14T22:13:30Z"}, 10.0),
        *(({"retry-after": v}, None) for v in HOSTILE if v not in ("12ms", "1h2m3s")),
        *(({"retry-after-ms": v}, None) for v in HOSTILE),
        ({"retry-after": HUGE}, None),
        ({"retry-after": "1e308s"}, None),
        ({"retry-after": "99999999999"}, None),
        ({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),  # years away
        ({"retry-after": "Mon, 01 Jan 0001 00:00:00 GMT"}, None),
        ({"retry-after": "Fri, 99 Foo 99999 99:99:99 GMT"}, None),
        ({"retry-after": "Tue, 14 Nov 2023 22:14:20 +9999"}, None),
        ({"retry-after-ms": HUGE}, None),
        ({"x-ratelimit-reset-requests": "1e308s"}, None),
        ({"x-ratelimit-reset-requests": "inf"}, None),
        ({"anthropic-ratelimit-requests-reset": "9999-12-31T23:59:59Z"}, None),
        ({"anthropic-ratelimit-requests-reset": "0001-01-01T00:00:00"}, None),
        ({"anthropic-ratelimit-requests-reset": "2023-11-14T22:13:30+99:00"}, None),
        ({"anthropic-ratelimit-requests-reset": HUGE}, None),
    ],
)
def test_reset_hints_are_bounded_or_ignored(headers: dict[str, str], after: float | None) -> None:
    from keygate.control.classify import classify, reset_hint

    hint = reset_hint(headers, HINT_NOW)
    if after is None:
        assert hint is None, headers
    else:
        assert hint == pytest.approx(HINT_NOW + after), headers
    verdict = classify(429, headers, b"", HINT_NOW)
    assert verdict.until == hint


def test_no_header_value_makes_a_parser_raise() -> None:
    """Random values from the characters numbers, durations and dates are made of: every reader
    answers (a bounded value or nothing) and never raises."""
    import math
    import random

    from keygate.control.classify import reset_hint

    rng = random.Random(32)
    alphabet = "0123456789.eE+-_xXinfaINFAhms:TZ ,GMTWed\u0661\uff12\u00a0"
    names = [
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-limit-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-remaining-requests-day",
        "x-ratelimit-reset-requests-day",
        "x-ratelimit-remaining-tokens-minute",
        "x-ratelimit-reset-tokens-minute",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
        "retry-after",
        "retry-after-ms",
    ]
    samples = [HUGE, "1" + "0" * 400, "9" * 20 + "." + "9" * 400]
    samples += ["".join(rng.choices(alphabet, k=rng.randint(0, 24))) for _ in range(3000)]
    from keygate.dialects.budget import COUNT_MAX

    for i, value in enumerate(samples):
        headers = {name: value if rng.random() < 0.7 else "5" for name in names}
        if i % 2:
            headers["x-ratelimit-reset-requests"] = "30s"
            headers["anthropic-ratelimit-requests-reset"] = _iso(time.time() + 30)
        now = time.time()
        for dialect in DIALECTS.values():
            for b in dialect.read_budget(headers) or []:
                assert 0 <= b.remaining <= COUNT_MAX and 0 <= b.limit <= COUNT_MAX
                assert now < b.reset_at <= now + 25 * 3600 + 5, (value, b)
            hint = dialect.reset_hint(headers, now)
            assert hint is None or (math.isfinite(hint) and abs(hint - now) <= 25 * 3600 + 5)
        hint = reset_hint(headers, now)
        assert hint is None or (math.isfinite(hint) and abs(hint - now) <= 25 * 3600 + 5)
