"""The admin JSON API (docs/admin-api.md) against a real `keygate serve` and the mock upstream.

Every test drives the gateway over HTTP as the admin page or a script would, and checks that
changes reach the running gateway at once by looking at what the mock upstream received. Each
test also records every response and the gateway log and checks that no whole key leaks.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import eventually, wait_for_store, with_store
from keygate.control.keypool import mask
from keygate.testing.mock_upstream import MockUpstream

CHAT = "/cerebras/v1/chat/completions"
ADMIN_ROUTES = {
    ("POST", "/api/session"),
    ("GET", "/api/session"),
    ("DELETE", "/api/session"),
    ("GET", "/api/providers"),
    ("PATCH", "/api/providers/{name}"),
    ("POST", "/api/providers/{name}/test"),
    ("GET", "/api/keys"),
    ("POST", "/api/keys"),
    ("POST", "/api/keys/batch"),
    ("PATCH", "/api/keys/{id}"),
    ("DELETE", "/api/keys/{id}"),
    ("POST", "/api/keys/{id}/test"),
    ("GET", "/api/clients"),
    ("POST", "/api/clients"),
    ("PATCH", "/api/clients/{id}"),
    ("DELETE", "/api/clients/{id}"),
    ("GET", "/api/stats"),
    ("DELETE", "/api/cache"),
    ("GET", "/api/config"),
    ("PUT", "/api/config/default-model"),
    ("GET", "/api/requests"),
    ("GET", "/api/models"),
    ("PUT", "/api/models/{name}"),
    ("DELETE", "/api/models/{name}"),
    ("GET", "/api/openapi.json"),
    ("GET", "/metrics"),
}


class Kg:
    """A running gateway plus a recorder of everything it answered (for the secret scan)."""

    def __init__(self, gw: Any, mock: MockUpstream) -> None:
        self.gw = gw
        self.mock = mock
        self.seen: list[str] = []
        self.secrets: set[str] = set()
        self.sent = 0
        self.http = httpx.Client(base_url=gw.url, timeout=30)

    def close(self) -> None:
        self.http.close()

    def switch(self, gw: Any) -> None:
        """Follow a restarted gateway (new port, same data)."""
        self.http.close()
        self.gw = gw
        self.http = httpx.Client(base_url=gw.url, timeout=30)

    def secret(self, prefix: str = "sk") -> str:
        """A fresh key that must never come back whole."""
        value = f"{prefix}-{secrets.token_hex(14)}"
        self.secrets.add(value)
        return value

    def _keep(self, resp: httpx.Response) -> httpx.Response:
        self.seen.append(resp.text)
        self.seen.append(str(resp.headers))
        return resp

    def raw(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self._keep(self.http.request(method, path, **kw))

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.gw.admin(), **kw.pop("headers", {})}
        return self.raw(method, path, headers=headers, **kw)

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        resp = self.api(method, path, **kw)
        assert resp.status_code == status, (method, path, resp.status_code, resp.text)
        return resp.json()

    def add(self, key: str, provider: str = "cerebras", label: str = "") -> int:
        doc = self.ok(
            "POST", "/api/keys", 201, json={"provider": provider, "key": key, "label": label}
        )
        return int(doc["id"])

    def chat(self, path: str = CHAT, model: str | None = "m", **extra: Any) -> httpx.Response:
        # each request a conversation of its own: key affinity (SPEC §15) leaves them to the
        # round-robin these tests watch
        self.sent += 1
        hello = {"role": "user", "content": f"hi {self.sent}"}
        body: dict[str, Any] = {"messages": [hello], **extra}
        if model is not None:
            body["model"] = model
        return self._keep(self.http.post(path, json=body, headers=self.gw.auth()))

    def used_key(self, path: str = CHAT, **kw: Any) -> str | None:
        """Send one chat request and say which upstream key the mock saw."""
        resp = self.chat(path, **kw)
        assert resp.status_code == 200, resp.text
        return self.mock.records()[-1].key

    def assert_no_secrets(self) -> None:
        texts = [*self.seen, self.gw.log()]
        for value in self.secrets:
            for text in texts:
                assert value not in text, f"a whole key ({mask(value)}) leaked"


@pytest.fixture
def kg(gateway_factory: Any, mock: MockUpstream) -> Iterator[Kg]:
    k = Kg(gateway_factory(), mock)
    yield k
    k.close()


def error_of(resp: httpx.Response) -> dict[str, Any]:
    doc = resp.json()
    assert set(doc) == {"error"}, doc
    assert {"message", "type", "code"} <= set(doc["error"]), doc
    return doc["error"]


def assert_bad(resp: httpx.Response, field: str, status: int = 400) -> None:
    assert resp.status_code == status, resp.text
    err = error_of(resp)
    assert err["message"].startswith(f"{field}:"), err


# --- keys -------------------------------------------------------------------------------------


def test_add_is_used_at_once_delete_never_again(kg: Kg) -> None:
    k1 = kg.secret()
    added = kg.ok("POST", "/api/keys", 201, json={"provider": "cerebras", "key": k1, "label": "a"})
    key = added["key"]
    assert key["id"] == added["id"]
    assert key["masked"] == f"{k1[:4]}…{k1[-4:]}"
    assert key["status"] == "active" and key["label"] == "a" and key["source"] == "api"
    expected = {"id", "provider", "masked", "label", "status", "use_count", "last_used"}
    expected |= {"created_at", "last_error", "cooldown_until", "source", "inflight", "ok"}
    expected |= {"err_4xx", "err_5xx", "tokens_in", "tokens_out", "rpm", "max_conn"}
    expected |= {"rph", "rpd", "tpm", "tph", "tpd", "quota", "tier", "weight", "proxy"}
    assert set(key) == expected
    assert set(key["quota"]) == {"rpm", "rph", "rpd", "tpm", "tph", "tpd"}
    assert key["quota"]["rpd"] == {"used": None, "limit": None, "reset_at": None}
    assert kg.used_key() == k1  # the very next request

    # Delete the only key and add another: the next request uses the new one, never the old.
    k2 = kg.secret()
    assert kg.ok("DELETE", f"/api/keys/{added['id']}") == {"deleted": added["id"]}
    id2 = kg.add(k2)
    assert [kg.used_key() for _ in range(5)] == [k2] * 5

    # A third key joins the rotation straight away.
    k3 = kg.secret()
    kg.add(k3)
    assert {kg.used_key() for _ in range(4)} == {k2, k3}

    # Duplicates, invalid keys, unknown providers, bad bodies.
    dup = kg.api("POST", "/api/keys", json={"provider": "cerebras", "key": k2})
    assert dup.status_code == 409
    assert error_of(dup)["message"].startswith("key:") and mask(k2) in dup.text
    assert_bad(kg.api("POST", "/api/keys", json={"provider": "cerebras", "key": "a b"}), "key")
    assert_bad(kg.api("POST", "/api/keys", json={"provider": "cerebras", "key": ""}), "key")
    assert_bad(kg.api("POST", "/api/keys", json={"provider": "cerebras"}), "key")
    assert_bad(
        kg.api("POST", "/api/keys", json={"provider": "nope", "key": kg.secret()}), "provider"
    )
    assert_bad(kg.api("POST", "/api/keys", json={"key": kg.secret()}), "provider")
    assert_bad(
        kg.api("POST", "/api/keys", json={"provider": "cerebras", "key": kg.secret(), "label": 5}),
        "label",
    )
    assert_bad(kg.api("POST", "/api/keys", content=b'{"provider": "cere'), "body")
    assert_bad(kg.api("POST", "/api/keys", json=["cerebras", "k"]), "body")

    # Deleting what is gone.
    assert kg.api("DELETE", f"/api/keys/{added['id']}").status_code == 404
    assert kg.api("DELETE", "/api/keys/987654").status_code == 404
    assert kg.ok("DELETE", f"/api/keys/{id2}") == {"deleted": id2}
    assert all(kg.used_key() == k3 for _ in range(3))
    kg.assert_no_secrets()


def test_disable_enable_and_patch(kg: Kg) -> None:
    k1, k2 = kg.secret(), kg.secret()
    id1, id2 = kg.add(k1), kg.add(k2)
    key = kg.ok("PATCH", f"/api/keys/{id1}", json={"status": "disabled"})
    assert key["status"] == "disabled" and key["id"] == id1
    assert {kg.used_key() for _ in range(6)} == {k2}
    listed = kg.ok("GET", "/api/keys", params={"status": "disabled"})
    assert [k["id"] for k in listed["keys"]] == [id1] and listed["total"] == 1

    assert kg.ok("PATCH", f"/api/keys/{id1}", json={"status": "active"})["status"] == "active"
    assert {kg.used_key() for _ in range(4)} == {k1, k2}

    key = kg.ok("PATCH", f"/api/keys/{id2}", json={"label": "team-b", "rpm": 500, "max_conn": 2})
    assert (key["label"], key["rpm"], key["max_conn"]) == ("team-b", 500, 2)
    listed = kg.ok("GET", "/api/keys", params={"q": "team-b"})
    assert [k["id"] for k in listed["keys"]] == [id2]

    assert_bad(kg.api("PATCH", f"/api/keys/{id2}", json={"rpm": -1}), "rpm")
    assert_bad(kg.api("PATCH", f"/api/keys/{id2}", json={"rpm": "x"}), "rpm")
    assert_bad(kg.api("PATCH", f"/api/keys/{id2}", json={"max_conn": 1.5}), "max_conn")
    assert_bad(kg.api("PATCH", f"/api/keys/{id2}", json={"status": "cooling"}), "status")
    assert_bad(kg.api("PATCH", f"/api/keys/{id2}", json={"secret": "x"}), "secret")
    assert_bad(kg.api("PATCH", f"/api/keys/{id2}", content=b"{nope"), "body")
    assert kg.api("PATCH", "/api/keys/987654", json={"label": "x"}).status_code == 404
    assert kg.api("PATCH", "/api/keys/abc", json={"label": "x"}).status_code == 404

    # A key cooling after a 429 stays cooling when only its label changes, also after the
    # gateway has read that change back from the store's change feed.
    kg.mock.push(k1, status=429, headers={"Retry-After": "60"})
    for _ in range(4):  # until k1's turn comes: its 429 is retried on k2
        assert kg.used_key() == k2
        if any(r.key == k1 and r.status == 429 for r in kg.mock.records()):
            break
    assert kg.ok("GET", "/api/keys?status=cooling")["keys"][0]["id"] == id1
    assert kg.ok("PATCH", f"/api/keys/{id1}", json={"label": "cool"})["status"] == "cooling"
    # A later write straight to the store (as the CLI makes) shows when the gateway's feed has
    # passed the label change: the feed applies changes in order, in one pass.
    with_store(kg.gw, lambda store: store.update_key(id2, label="feed-mark"))

    def labels_in_memory() -> dict[int, str]:  # a status filter is answered from memory
        keys = kg.ok("GET", "/api/keys", params={"status": "active"})["keys"]
        return {k["id"]: k["label"] for k in keys}

    eventually(
        lambda: labels_in_memory().get(id2) == "feed-mark",
        5,
        "the gateway picked up a store write through its change feed",
    )
    cooling = kg.ok("GET", "/api/keys", params={"status": "cooling"})["keys"]
    assert [(k["id"], k["label"]) for k in cooling] == [(id1, "cool")]
    assert cooling[0]["cooldown_until"] > time.time() + 30
    assert {kg.used_key() for _ in range(4)} == {k2}

    # With every key disabled the proxy has nothing to use.
    for key_id in (id1, id2):
        kg.ok("PATCH", f"/api/keys/{key_id}", json={"status": "disabled"})
    count = len(kg.mock.records())
    assert kg.chat().status_code == 503
    assert len(kg.mock.records()) == count
    kg.assert_no_secrets()


def test_batch_import(kg: Kg) -> None:
    existing = kg.secret()
    existing_id = kg.add(existing)
    a, b, c, d = (kg.secret() for _ in range(4))
    too_long = "z" * 600
    kg.secrets.add(too_long)
    text = f"{a}\n{b}, {c}\t {d}\n\n , ,\n{a}\r\n{existing}\n  {too_long}\n"
    doc = kg.ok("POST", "/api/keys/batch", json={"provider": "cerebras", "input": text})
    results = doc["results"]
    assert [r["status"] for r in results] == [
        "added",
        "added",
        "added",
        "added",
        "duplicate",
        "duplicate",
        "invalid",
    ]
    assert [r["input"] for r in results] == [mask(t) for t in (a, b, c, d, a, existing, too_long)]
    assert (doc["added"], doc["duplicate"], doc["invalid"]) == (4, 2, 1)
    assert results[4]["id"] == results[0]["id"]
    assert results[5]["id"] == existing_id
    assert results[6]["id"] is None and results[6]["message"]
    assert {"input", "status", "id", "message"} == set(results[0])

    # A JSON array pasted as text, with a repeat and a blank.
    e, f = kg.secret(), kg.secret()
    doc = kg.ok(
        "POST", "/api/keys/batch", json={"provider": "cerebras", "input": json.dumps([e, f, e, ""])}
    )
    assert [r["status"] for r in doc["results"]] == ["added", "added", "duplicate"]
    # A real JSON array.
    g, h = kg.secret(), kg.secret()
    doc = kg.ok("POST", "/api/keys/batch", json={"provider": "cerebras", "input": [g, " ", h, f]})
    assert (doc["added"], doc["duplicate"], doc["invalid"]) == (2, 1, 0)
    # Nothing to import is not an error.
    assert (
        kg.ok("POST", "/api/keys/batch", json={"provider": "cerebras", "input": " \n, "})["added"]
        == 0
    )

    assert_bad(
        kg.api("POST", "/api/keys/batch", json={"provider": "cerebras", "input": 5}), "input"
    )
    assert_bad(
        kg.api("POST", "/api/keys/batch", json={"provider": "cerebras", "input": [1]}), "input"
    )
    assert_bad(kg.api("POST", "/api/keys/batch", json={"provider": "nope", "input": a}), "provider")

    # Every imported key is in the pool and used right away.
    every = {existing, a, b, c, d, e, f, g, h}
    assert kg.ok("GET", "/api/keys", params={"provider": "cerebras"})["total"] == len(every)
    assert {kg.used_key() for _ in range(len(every))} == every
    kg.assert_no_secrets()


def test_list_filter_search_pagination(kg: Kg) -> None:
    cerebras = [kg.secret("csk") for _ in range(12)]
    groq = [kg.secret("gsk") for _ in range(3)]
    kg.ok("POST", "/api/keys/batch", json={"provider": "cerebras", "input": "\n".join(cerebras)})
    kg.ok("POST", "/api/keys/batch", json={"provider": "groq", "input": ",".join(groq)})

    pages = []
    for offset in (0, 5, 10):
        page = kg.ok(
            "GET", "/api/keys", params={"provider": "cerebras", "limit": 5, "offset": offset}
        )
        assert page["total"] == 12
        pages.append([k["id"] for k in page["keys"]])
    assert [len(p) for p in pages] == [5, 5, 2]
    ids = [i for p in pages for i in p]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 12  # newest first, no overlap
    every = kg.ok("GET", "/api/keys")
    assert every["total"] == 15 and len(every["keys"]) == 15
    assert {
        k["provider"] for k in kg.ok("GET", "/api/keys", params={"provider": "groq"})["keys"]
    } == {"groq"}

    # Search: label, masked form, or a whole pasted key (found, but never echoed).
    newest = ids[0]
    kg.ok("PATCH", f"/api/keys/{newest}", json={"label": "Alpha-Team"})
    found = kg.ok("GET", "/api/keys", params={"q": "alpha"})
    assert [k["id"] for k in found["keys"]] == [newest] and found["total"] == 1
    target = cerebras[3]
    found = kg.ok("GET", "/api/keys", params={"q": target[-4:]})
    assert mask(target) in [k["masked"] for k in found["keys"]]
    found = kg.ok("GET", "/api/keys", params={"q": target})
    assert [k["masked"] for k in found["keys"]] == [mask(target)]

    # Status filter (answered from the live pool) with provider and search.
    kg.ok("PATCH", f"/api/keys/{ids[1]}", json={"status": "disabled"})
    kg.ok("PATCH", f"/api/keys/{ids[2]}", json={"status": "disabled"})
    disabled = kg.ok("GET", "/api/keys", params={"status": "disabled", "limit": 1})
    assert disabled["total"] == 2 and [k["id"] for k in disabled["keys"]] == [ids[1]]
    active = kg.ok("GET", "/api/keys", params={"status": "active", "provider": "cerebras"})
    assert active["total"] == 10 and all(k["status"] == "active" for k in active["keys"])
    assert kg.ok("GET", "/api/keys", params={"status": "active", "provider": "groq"})["total"] == 3
    assert kg.ok("GET", "/api/keys", params={"status": "active", "q": "alpha"})["total"] == 1
    assert kg.ok("GET", "/api/keys", params={"status": "invalid"})["total"] == 0

    assert_bad(kg.api("GET", "/api/keys", params={"status": "sleepy"}), "status")
    assert_bad(kg.api("GET", "/api/keys", params={"limit": "many"}), "limit")
    assert_bad(kg.api("GET", "/api/keys", params={"limit": "-1"}), "limit")
    assert_bad(kg.api("GET", "/api/keys", params={"offset": "-3"}), "offset")
    assert len(kg.ok("GET", "/api/keys", params={"limit": 10_000})["keys"]) == 15  # capped at 500
    assert kg.ok("GET", "/api/keys", params={"provider": "nope"}) == {"keys": [], "total": 0}
    kg.assert_no_secrets()


def test_key_test_against_upstream(kg: Kg) -> None:
    good, bad = kg.secret(), kg.secret()
    good_id, bad_id = kg.add(good), kg.add(bad)
    kg.mock.set_behavior(bad, status=401)

    asked = time.monotonic()
    result = kg.ok("POST", f"/api/keys/{good_id}/test")
    took_ms = (time.monotonic() - asked) * 1000
    assert result["ok"] is True and result["status"] == 200 and result["id"] == good_id
    # a real round trip to the upstream, inside the time the admin call took
    assert 0 < result["latency_ms"] <= took_ms + 1, (result["latency_ms"], took_ms)
    assert result["key"]["status"] == "active"
    probe = kg.mock.records()[-1]
    assert probe.key == good and probe.path.endswith("/models")

    result = kg.ok("POST", f"/api/keys/{bad_id}/test")
    assert result["ok"] is False and result["status"] == 401
    assert result["key"]["status"] == "invalid" and result["error"]
    assert [k["id"] for k in kg.ok("GET", "/api/keys", params={"status": "invalid"})["keys"]] == [
        bad_id
    ]
    assert {kg.used_key() for _ in range(4)} == {good}  # the invalid key is skipped at once

    # The key works again: a passing test brings it back.
    kg.mock.set_behavior(bad)
    result = kg.ok("POST", f"/api/keys/{bad_id}/test")
    assert result["ok"] is True and result["key"]["status"] == "active"
    assert {kg.used_key() for _ in range(4)} == {good, bad}

    # Provider-wide test: every non-disabled key.
    kg.mock.set_behavior(bad, status=403)
    kg.ok("PATCH", f"/api/keys/{good_id}", json={"status": "disabled"})
    results = kg.ok("POST", "/api/providers/cerebras/test")["results"]
    assert [(r["id"], r["ok"], r["status"]) for r in results] == [(bad_id, False, 403)]
    kg.ok("PATCH", f"/api/keys/{good_id}", json={"status": "active"})
    results = kg.ok("POST", "/api/providers/cerebras/test")["results"]
    assert sorted((r["id"], r["ok"]) for r in results) == [(good_id, True), (bad_id, False)]
    assert kg.ok("POST", "/api/providers/groq/test") == {"results": []}

    assert kg.api("POST", "/api/keys/987654/test").status_code == 404
    assert kg.api("POST", "/api/providers/nope/test").status_code == 404
    kg.assert_no_secrets()


# --- providers and config ---------------------------------------------------------------------


def test_provider_patch_applies_at_once(kg: Kg, gateway_factory: Any) -> None:
    kg.add(kg.secret())
    providers = {p["name"]: p for p in kg.ok("GET", "/api/providers")["providers"]}
    cerebras = providers["cerebras"]
    assert (cerebras["rps"], cerebras["burst"], cerebras["max_conn"]) == (4, 8, 6)
    assert cerebras["keys"] == {
        "active": 1,
        "cooling": 0,
        "invalid": 0,
        "exhausted": 0,
        "disabled": 0,
        "total": 1,
    }
    for field in ("base_url", "key_style", "queue", "default_model", "force_model", "builtin"):
        assert field in cerebras
    assert {"in_flight", "queued", "paused_for_s"} <= set(cerebras)
    assert "keys" not in json.dumps(providers["groq"]["keys"])  # counts, never a key list

    assert_bad(kg.api("PATCH", "/api/providers/cerebras", json={"rps": -1}), "rps")
    assert_bad(kg.api("PATCH", "/api/providers/cerebras", json={"rps": "fast"}), "rps")
    assert_bad(kg.api("PATCH", "/api/providers/cerebras", json={"rps": 2, "burst": 1.5}), "burst")
    assert_bad(kg.api("PATCH", "/api/providers/cerebras", json={"colour": "red"}), "colour")
    assert_bad(kg.api("PATCH", "/api/providers/cerebras", json={"base_url": "ftp://x"}), "base_url")
    assert_bad(kg.api("PATCH", "/api/providers/cerebras", content=b"rps=1"), "body")
    assert kg.api("PATCH", "/api/providers/nope", json={"rps": 1}).status_code == 404
    # A rejected PATCH changes nothing, not even its valid fields.
    assert kg.ok("GET", "/api/providers")["providers"][0]["rps"] == 4

    patched = kg.ok("PATCH", "/api/providers/cerebras", json={"rps": 1, "burst": "1"})
    assert (patched["rps"], patched["burst"]) == (1.0, 1)
    started = time.monotonic()
    for _ in range(3):
        assert kg.chat().status_code == 200
    assert time.monotonic() - started >= 1.5  # one token a second, bucket of one

    kg.ok("PATCH", "/api/providers/cerebras", json={"rps": 0, "max_conn": 0, "retries": 1})
    started = time.monotonic()
    for _ in range(5):
        assert kg.chat().status_code == 200
    assert time.monotonic() - started < 1.0  # rps 0 = no limit

    # An admin change survives a restart.
    kg.gw.stop()
    again = gateway_factory(data_dir=kg.gw.data_dir)
    doc = again.api("GET", "/api/providers").json()
    cerebras = next(p for p in doc["providers"] if p["name"] == "cerebras")
    assert (cerebras["rps"], cerebras["max_conn"], cerebras["retries"]) == (0, 0, 1)
    kg.assert_no_secrets()


def test_default_model(kg: Kg) -> None:
    kg.add(kg.secret())
    kg.add(kg.secret(), provider="groq")
    doc = kg.ok("PUT", "/api/config/default-model", json={"model": "dm-one"})
    assert doc == {"provider": "cerebras", "default_model": "dm-one", "force_model": False}

    assert kg.chat(model=None).status_code == 200
    assert json.loads(kg.mock.records()[-1].body)["model"] == "dm-one"
    assert kg.chat(model="mine").status_code == 200
    assert json.loads(kg.mock.records()[-1].body)["model"] == "mine"
    assert kg.chat("/v1/chat/completions", model=None).status_code == 200  # the default provider
    assert json.loads(kg.mock.records()[-1].body)["model"] == "dm-one"

    doc = kg.ok(
        "PUT",
        "/api/config/default-model",
        json={"model": "dm-two", "provider": "groq", "force": True},
    )
    assert doc == {"provider": "groq", "default_model": "dm-two", "force_model": True}
    assert kg.chat("/groq/v1/chat/completions", model="other").status_code == 200
    assert json.loads(kg.mock.records()[-1].body)["model"] == "dm-two"

    config = kg.ok("GET", "/api/config")
    assert config["providers"]["cerebras"] == {"default_model": "dm-one", "force_model": False}
    assert config["providers"]["groq"] == {"default_model": "dm-two", "force_model": True}
    assert config["default_provider"] == "cerebras" and config["proxy_auth"] is True
    assert config["admin_path"] == "/admin/" and config["flush_interval_ms"] == 5000
    assert {"version", "store", "shared_state"} <= set(config)

    assert_bad(kg.api("PUT", "/api/config/default-model", json={"model": 5}), "model")
    assert_bad(
        kg.api("PUT", "/api/config/default-model", json={"model": "x", "provider": "nope"}),
        "provider",
    )
    assert_bad(
        kg.api("PUT", "/api/config/default-model", json={"model": "x", "force": "yes"}), "force"
    )

    # Clearing it: the request goes without a model again.
    kg.ok("PUT", "/api/config/default-model", json={"model": ""})
    assert kg.chat(model=None).status_code == 200
    assert "model" not in json.loads(kg.mock.records()[-1].body)
    kg.assert_no_secrets()


# --- auth -------------------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return path.replace("{id}", "1").replace("{name}", "cerebras")


def test_no_admin_endpoint_answers_without_auth(gateway_factory: Any, mock: MockUpstream) -> None:
    # one wrong password per route: more routes than the default throttle's 20 a minute
    kg = Kg(gateway_factory(env={"KEYGATE_AUTH_FAILURES_PER_MIN": "100"}), mock)
    kg.add(kg.secret())
    doc = kg.ok("GET", "/api/openapi.json")
    routes = [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops]
    assert set(routes) == ADMIN_ROUTES
    for method, path in routes:
        if (method, path) == ("POST", "/api/session"):
            continue
        url = _concrete(path)
        body = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
        resp = kg.raw(method, url, **body)
        assert resp.status_code == 401, (method, path, resp.text)
        error_of(resp)
        forged = {"cookie": "keygate_session=1.2.3", "x-keygate-csrf": "1"}
        assert kg.raw(method, url, headers=forged, **body).status_code == 401, (method, path)
        proxy = {"Authorization": f"Bearer {kg.gw.password}"}
        assert kg.raw(method, url, headers=proxy, **body).status_code == 401, (method, path)
    assert (
        kg.raw("GET", "/api/keys", headers={"x-api-key": kg.gw.admin_password}).status_code == 401
    )
    assert kg.raw("GET", "/api/keys", params={"key": kg.gw.admin_password}).status_code == 401

    # Unknown admin paths: 401 before auth (no probing), 404 after.
    assert kg.raw("GET", "/api/secret-things").status_code == 401
    assert kg.raw("GET", "/api").status_code == 401
    resp = kg.api("GET", "/api/secret-things")
    assert resp.status_code == 404 and error_of(resp)["code"]
    assert kg.api("PUT", "/api/keys").status_code == 405
    kg.assert_no_secrets()
    kg.close()


def test_wrong_passwords_are_answered_at_once_then_throttled(kg: Kg) -> None:
    """Defaults: 20 wrong passwords per address, then 429 (tests/test_auth_hardening.py has the
    rest: parallel, rotating addresses, decay)."""
    started = time.monotonic()
    codes = [
        kg.raw("GET", "/api/keys", headers={"Authorization": f"Bearer wrong-{i}"}).status_code
        for i in range(19)
    ]
    # The login form shares the count.
    codes.append(kg.raw("POST", "/api/session", json={"password": "nope"}).status_code)
    assert codes == [401] * 20
    assert time.monotonic() - started < 10  # no sleeping on wrong passwords
    resp = kg.raw("POST", "/api/session", json={"password": "nope"})
    assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
    assert error_of(resp)["code"] == "too_many_attempts"
    # The right password is never throttled.
    kg.ok("GET", "/api/session")
    assert (
        kg.raw("POST", "/api/session", json={"password": kg.gw.admin_password}).status_code == 200
    )
    kg.assert_no_secrets()


def test_session_cookie_and_csrf(kg: Kg) -> None:
    assert kg.raw("POST", "/api/session", json={"password": "wrong"}).status_code == 401
    assert_bad(kg.raw("POST", "/api/session", json={}), "password")
    assert_bad(kg.raw("POST", "/api/session", content=b"password=x"), "body")
    resp = kg.raw("POST", "/api/session", json={"password": kg.gw.admin_password})
    assert resp.status_code == 200 and resp.json() == {"ok": True}
    set_cookie = resp.headers["set-cookie"]
    attrs = [a.strip().lower() for a in set_cookie.split(";")]
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
    assert "secure" not in attrs  # plain http here; behind a TLS proxy it is Secure
    behind_tls = kg.raw(
        "POST",
        "/api/session",
        json={"password": kg.gw.admin_password},
        headers={"x-forwarded-proto": "https"},
    )
    assert "secure" in [a.strip().lower() for a in behind_tls.headers["set-cookie"].split(";")]
    token = re.match(r"keygate_session=([^;]+)", set_cookie)
    assert token is not None
    cookie = {"cookie": f"keygate_session={token.group(1)}"}
    csrf = {**cookie, "x-keygate-csrf": "1"}

    assert kg.raw("GET", "/api/session", headers=cookie).json() == {"ok": True}
    assert kg.raw("GET", "/api/keys", headers=cookie).status_code == 200
    assert kg.raw("GET", "/api/stats", headers=cookie).status_code == 200

    key = {"provider": "cerebras", "key": kg.secret()}
    resp = kg.raw("POST", "/api/keys", headers=cookie, json=key)
    assert resp.status_code == 403 and error_of(resp)["code"]
    resp = kg.raw("POST", "/api/keys", headers=csrf, json=key)
    assert resp.status_code == 201
    key_id = resp.json()["id"]
    assert (
        kg.raw("PATCH", f"/api/keys/{key_id}", headers=cookie, json={"label": "x"}).status_code
        == 403
    )
    assert (
        kg.raw("PATCH", f"/api/keys/{key_id}", headers=csrf, json={"label": "x"}).status_code == 200
    )
    body = {"model": "m"}
    assert kg.raw("PUT", "/api/config/default-model", headers=cookie, json=body).status_code == 403
    assert kg.raw("DELETE", f"/api/keys/{key_id}", headers=cookie).status_code == 403
    assert kg.raw("DELETE", f"/api/keys/{key_id}", headers=csrf).status_code == 200

    tampered = {"cookie": f"keygate_session={token.group(1)[:-2]}00"}
    assert kg.raw("GET", "/api/keys", headers=tampered).status_code == 401

    resp = kg.raw("DELETE", "/api/session", headers=csrf)
    assert resp.status_code == 200 and "max-age=0" in resp.headers["set-cookie"].lower()
    assert kg.raw("GET", "/api/keys", headers=cookie).status_code == 401
    assert kg.raw("GET", "/api/session", headers=cookie).status_code == 401
    kg.assert_no_secrets()


# --- requests, stats, openapi -----------------------------------------------------------------


def test_requests_and_stats(gateway_factory: Any, mock: MockUpstream) -> None:
    # Counters flush only at shutdown here, so the live numbers must come from memory.
    kg = Kg(gateway_factory(env={"KV_FLUSH_INTERVAL_MS": "600000"}), mock)
    try:
        good, bad = kg.secret(), kg.secret("gsk")
        good_id = kg.add(good)
        kg.add(bad, provider="groq")
        mock.set_behavior(bad, status=400)  # the client's fault: relayed, no retry
        for _ in range(3):
            assert kg.chat().status_code == 200
        for _ in range(2):
            assert kg.chat("/groq/v1/chat/completions").status_code == 400

        recent = kg.ok("GET", "/api/requests")["requests"]
        assert len(recent) == 5
        assert [r["ts"] for r in recent] == sorted((r["ts"] for r in recent), reverse=True)
        assert [r["provider"] for r in recent] == [
            "groq",
            "groq",
            "cerebras",
            "cerebras",
            "cerebras",
        ]
        fields = {"ts", "provider", "method", "path", "model", "key_id", "key", "status"}
        assert fields | {
            "latency_ms",
            "retries",
            "error",
            "route",
            "translated",
            "client_name",
        } == set(recent[0])
        assert recent[0]["key"] == mask(bad) and recent[-1]["key"] == mask(good)
        assert recent[-1]["path"] == CHAT and recent[-1]["model"] == "m"

        def statuses(**params: Any) -> list[int]:
            return [r["status"] for r in kg.ok("GET", "/api/requests", params=params)["requests"]]

        assert statuses(provider="groq") == [400, 400]
        assert statuses(provider="cerebras") == [200, 200, 200]
        assert statuses(status="4xx") == [400, 400]
        assert statuses(status="400") == [400, 400]
        assert statuses(status="error") == [400, 400]
        assert statuses(status="2xx", provider="cerebras") == [200, 200, 200]
        assert statuses(status="5xx") == []
        assert statuses(provider="groq", status="2xx") == []
        assert statuses(limit=1) == [400]
        assert_bad(kg.api("GET", "/api/requests", params={"status": "bad"}), "status")
        assert_bad(kg.api("GET", "/api/requests", params={"limit": "x"}), "limit")

        def check_stats(requests: int, ok: int) -> dict[str, Any]:
            stats = kg.ok("GET", "/api/stats")
            totals = stats["totals"]
            assert (totals["requests"], totals["ok"], totals["err_4xx"]) == (requests, ok, 2)
            assert totals["keys"]["total"] == 2 and totals["keys"]["active"] == 2
            assert set(stats["providers"]) == {"cerebras", "groq"}  # keys or traffic only
            c = stats["providers"]["cerebras"]
            assert (c["requests"], c["ok"], c["err_4xx"], c["err_5xx"]) == (ok, ok, 0, 0)
            assert c["tokens_in"] > 0 and c["tokens_out"] > 0
            assert stats["providers"]["groq"]["err_4xx"] == 2
            assert len(c["timeline"]) == 120
            assert {"t", "rps", "errors", "p50", "p95"} == set(c["timeline"][-1])
            assert {"in_flight", "max_conn", "queued", "queue", "keys"} <= set(c)
            assert stats["since"] <= time.time()
            assert abs(time.time() - stats["since"] - stats["uptime_s"]) < 2, stats["uptime_s"]
            return stats

        stats = check_stats(5, 3)  # nothing flushed yet
        assert sum(p["rps"] for p in stats["providers"]["cerebras"]["timeline"]) == 3

        # A clean stop flushes; after the restart the all-time counters come from the store,
        # and new traffic adds to them whether or not it was flushed yet (never twice).
        kg.gw.stop()
        kg.switch(gateway_factory(data_dir=kg.gw.data_dir, env={"KV_FLUSH_INTERVAL_MS": "200"}))
        check_stats(5, 3)
        assert kg.ok("GET", "/api/requests") == {"requests": []}  # the ring is memory only
        assert kg.chat().status_code == 200
        check_stats(6, 4)

        async def flushed(store: Any) -> bool:  # the use is counted at the pick
            (rec,) = await store.get_keys([good_id])
            return bool(rec.use_count == 4)

        wait_for_store(kg.gw, flushed, 5, "the new request's use was flushed to the store")
        check_stats(6, 4)  # counted once: flushed now, and not added a second time
        kg.assert_no_secrets()
    finally:
        kg.close()


def test_outcome_counted_after_a_flush_still_reaches_the_store(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    kg = Kg(gateway_factory(env={"KV_FLUSH_INTERVAL_MS": "100"}), mock)
    try:
        key = kg.secret()
        key_id = kg.add(key)
        mock.set_behavior(key, delay_s=0.5)  # several flushes run while the request is upstream

        async def use_flushed(store: Any) -> bool:
            (rec,) = await store.get_keys([key_id])
            return bool(rec.use_count == 1)

        assert kg.chat().status_code == 200
        wait_for_store(kg.gw, use_flushed, 5, "the pick was flushed to the store")
        assert kg.gw.stop() == 0  # a clean stop flushes what is left

        async def stored(store: Any) -> tuple[int, int, bool]:
            (rec,) = await store.get_keys([key_id])
            return rec.use_count, rec.ok, rec.tokens_in > 0

        assert with_store(kg.gw, stored) == (1, 1, True)
    finally:
        kg.close()


def test_openapi_document(kg: Kg) -> None:
    resp = kg.api("GET", "/api/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    doc = json.loads(resp.text)
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"]
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == ADMIN_ROUTES
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["summary"] and op["responses"]
            for param in op.get("parameters", []):
                assert param["in"] in ("query", "path")

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    assert doc["paths"]["/api/session"]["post"]["security"] == []
    kg.assert_no_secrets()


@pytest.mark.slow
def test_import_100k_keys_through_the_api(kg: Kg) -> None:
    keys = [f"sk-bulk-{i:06d}-{secrets.token_hex(12)}" for i in range(100_000)]
    body = {"provider": "cerebras", "input": "\n".join(keys)}
    started = time.monotonic()
    doc = kg.ok("POST", "/api/keys/batch", json=body, timeout=120)
    took = time.monotonic() - started
    assert (doc["added"], doc["duplicate"], doc["invalid"]) == (100_000, 0, 0)
    assert len(doc["results"]) == 100_000 and keys[5] not in json.dumps(doc["results"][:10])
    started = time.monotonic()
    page = kg.ok("GET", "/api/keys", params={"provider": "cerebras"})
    list_took = time.monotonic() - started
    assert page["total"] == 100_000 and len(page["keys"]) == 50  # the default page
    assert kg.used_key() in set(keys)
    print(f"100k import via API: {took:.2f}s; list: {list_took * 1000:.0f} ms")
    # Over the limit: 413, not a crash.
    resp = kg.api(
        "POST", "/api/keys/batch", json={"provider": "cerebras", "input": "x" * (9 << 20)}
    )
    assert resp.status_code == 413


def test_prometheus_metrics_need_admin_auth_and_count_traffic(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": "sk-metrics-aaaa1111,sk-metrics-bbbb2222"})
    mock.push("sk-metrics-bbbb2222", status=401)
    with gw.client() as c:
        for _ in range(4):
            assert (
                c.post(
                    "/cerebras/v1/chat/completions", json={"model": "m"}, headers=gw.auth()
                ).status_code
                == 200
            )
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=gw.auth()).status_code == 401  # the proxy password
        r = c.get("/metrics", headers=gw.admin())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'keygate_requests_total{outcome="ok",provider="cerebras"} 4.0' in text
    assert 'keygate_keys{provider="cerebras",state="invalid"} 1.0' in text
    assert 'keygate_shared_state{state="local"} 1.0' in text
    assert "sk-metrics" not in text
