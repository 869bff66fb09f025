"""Error rules (SPEC §15): per provider, by status and error text, checked before the built-in
judgement of §5. A real keygate, the mock upstream answering the matching status and text;
each case asserts what the key became, what reached the mock on which key, and what the client
got. The checks on a rule (config file, admin API) run in process."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import CHAT, Gateway, eventually, start_gateway, wait_for_store, with_store
from keygate.config.catalog import BUILTINS
from keygate.config.error_rules import ErrorRules, parse_rules
from keygate.config.overrides import apply_stored
from keygate.config.settings import ConfigError, load_settings
from keygate.masking import mask
from keygate.testing.mock_upstream import MockUpstream
from servers import redis_bin, start_redis

_turns = itertools.count()
GEMINI_KEYS = ("AIza-rules-gemini-aaaa0001", "AIza-rules-gemini-bbbb0002")
# one provider per case, so the key health one case leaves never meets another case
RULES: dict[str, list[dict[str, Any]]] = {
    "r-invalid": [{"status": 400, "match": "KEY_GONE", "action": "invalid"}],
    "r-exhausted": [{"status": 429, "match": "(?i)daily", "action": "exhausted"}],
    "r-cool": [{"status": 400, "match": "slow down", "action": "cool", "cool_s": 600}],
    "r-disable": [{"status": 403, "match": "(?i)suspended|banned", "action": "disable"}],
    "r-provider": [{"status": [403, 418], "action": "provider"}],
    "r-pass": [{"status": 429, "match": "context_length", "action": "pass"}],
    "r-none": [],
    "r-runtime": [],
}


def keys_of(name: str) -> tuple[str, str]:
    return f"sk-{name}-aaaa0001", f"sk-{name}-bbbb0002"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mock_session: MockUpstream) -> Iterator[Gateway]:
    """One gateway for the module: a provider per case, every one pointed at the mock."""
    providers: dict[str, Any] = {
        name: {
            "base_url": mock_session.url,
            "keys": list(keys_of(name)),
            "rps": 0,
            "max_conn": 0,
            "retries": 2,
            "backoff_base_s": 0.01,
            **({"error_rules": rules} if rules else {}),
        }
        for name, rules in RULES.items()
    }
    providers["gemini"] = {"rps": 0, "max_conn": 0, "retries": 2, "backoff_base_s": 0.01}
    gateway = start_gateway(
        tmp_path_factory.mktemp("rules"),
        mock_session,
        env={"GEMINI_API_KEYS": ",".join(GEMINI_KEYS)},
        config={"providers": providers},
    )
    yield gateway
    gateway.stop()


def post(gw: Gateway, provider: str) -> httpx.Response:
    """A chat request, each one a new conversation (affinity never pins one to a key)."""
    body = {**CHAT, "messages": [{"role": "user", "content": f"hi {next(_turns)}"}]}
    return httpx.post(
        f"{gw.url}/{provider}/v1/chat/completions", json=body, headers=gw.auth(), timeout=30
    )


def key_row(gw: Gateway, provider: str, secret: str) -> dict[str, Any]:
    r = gw.api("GET", "/api/keys", params={"provider": provider})
    assert r.status_code == 200, r.text
    return next(k for k in r.json()["keys"] if k["masked"] == mask(secret))


def status_of(gw: Gateway, provider: str, secret: str) -> str:
    return str(key_row(gw, provider, secret)["status"])


def tries(mock: MockUpstream) -> list[tuple[str | None, int]]:
    """(key, status) of every request the mock answered, in order."""
    return [(r.key, r.status) for r in mock.records()]


def refused_then_retried(
    gw: Gateway, mock: MockUpstream, provider: str, status: int, body: Any
) -> tuple[str, str]:
    """The first key answers `status` with `body` to every request; three requests. Each must
    get 200, the refused key be tried once and the request retried at once on the other."""
    bad, good = keys_of(provider)
    mock.set_behavior(bad, status=status, body=body)
    assert [post(gw, provider).status_code for _ in range(3)] == [200] * 3
    seen = tries(mock)
    assert seen.count((bad, status)) == 1, seen
    after = seen[seen.index((bad, status)) + 1]
    assert after == (good, 200), f"the refused request went on to the other key: {seen}"
    assert len(seen) == 4, f"3 requests and 1 retry, nothing more: {seen}"
    return bad, good


def error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "error", "code": None}}


# --- each action ------------------------------------------------------------------------------


def test_invalid_sets_the_key_invalid_and_retries_on_another(
    gw: Gateway, mock: MockUpstream
) -> None:
    # built in, a 400 is the client's error: relayed, the key untouched
    bad, _ = refused_then_retried(gw, mock, "r-invalid", 400, error("KEY_GONE: revoked"))
    row = key_row(gw, "r-invalid", bad)
    assert row["status"] == "invalid"
    assert row["last_error"] == "400 invalid by error_rules[0]"


def test_exhausted_sets_the_key_exhausted(gw: Gateway, mock: MockUpstream) -> None:
    # built in, a plain 429 only cools the key
    bad, _ = refused_then_retried(gw, mock, "r-exhausted", 429, error("Daily limit reached"))
    assert status_of(gw, "r-exhausted", bad) == "exhausted"


def test_cool_cools_the_key_for_cool_s(gw: Gateway, mock: MockUpstream) -> None:
    start = time.time()
    bad, _ = refused_then_retried(gw, mock, "r-cool", 400, error("please slow down"))
    row = key_row(gw, "r-cool", bad)
    assert row["status"] == "cooling"
    assert start + 600 <= row["cooldown_until"] <= time.time() + 600


def test_disable_disables_the_key_until_a_person_enables_it(
    gw: Gateway, mock: MockUpstream
) -> None:
    # built in, a 403 makes the key invalid (re-checked on schedule); disabled is never re-checked
    bad, _ = refused_then_retried(gw, mock, "r-disable", 403, error("account SUSPENDED"))
    row = key_row(gw, "r-disable", bad)
    assert row["status"] == "disabled"

    async def stored(store: Any) -> bool:
        return [k.status for k in await store.get_keys([row["id"]])] == ["disabled"]

    wait_for_store(gw, stored, 10, "the store keeps it disabled (a restart too)")
    mock.set_behavior(bad)  # the upstream would take it again: a re-check must not bring it back
    test = gw.api("POST", f"/api/keys/{row['id']}/test")
    assert test.status_code == 200, test.text
    assert status_of(gw, "r-disable", bad) == "disabled"
    back = gw.api("PATCH", f"/api/keys/{row['id']}", json={"status": "active"})
    assert back.json()["status"] == "active"
    mock.reset()
    assert [post(gw, "r-disable").status_code for _ in range(2)] == [200, 200]
    assert bad in {key for key, _ in tries(mock)}


def test_provider_retries_elsewhere_and_leaves_the_key_alone(
    gw: Gateway, mock: MockUpstream
) -> None:
    bad, good = keys_of("r-provider")
    # built in, a 403 makes the key invalid; the rule says the provider is to blame
    mock.set_behavior(bad, status=403, body=error("edge refused"))
    assert [post(gw, "r-provider").status_code for _ in range(4)] == [200] * 4
    seen = tries(mock)
    assert seen.count((bad, 403)) >= 2, f"the key stays in the rotation: {seen}"
    assert seen.count((good, 200)) == 4, seen
    for i, tried in enumerate(seen):
        if tried == (bad, 403):
            assert seen[i + 1] == (good, 200), seen
    assert status_of(gw, "r-provider", bad) == "active"


def test_pass_relays_the_answer_without_a_retry(gw: Gateway, mock: MockUpstream) -> None:
    bad, good = keys_of("r-pass")
    body = error("context_length exceeded: 200000 tokens")
    # built in, a 429 cools the key and the request is retried on another
    mock.set_behavior(bad, status=429, body=body)
    answers = [post(gw, "r-pass") for _ in range(4)]
    assert sorted(r.status_code for r in answers) == [200, 200, 429, 429]
    assert next(r for r in answers if r.status_code == 429).json() == body
    assert sorted(tries(mock), key=str) == sorted(
        [(bad, 429), (bad, 429), (good, 200), (good, 200)], key=str
    ), "one try per request: no retry, and the key was used again"
    assert status_of(gw, "r-pass", bad) == "active"


# --- no rules, rules in order, rules at run time ----------------------------------------------


def test_a_provider_without_rules_keeps_the_built_in_judgement(
    gw: Gateway, mock: MockUpstream
) -> None:
    bad, good = keys_of("r-none")
    mock.push(bad, status=400, body=error("KEY_GONE"))
    answers = [post(gw, "r-none").status_code for _ in range(2)]
    assert sorted(answers) == [200, 400], "a 400 is relayed, not retried"
    assert sorted(tries(mock), key=str) == sorted([(bad, 400), (good, 200)], key=str)
    assert status_of(gw, "r-none", bad) == "active"
    mock.reset()
    mock.set_behavior(bad, status=401)
    assert [post(gw, "r-none").status_code for _ in range(3)] == [200] * 3
    assert status_of(gw, "r-none", bad) == "invalid"


def test_rules_set_at_run_time_apply_at_once_first_match_wins(
    gw: Gateway, mock: MockUpstream
) -> None:
    bad, good = keys_of("r-runtime")
    rules = [
        {"status": 400, "match": "context_length", "action": "pass"},
        {"status": [400, 422], "action": "cool", "cool_s": 120},
    ]
    r = gw.api("PATCH", "/api/providers/r-runtime", json={"error_rules": rules})
    assert r.status_code == 200, r.text
    assert r.json()["error_rules"] == rules
    listed = gw.api("GET", "/api/providers").json()["providers"]
    assert next(p for p in listed if p["name"] == "r-runtime")["error_rules"] == rules
    # kept in the store, where a restart and every other instance read them
    stored = with_store(gw, lambda store: store.get_provider_overrides())
    assert stored["r-runtime"]["error_rules"] == rules

    mock.set_behavior(bad, status=400, body=error("context_length exceeded"))
    assert sorted(post(gw, "r-runtime").status_code for _ in range(2)) == [200, 400]
    assert status_of(gw, "r-runtime", bad) == "active", "the first rule matched: pass"
    mock.reset()
    mock.set_behavior(bad, status=400, body=error("anything else"))
    assert [post(gw, "r-runtime").status_code for _ in range(2)] == [200, 200]
    assert status_of(gw, "r-runtime", bad) == "cooling", "the second rule: cool"
    assert (bad, 400) in tries(mock) and tries(mock)[-1] == (good, 200)

    # an empty list clears them (the built-in judgement alone, as for r-none)
    assert (
        gw.api("PATCH", "/api/providers/r-runtime", json={"error_rules": []}).json()["error_rules"]
        == []
    )


@pytest.mark.parametrize(
    ("rules", "field", "problem"),
    [
        ("nope", "error_rules", "must be a list of rules, got str"),
        (
            [{"status": 400, "action": "invalid"}, {"status": 400, "action": "nuke"}],
            "error_rules[1].action",
            "must be one of invalid, exhausted, cool, disable, provider,",
        ),
        (
            [{"status": 400, "match": "(", "action": "invalid"}],
            "error_rules[0].match",
            "bad regular expression: missing ), unterminated subpattern",
        ),
        ([{"status": 600, "action": "pass"}], "error_rules[0].status", "must be an HTTP status"),
        ([{"status": 429, "action": "cool"}], "error_rules[0].cool_s", "required for action cool"),
        ([{"status": 400, "action": "pass", "why": 1}], "error_rules[0].why", "unknown field"),
    ],
)
def test_patch_refuses_a_bad_rule_naming_the_field(
    gw: Gateway, rules: Any, field: str, problem: str
) -> None:
    before = gw.api("GET", "/api/providers").json()["providers"]
    r = gw.api("PATCH", "/api/providers/r-invalid", json={"error_rules": rules})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field
    assert err["message"].startswith(f"{field}: {problem}"), err["message"]
    after = gw.api("GET", "/api/providers").json()["providers"]
    assert [p["error_rules"] for p in after] == [p["error_rules"] for p in before]


# --- Gemini's shipped rules ------------------------------------------------------------------


def google_error(code: int, status: str, message: str, reason: str = "") -> dict[str, Any]:
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}]
    return {
        "error": {
            "code": code,
            "message": message,
            "status": status,
            **({"details": details} if reason else {}),
        }
    }


def test_gemini_ships_rules_for_its_bad_key_and_its_overload(
    gw: Gateway, mock: MockUpstream
) -> None:
    shown = next(
        p for p in gw.api("GET", "/api/providers").json()["providers"] if p["name"] == "gemini"
    )
    assert shown["error_rules"] == [
        {"status": 400, "match": "API_KEY_INVALID", "action": "invalid"},
        {"status": 503, "action": "provider"},
    ]
    bad, good = GEMINI_KEYS
    # Gemini's answer to an expired key: a 400 whose message says nothing of validity
    mock.set_behavior(
        bad,
        status=400,
        body=google_error(
            400, "INVALID_ARGUMENT", "API key expired. Please renew the API key.", "API_KEY_INVALID"
        ),
    )
    assert [post(gw, "gemini").status_code for _ in range(3)] == [200] * 3
    assert status_of(gw, "gemini", bad) == "invalid"
    assert tries(mock).count((bad, 400)) == 1
    # an overload is the provider's: retried (on the one key left), the key stays active
    mock.reset()
    mock.set_behavior(good, status=503, body=google_error(503, "UNAVAILABLE", "overloaded"))
    assert post(gw, "gemini").status_code == 503
    assert tries(mock) == [(good, 503)] * 3, "1 try + 2 retries"
    assert status_of(gw, "gemini", good) == "active"


# --- the checks, in process ---------------------------------------------------------------------


def load(tmp_path: Path, rules: Any) -> Any:
    path = tmp_path / "keygate.yaml"
    path.write_text(yaml.safe_dump({"providers": {"gemini": {"error_rules": rules}}}))
    return load_settings({}, path)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"status": 400}, "error_rules: must be a list of rules, got dict"),
        (["x"], "error_rules[0]: must be a mapping of status, match, action, got str"),
        (
            [
                {"status": 400, "action": "pass"},
                {"status": 403, "action": "pass"},
                {"status": 400, "match": "[unclosed", "action": "invalid"},
            ],
            "error_rules[2].match: bad regular expression: unterminated character set at"
            " position 0",
        ),
        (
            [{"status": 400, "action": "ban"}],
            "error_rules[0].action: must be one of invalid, exhausted, cool, disable, provider,"
            " pass, got 'ban'",
        ),
        (
            [{"status": 99, "action": "pass"}],
            "error_rules[0].status: must be an HTTP status from 100 to 599 (or a list of them),"
            " got 99",
        ),
        (
            [{"status": [400, 600], "action": "pass"}],
            "error_rules[0].status: must be an HTTP status from 100 to 599 (or a list of them),"
            " got 600",
        ),
        (
            [{"status": "400", "action": "pass"}],
            "error_rules[0].status: must be an HTTP status from 100 to 599 (or a list of them),"
            " got '400'",
        ),
        (
            [{"status": [], "action": "pass"}],
            "error_rules[0].status: an empty list matches nothing",
        ),
        ([{"action": "pass"}], "error_rules[0].status: required"),
        (
            [{"status": 400}],
            "error_rules[0].action: required (one of invalid, exhausted, cool,"
            " disable, provider, pass)",
        ),
        (
            [{"status": 429, "action": "cool"}],
            "error_rules[0].cool_s: required for action cool (seconds)",
        ),
        (
            [{"status": 429, "action": "cool", "cool_s": 0}],
            "error_rules[0].cool_s: must be seconds > 0 and ≤ 2592000, got 0",
        ),
        (
            [{"status": 429, "action": "cool", "cool_s": "1h"}],
            "error_rules[0].cool_s: must be seconds > 0 and ≤ 2592000, got '1h'",
        ),
        (
            [{"status": 429, "action": "invalid", "cool_s": 60}],
            "error_rules[0].cool_s: only for action cool",
        ),
        (
            [{"status": 400, "action": "pass"}] * 51,
            "error_rules: at most 50 rules, got 51",
        ),
        (
            [{"status": 429, "action": "pass", "when": "always"}],
            "error_rules[0].when: unknown field (a rule has status, match, action, cool_s)",
        ),
    ],
)
def test_a_bad_rule_in_the_file_is_one_line_naming_file_provider_and_index(
    tmp_path: Path, rules: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, rules)
    where = f"config file {tmp_path / 'keygate.yaml'}: providers.gemini."
    assert str(caught.value) == where + message
    assert "\n" not in str(caught.value)


def test_rules_from_the_file_replace_the_catalogs_and_are_compiled_once(tmp_path: Path) -> None:
    rules = [{"status": [429, 503], "match": "(?i)per day", "action": "cool", "cool_s": 3600}]
    cfg = load(tmp_path, rules).providers["gemini"]
    assert cfg.error_rules == rules
    assert cfg.public()["error_rules"] == rules
    assert load_settings({}).providers["gemini"].error_rules == list(BUILTINS["gemini"].error_rules)
    assert load_settings({}).providers["groq"].error_rules == []
    compiled = cfg.error_rules.compiled
    assert parse_rules(cfg.error_rules).compiled is compiled


def test_find_looks_at_the_body_only_for_a_status_a_rule_names() -> None:
    rules = ErrorRules(
        [
            {"status": 400, "match": "context_length", "action": "pass"},
            {"status": [400, 403], "action": "invalid"},
        ]
    )

    class Exploding(bytes):
        def __getitem__(self, item: Any) -> bytes:
            raise AssertionError("the body was read")

    assert rules.find(429, Exploding(b"context_length")) is None
    assert ErrorRules().find(400, Exploding(b"")) is None
    found = rules.find(400, b'{"error": "context_length exceeded"}')
    assert found is not None and (found.index, found.action) == (0, "pass")
    found = rules.find(400, b"other")
    assert found is not None and (found.index, found.action) == (1, "invalid")
    found = rules.find(403, b"x" * 100_000 + b"context_length")
    assert found is not None and found.action == "invalid"


def test_stored_rules_apply_on_start_and_a_bad_stored_list_is_skipped() -> None:
    settings = load_settings({})
    good = [{"status": 418, "action": "pass"}]
    apply_stored(settings.providers, {"groq": {"error_rules": good}}, False)
    assert settings.providers["groq"].error_rules == good
    assert settings.providers["groq"].error_rules.find(418, b"") is not None
    apply_stored(settings.providers, {"groq": {"error_rules": [{"status": 1}]}}, False)
    assert settings.providers["groq"].error_rules == good, "an old store never stops a start"


# --- both instances of a fleet on Redis ---------------------------------------------------------


@pytest.mark.redis
@pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed")
def test_on_redis_a_rule_disables_the_key_for_every_instance(
    gateway_factory: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        keys = ("sk-redis-rules-aaaa0001", "sk-redis-rules-bbbb0002")
        env = {"CEREBRAS_API_KEYS": ",".join(keys), "KEYGATE_REDIS_URL": server.url}
        rules = [
            {"status": 403, "match": "(?i)banned", "action": "disable"},
            {"status": 400, "match": "slow", "action": "cool", "cool_s": 900},
        ]
        config = {
            "providers": {
                "cerebras": {"rps": 0, "max_conn": 0, "backoff_base_s": 0.01, "error_rules": rules}
            }
        }
        a, b = (
            gateway_factory(env=env, config=config, data_dir=tmp_path / "shared") for _ in range(2)
        )
        for gw in (a, b):
            assert httpx.get(gw.url + "/healthz", headers=gw.admin()).json()["state"] == "redis"
        bad, good = keys
        mock.set_behavior(bad, status=403, body=error("this key is BANNED"))
        assert [post(a, "cerebras").status_code for _ in range(3)] == [200] * 3
        assert tries(mock).count((bad, 403)) == 1
        eventually(lambda: status_of(b, "cerebras", bad) == "disabled", 5, "b heard of it")
        mock.reset()
        assert [post(b, "cerebras").status_code for _ in range(4)] == [200] * 4
        assert {key for key, _ in tries(mock)} == {good}, "b never sends to the disabled key"

        # a cool rule's time, also shared: the key set active again, then cooled by b
        row = key_row(a, "cerebras", bad)
        assert a.api("PATCH", f"/api/keys/{row['id']}", json={"status": "active"}).is_success
        mock.reset()
        mock.set_behavior(bad, status=400, body=error("slow down"))
        start = time.time()
        assert [post(b, "cerebras").status_code for _ in range(3)] == [200] * 3
        eventually(lambda: status_of(a, "cerebras", bad) == "cooling", 5, "a heard of it")
        until = key_row(a, "cerebras", bad)["cooldown_until"]
        assert start + 900 <= until <= time.time() + 900
    finally:
        server.stop()
