"""The quota pieces one at a time: the token estimate, the day boundary in a zone, the budget
headers each dialect reads, the settings' checks, and the mock's per-key limits."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from keygate.control.quota import Announced, Ticket, estimate_tokens
from keygate.dialects import DIALECTS
from keygate.quotaday import day_window, parse_day_reset
from keygate.settings import ConfigError, load_settings
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
    ],
)
def test_estimate_is_prompt_bytes_over_4_plus_the_completion(body: bytes, completion: int) -> None:
    assert estimate_tokens(body, 1024) == len(body) // 4 + completion


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
    h = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:30Z",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "2099-01-01T00:00:30Z",
        "anthropic-ratelimit-output-tokens-remaining": "7000",
        "anthropic-ratelimit-output-tokens-reset": "2099-01-01T00:00:30Z",
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
