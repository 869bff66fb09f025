"""The client-limit windows (clients.limits) and the policy checks of a client (registry), on
explicit times: what is refused, and how long until it resets."""

from __future__ import annotations

import calendar

import pytest

from keygate.clients import limits
from keygate.clients.registry import Client, ClientRegistry
from keygate.clients.secret import key_hash, mask, new_key
from keygate.store.clients import ClientRecord

# 2026-12-31 23:59:00 UTC: a minute before a day and a month end
T = float(calendar.timegm((2026, 12, 31, 23, 59, 0)))


def client(**kw: object) -> Client:
    return Client(ClientRecord(1, "c", "h", "m", **kw))  # type: ignore[arg-type]


def test_rpm_slides() -> None:
    c = client(rpm=2)
    assert limits.check(c, 0, T) is None
    assert limits.check(c, 0, T + 10) is None
    assert limits.check(c, 0, T + 20) == ("rpm", pytest.approx(40.0))
    assert limits.check(c, 0, T + 60.5) is None  # the first one slid out


def test_rpd_resets_at_utc_midnight() -> None:
    c = client(rpd=1)
    assert limits.check(c, 0, T) is None
    assert limits.check(c, 0, T + 1) == ("rpd", pytest.approx(59.0))
    assert limits.check(c, 0, T + 60) is None  # 2027-01-01 00:00:00


def test_tokens_reserve_then_settle() -> None:
    c = client(tpd=100)
    assert limits.check(c, 60, T) is None
    assert limits.check(c, 60, T) == ("tpd", pytest.approx(60.0))  # 60 + 60 > 100
    limits.settle(c, 60, 10, T)  # the answer used 10
    assert limits.check(c, 60, T) is None
    assert c.windows.day_tokens == 70


def test_monthly_tokens_reset_at_the_month() -> None:
    c = client(monthly_tokens=50)
    limits.seed(c, 0, 0, 50, T)
    assert limits.check(c, 1, T) == ("monthly_tokens", pytest.approx(60.0))
    assert limits.check(c, 1, T + 61) is None


def test_allows_names_patterns_and_providers() -> None:
    c = client(models=["gpt-4o", "groq/*", "cerebras/llama3.1-8b"])
    assert c.allows("openai", "gpt-4o")
    assert c.allows("groq", "anything")
    assert c.allows("cerebras", "llama3.1-8b")
    assert not c.allows("cerebras", "gpt-oss-120b")
    assert c.allows("cerebras", "")  # nothing named: a provider the lists name
    only = client(providers=["groq"])
    assert only.allows("groq", "x") and not only.allows("openai", "x")
    assert client(models=["*"]).allows("any", "thing")


def test_a_pattern_names_the_provider_that_serves() -> None:
    """`provider/*` and `provider/model` match the provider that will serve the request and
    the model as it receives it, never another provider's model id spelt the same way."""
    c = client(models=["openai/*", "cerebras/llama3.1-8b"])
    assert c.allows("openai", "gpt-4o")
    assert not c.allows("openrouter", "openai/gpt-4o")  # openrouter's id, not openai's model
    assert not c.allows("openrouter", "cerebras/llama3.1-8b")
    assert not c.allows("groq", "openai/gpt-4o")
    deep = client(models=["openrouter/openai/gpt-4o"])
    assert deep.allows("openrouter", "openai/gpt-4o")
    assert not deep.allows("openai", "gpt-4o")


def test_a_model_less_request_goes_only_where_the_lists_name_the_provider() -> None:
    c = client(models=["openai/*", "cerebras/llama3.1-8b", "fast"])
    assert c.allows("openai", "") and c.allows("cerebras", "")
    assert not c.allows("groq", "")  # GET /groq/v1/models, a model-less POST
    assert client(models=["fast"], providers=["groq"]).allows("groq", "")
    assert client().allows("groq", "")  # no lists: anything


def test_refusal_disabled_and_expired() -> None:
    assert client().refusal(T) == ""
    assert "disabled" in client(enabled=False).refusal(T)
    assert "expired" in client(expires_at=T).refusal(T)
    assert client(expires_at=T + 1).refusal(T) == ""


def test_registry_finds_by_hash_and_follows_changes() -> None:
    key = new_key()
    reg = ClientRegistry()
    assert not reg
    rec = ClientRecord(7, "x", key_hash(key), mask(key))
    reg.replace([rec], {})
    found = reg.find(key.encode())
    assert found is not None and found.id == 7 and reg
    assert reg.find(b"kgc-" + b"x" * 40) is None
    found.usage.count(T, 1, 2, False)
    reg.replace([ClientRecord(7, "renamed", key_hash(key), mask(key), rpd=3)], {})
    assert reg.find(key.encode()) is found and found.name == "renamed" and found.rpd == 3
    reg.replace([], {})
    assert reg.find(key.encode()) is None and not reg
    assert reg.retired == [found]  # its unflushed usage still goes to the store
