"""Client keys (SPEC §13) driven by the real OpenAI and Anthropic SDKs: a client key works as
the api_key; its limits, model list, disabling, deletion and expiry refuse requests in the
SDK's own error shape without anything reaching the upstream."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from harness import eventually
from keygate.testing.mock_upstream import MockUpstream

CEREBRAS_KEY = "csk-cerebras-aaaa1111"
CLAUDE_KEY = "sk-ant-api03-bbbb2222"
ENV = {"CEREBRAS_API_KEYS": CEREBRAS_KEY, "CLAUDE_API_KEYS": CLAUDE_KEY}
NO_WAIT = {name: {"rps": 0, "max_conn": 0} for name in ("cerebras", "claude")}
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def gw(gateway_factory: Any) -> Any:
    return gateway_factory(env=ENV, config={"providers": NO_WAIT})


def add_client(gw: Any, **doc: Any) -> tuple[int, str]:
    r = gw.api("POST", "/api/clients", json={"name": "alice", **doc})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"].startswith("kgc-") and len(body["key"]) == 44
    assert body["client"]["masked"] != body["key"]
    return body["id"], body["key"]


def oai(gw: Any, key: str, path: str = "/cerebras/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}{path}", api_key=key, max_retries=0, timeout=10)


def claude(gw: Any, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gw.url}/claude", api_key=key, max_retries=0, timeout=10)


def chat(client: openai.OpenAI, model: str = "llama3.1-8b") -> Any:
    return client.chat.completions.create(model=model, messages=MESSAGES)


def message(client: anthropic.Anthropic, model: str = "claude-sonnet-4") -> Any:
    return client.messages.create(model=model, max_tokens=16, messages=MESSAGES)


def test_client_key_works_in_both_sdks_and_never_goes_upstream(gw: Any, mock: MockUpstream) -> None:
    _, key = add_client(gw)
    assert chat(oai(gw, key)).choices[0].message.content
    assert message(claude(gw, key)).content[0].text
    assert mock.count() == 2
    for rec in mock.records():
        assert key.encode() not in (str(rec.headers) + rec.query).encode() + rec.body
    assert {r.key for r in mock.records()} == {CEREBRAS_KEY, CLAUDE_KEY}
    # the other header forms: x-api-key, x-goog-api-key, ?key=
    with gw.client() as c:
        for kw in (
            {"headers": {"x-api-key": key}},
            {"headers": {"x-goog-api-key": key}},
            {"params": {"key": key}},
        ):
            r = c.post(
                "/cerebras/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, **kw
            )
            assert r.status_code == 200, (kw, r.text)


def test_over_rpd_is_429_client_quota_exceeded_and_nothing_upstream(
    gw: Any, mock: MockUpstream
) -> None:
    _, key = add_client(gw, rpd=2)
    client = oai(gw, key)
    chat(client)
    chat(client)
    sent = mock.count()
    with pytest.raises(openai.RateLimitError) as exc:
        chat(client)
    err = exc.value
    assert err.code == "client_quota_exceeded"
    retry_after = int(err.response.headers["retry-after"])
    until_midnight = 86400 - time.time() % 86400
    assert abs(retry_after - until_midnight) < 5
    assert mock.count() == sent
    # the Anthropic SDK reads the same refusal in its own shape
    with pytest.raises(anthropic.RateLimitError) as aexc:
        message(claude(gw, key))
    assert aexc.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "rpd" in aexc.value.message
    assert mock.count() == sent
    # the master password is not limited
    ok = openai.OpenAI(base_url=f"{gw.url}/cerebras/v1", api_key=gw.password, max_retries=0)
    chat(ok)


def test_model_outside_the_list_is_403_model_not_allowed(gw: Any, mock: MockUpstream) -> None:
    _, key = add_client(gw, models=["llama3.1-8b", "claude/*"])
    client = oai(gw, key)
    chat(client, "llama3.1-8b")
    message(claude(gw, key), "claude-anything")  # under claude/*
    sent = mock.count()
    with pytest.raises(openai.PermissionDeniedError) as exc:
        chat(client, "gpt-oss-120b")
    assert exc.value.code == "model_not_allowed"
    assert mock.count() == sent
    _, only_claude = add_client(gw, name="bob", providers=["claude"])
    with pytest.raises(openai.PermissionDeniedError) as exc:
        chat(oai(gw, only_claude))
    assert exc.value.code == "model_not_allowed"
    message(claude(gw, only_claude))
    assert mock.count() == sent + 1


def test_disabled_deleted_expired_are_401(gw: Any, mock: MockUpstream) -> None:
    disabled_id, disabled = add_client(gw, name="d")
    deleted_id, deleted = add_client(gw, name="x")
    expired_id, expired = add_client(gw, name="e", expires_at=time.time() + 2)
    for key in (disabled, deleted):
        chat(oai(gw, key))
    assert (
        gw.api("PATCH", f"/api/clients/{disabled_id}", json={"enabled": False}).status_code == 200
    )
    assert gw.api("DELETE", f"/api/clients/{deleted_id}").status_code == 200
    sent = mock.count()
    for key in (disabled, deleted):
        with pytest.raises(openai.AuthenticationError):
            chat(oai(gw, key))
        with pytest.raises(anthropic.AuthenticationError):
            message(claude(gw, key))

    # expiry: refused once its time has come (the key worked before)
    def refused_as_expired() -> bool:
        try:
            chat(oai(gw, expired))
        except openai.AuthenticationError as exc:
            assert "expired" in exc.message
            return True
        return False

    eventually(refused_as_expired, 2.5, "an expired client key is refused")
    assert (
        gw.api("PATCH", f"/api/clients/{expired_id}", json={"expires_at": None}).status_code == 200
    )
    chat(oai(gw, expired))
    assert mock.count() > sent
    # enabled again: accepted again at once
    gw.api("PATCH", f"/api/clients/{disabled_id}", json={"enabled": True})
    chat(oai(gw, disabled))


def test_no_password_with_client_keys_closes_the_proxy(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    gw = gateway_factory(env=ENV, config={"providers": NO_WAIT}, password=None)
    with gw.client() as c:
        body = {"model": "m", "messages": MESSAGES}
        assert c.post("/cerebras/v1/chat/completions", json=body).status_code == 200  # open
        _, key = add_client(gw)
        assert c.post("/cerebras/v1/chat/completions", json=body).status_code == 401
        r = c.post("/claude/v1/messages", json={**body, "max_tokens": 5})
        assert r.status_code == 401 and r.json()["type"] == "error"  # Anthropic's shape
        sent = mock.count()
        assert (
            c.post(
                "/cerebras/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}
            ).status_code
            == 401
        )
        assert mock.count() == sent
    chat(oai(gw, key))
    # after a restart too: the banner says so, and the proxy stays closed
    assert gw.stop() == 0
    again = gateway_factory(
        env=ENV, config={"providers": NO_WAIT}, password=None, data_dir=gw.data_dir
    )
    assert "proxy auth    on (client keys only: 1" in again.log()
    assert "proxy auth is OFF" not in again.log()
    with again.client() as c:
        r = c.post("/cerebras/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert r.status_code == 401
    chat(oai(again, key))


def test_admin_api_validation_names_the_field(gw: Any) -> None:
    for doc, field in (
        ({}, "name"),
        ({"name": "a", "rpd": -1}, "rpd"),
        ({"name": "a", "rpm": "5"}, "rpm"),
        ({"name": "a", "models": "x"}, "models"),
        ({"name": "a", "providers": ["Not A Name"]}, "providers"),
        ({"name": "a", "expires_at": "yesterday"}, "expires_at"),
        ({"name": "a", "expires_at": 1000}, "expires_at"),
        ({"name": "a", "colour": 1}, "colour"),
    ):
        r = gw.api("POST", "/api/clients", json=doc)
        assert r.status_code == 400, (doc, r.text)
        assert r.json()["error"]["message"].startswith(field), r.text
        assert r.json()["error"]["param"] == field
    cid, _ = add_client(gw)
    r = gw.api("PATCH", f"/api/clients/{cid}", json={"enabled": "no"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "enabled"
    assert gw.api("PATCH", "/api/clients/999", json={"rpm": 1}).status_code == 404
    assert gw.api("DELETE", "/api/clients/999").status_code == 404
    listed = gw.api("GET", "/api/clients").json()
    assert listed["total"] == 1 and "key" not in listed["clients"][0]


def test_usage_is_counted_and_listed(gw: Any, mock: MockUpstream) -> None:
    cid, key = add_client(gw)
    client = oai(gw, key)
    for _ in range(3):
        chat(client)
    with pytest.raises(openai.PermissionDeniedError):
        gw.api("PATCH", f"/api/clients/{cid}", json={"models": ["other"]})
        chat(client)
    listed = {c["id"]: c for c in gw.api("GET", "/api/clients").json()["clients"]}
    usage = listed[cid]["usage"]
    assert usage["today"]["requests"] == 4 and usage["month"]["requests"] == 4
    assert usage["all"]["errors"] == 1
    assert usage["today"]["tokens_in"] > 0
    assert listed[cid]["last_used"] and sum(listed[cid]["timeline"]) == 4
    stats = gw.api("GET", "/api/stats").json()
    assert stats["clients"][str(cid)]["today"]["requests"] == 4
    recent = gw.api("GET", "/api/requests").json()["requests"]
    assert recent[0]["client_name"] == "alice"
    metrics = gw.api("GET", "/metrics").text
    assert 'keygate_client_requests_total{client="alice"} 4' in metrics
    assert "client_name=alice" in gw.log()


def cli(gw: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`keygate clients ...` against `gw`'s store, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "keygate", "clients", *args],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_add_update_rm_reach_the_running_server(gw: Any, mock: MockUpstream) -> None:
    # a day limit the polls below cannot reach: each poll until a change is seen (the change
    # feed is read once a second) is a request that counts
    done = cli(gw, "add", "carol", "--rpd", "100000", "--models", "cerebras/*")
    assert done.returncode == 0, done.stderr
    key = re.search(r"key: (kgc-\S{40})", done.stdout).group(1)  # type: ignore[union-attr]
    assert done.stdout.count(key) == 1
    client = oai(gw, key)
    # (polling with a key not known yet would trip the wrong-password throttle)
    eventually(lambda: known_clients(gw) == 1, 5, "the server loads a client added by the CLI")
    chat(client)
    listed = cli(gw, "list", "--json")
    assert key not in listed.stdout
    cid = orjson.loads(listed.stdout)["clients"][0]["id"]
    assert cli(gw, "update", str(cid), "--disable").returncode == 0
    eventually(lambda: not _works(client), 5, "a client disabled by the CLI is refused")
    bad = cli(gw, "update", str(cid), "--rpm", "-3")
    assert bad.returncode == 2 and "rpm:" in bad.stderr
    assert cli(gw, "update", str(cid), "--enable").returncode == 0
    eventually(lambda: _works(client), 5, "enabled again")
    assert cli(gw, "rm", str(cid)).returncode == 0
    eventually(lambda: not _works(client), 5, "a client deleted by the CLI is refused")
    assert cli(gw, "rm", str(cid)).returncode == 1


def status_of(client: openai.OpenAI) -> int:
    try:
        chat(client)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def known_clients(gw: Any) -> int:
    return int(gw.api("GET", "/healthz").json()["clients"])


def _works(client: openai.OpenAI) -> bool:
    try:
        chat(client)
    except openai.AuthenticationError:
        return False
    return True


def test_changes_apply_on_the_other_instance(gateway_factory: Any, tmp_path: Path) -> None:
    shared = tmp_path / "shared-data"
    one = gateway_factory(env=ENV, config={"providers": NO_WAIT}, data_dir=shared)
    two = gateway_factory(env=ENV, config={"providers": NO_WAIT}, data_dir=shared)
    cid, key = add_client(one, rpd=1000)
    other = oai(two, key)
    eventually(lambda: known_clients(two) == 1, 5, "the other instance loads the new client")
    chat(other)
    one.api("PATCH", f"/api/clients/{cid}", json={"models": ["nothing-else"]})

    def refused_403() -> bool:
        try:
            chat(other)
        except openai.PermissionDeniedError:
            return True
        return False

    eventually(refused_403, 5, "a model list changed on one instance applies on the other")
    one.api("DELETE", f"/api/clients/{cid}")
    eventually(lambda: status_of(other) == 401, 5, "deleted on the other instance too")


def test_the_model_check_sees_the_model_the_upstream_sees(gw: Any, mock: MockUpstream) -> None:
    """A restricted client cannot slip a forbidden model past the byte scan: a nested or
    repeated "model", an escaped key, or Gemini's model in the path."""
    _, key = add_client(gw, models=["llama3.1-8b"])
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    sent = mock.count()
    tricks = [
        b'{"metadata": {"model": "llama3.1-8b"}, "model": "gpt-oss-120b", "messages": []}',
        b'{"mod\\u0065l": "gpt-oss-120b", "messages": []}',
        b'{"model": "' + b"x" * 300 + b'", "messages": []}',
    ]
    with gw.client() as c:
        for body in tricks:
            r = c.post("/cerebras/v1/chat/completions", content=body, headers=headers)
            assert r.status_code == 403, (body, r.text)
            assert r.json()["error"]["code"] == "model_not_allowed"
        # two models in one body: parsers differ on which counts, so it is refused outright
        for body in (
            b'{"model": "llama3.1-8b", "model": "gpt-oss-120b", "messages": []}',
            b'{"model": "gpt-oss-120b", "model": "llama3.1-8b", "messages": []}',
        ):
            r = c.post("/cerebras/v1/chat/completions", content=body, headers=headers)
            assert r.status_code == 400, (body, r.text)
        r = c.post(
            "/gemini/v1beta/models/gemini-2.5-pro:generateContent",
            json={"contents": []},
            headers={"x-goog-api-key": key},
        )
        assert r.status_code == 403, r.text
        ok = c.post(
            "/cerebras/v1/chat/completions",
            content=b'{"model": "llama3.1-8b", "messages": [{"role": "user", "content": "\\u00e9"}]}',
            headers=headers,
        )
        assert ok.status_code == 200, ok.text
    assert mock.count() == sent + 1


def test_day_usage_and_limits_survive_a_restart(gateway_factory: Any, mock: MockUpstream) -> None:
    gw = gateway_factory(env=ENV, config={"providers": NO_WAIT})
    cid, key = add_client(gw, rpd=2)
    chat(oai(gw, key))
    chat(oai(gw, key))
    assert gw.stop() == 0  # a clean stop flushes the counters
    again = gateway_factory(env=ENV, config={"providers": NO_WAIT}, data_dir=gw.data_dir)
    sent = mock.count()
    with pytest.raises(openai.RateLimitError) as exc:
        chat(oai(again, key))
    assert exc.value.code == "client_quota_exceeded" and mock.count() == sent
    listed = again.api("GET", "/api/clients").json()["clients"]
    assert listed[0]["id"] == cid and listed[0]["usage"]["today"]["requests"] == 3


def test_a_clients_lists_apply_on_the_unified_endpoint(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    """Routed by model: a client limited to `cerebras/*` asking for a group of claude and
    cerebras is served by cerebras only; a model routing only elsewhere is 403 with nothing
    sent; a client listing the group's own name may use all of its targets."""
    models = {
        "duo": {"strategy": "fallback", "targets": ["claude/claude-sonnet-4", "cerebras/m"]},
        "opus": "claude/claude-opus-4",
    }
    gw = gateway_factory(env=ENV, config={"providers": NO_WAIT, "models": models})
    _, narrow = add_client(gw, models=["cerebras/*"])
    raw = oai(gw, narrow, "/v1").chat.completions.with_raw_response.create(
        model="duo", messages=MESSAGES
    )
    assert raw.headers["x-keygate-provider"] == "cerebras"
    assert [r.key for r in mock.records()] == [CEREBRAS_KEY]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(oai(gw, narrow, "/v1"), "opus")
    assert denied.value.body["code"] == "model_not_allowed"
    assert mock.count() == 1
    r = gw.api("POST", "/api/clients", json={"name": "bob", "models": ["duo"]})
    wide = r.json()["key"]
    raw = oai(gw, wide, "/v1").chat.completions.with_raw_response.create(
        model="duo", messages=MESSAGES
    )
    assert raw.headers["x-keygate-provider"] == "claude"  # the group's first target, translated
    assert mock.records()[-1].key == CLAUDE_KEY
