"""A mistyped model: the upstream's 404 for it gains keygate's "did you mean" (the closest names
of the model list keygate knows: the providers' cached lists, their config `models:`, the
aliases); a provider with `strict_models: true` answers 404 `model_not_found` itself, in the
client's API shape, and sends nothing upstream for a model it does not list."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keygate.testing.mock_upstream import MockUpstream

CEREBRAS = "csk-suggest-aaaaaaaa0001"
GROQ = "gsk_suggest-aaaaaaaa0001"
OPENAI = "sk-suggest-aaaaaaaaaaaa0001"
LISTED = ["gpt-4o", "gpt-4o-mini", "llama3.1-8b", "qwen-3-32b"]
MODELS = {"fast": "groq/llama3.1-8b"}


def _not_found(model: str) -> dict[str, Any]:
    """What an OpenAI-compatible upstream answers for a model it does not have."""
    return {
        "error": {
            "message": f"The model `{model}` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


def _chat(gw: Any, path: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if path.endswith("/messages"):
        body["max_tokens"] = 16
    return httpx.post(gw.url + path, json=body, headers=gw.auth(), timeout=10)


def _gateway(gateway_factory: Any, mock: MockUpstream, strict: tuple[str, ...] = ()) -> Any:
    mock.set_behavior(None, models=LISTED)
    providers = {name: {"strict_models": True} for name in strict}
    return gateway_factory(
        env={"CEREBRAS_API_KEYS": CEREBRAS, "GROQ_API_KEYS": GROQ, "OPENAI_API_KEYS": OPENAI},
        config={"models": MODELS, "providers": providers},
    )


def _chats(mock: MockUpstream) -> int:
    return sum(1 for r in mock.records() if r.method == "POST")


def test_an_upstream_404_for_a_model_says_did_you_mean(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    gw = _gateway(gateway_factory, mock)
    assert httpx.get(gw.url + "/v1/models", headers=gw.auth()).status_code == 200  # cached

    # the unified endpoint: a plain name went to the default provider as it came
    mock.push(CEREBRAS, status=404, body=_not_found("gtp-4o"))
    r = _chat(gw, "/v1/chat/completions", "gtp-4o")
    assert r.status_code == 404
    assert mock.records()[-1].method == "POST"  # it did go upstream (the default behaviour)
    error = r.json()["error"]
    assert error["code"] == "model_not_found"  # the upstream's answer, kept
    assert error["message"].startswith("The model `gtp-4o` does not exist")
    # names as the unified endpoint takes them: the default provider's plain, another's
    # with its prefix
    assert "(did you mean: gpt-4o, groq/gpt-4o, openai/gpt-4o?)" in error["message"], error

    mock.push(GROQ, status=404, body=_not_found("qwen-3-23b"))
    r = _chat(gw, "/v1/chat/completions", "groq/qwen-3-23b")
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "(did you mean: groq/qwen-3-32b, qwen-3-32b, openai/qwen-3-32b?)" in message, message

    # a prefix route: that provider's own names
    mock.push(GROQ, status=404, body=_not_found("lama3.1-8b"))
    r = _chat(gw, "/groq/v1/chat/completions", "lama3.1-8b")
    assert r.status_code == 404
    assert "did you mean: llama3.1-8b?" in r.json()["error"]["message"], r.text

    # an Anthropic client reads it in its own shape (the answer translated)
    mock.push(CEREBRAS, status=404, body=_not_found("gpt-4o-mimi"))
    r = _chat(gw, "/v1/messages", "gpt-4o-mimi")
    assert r.status_code == 404
    doc = r.json()
    assert doc["type"] == "error"
    message = doc["error"]["message"]
    assert "(did you mean: gpt-4o-mini, groq/gpt-4o-mini, openai/gpt-4o-mini?)" in message

    # nothing close: the upstream's answer as it was, byte for byte
    mock.push(CEREBRAS, status=404, body=_not_found("zzzz"))
    r = _chat(gw, "/v1/chat/completions", "zzzz")
    assert r.status_code == 404
    assert r.json() == _not_found("zzzz")


def test_strict_models_answers_404_without_sending_anything(
    gateway_factory: Any, mock: MockUpstream
) -> None:
    gw = _gateway(gateway_factory, mock, strict=("cerebras", "openai"))

    # the first request waits for the provider's list (the model list, nothing else)
    r = _chat(gw, "/v1/chat/completions", "gtp-4o")
    assert r.status_code == 404, r.text
    assert _chats(mock) == 0
    assert r.headers["x-should-retry"] == "false"
    error = r.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "not_found_error"
    # (groq's list was never asked for: only the names keygate knows are suggested)
    assert error["message"] == "provider 'cerebras' has no model 'gtp-4o'; did you mean: gpt-4o?"

    for path, model in [
        ("/v1/chat/completions", "nosuch/foo"),  # no such provider: the default one's name
        ("/cerebras/v1/chat/completions", "lama3.1-8b"),
    ]:
        r = _chat(gw, path, model)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_found"
    assert "did you mean: llama3.1-8b?" in r.json()["error"]["message"]

    # an Anthropic client gets Anthropic's shape
    r = _chat(gw, "/v1/messages", "gtp-4o")
    assert r.status_code == 404
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "not_found_error"
    assert "did you mean: gpt-4o" in r.json()["error"]["message"]
    assert _chats(mock) == 0

    # a provider/model route to a strict provider: the merged list's names
    r = _chat(gw, "/v1/chat/completions", "openai/gpt-4p")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["message"] == (
        "provider 'openai' has no model 'gpt-4p';"
        " did you mean: openai/gpt-4o, gpt-4o, openai/gpt-4o-mini?"
    )
    assert _chats(mock) == 0

    # a listed model goes as before; a provider without strict_models passes any name on
    assert _chat(gw, "/v1/chat/completions", "gpt-4o").status_code == 200
    assert _chat(gw, "/v1/chat/completions", "openai/gpt-4o-mini").status_code == 200
    assert _chat(gw, "/groq/v1/chat/completions", "whatever").status_code == 200
    assert _chat(gw, "/v1/chat/completions", "fast").status_code == 200  # groq's, not strict
    assert _chats(mock) == 4


def test_strict_models_setting_is_checked(tmp_path: Any) -> None:
    from keygate.config.settings import ConfigError, load_settings

    path = tmp_path / "keygate.yaml"
    path.write_text("providers:\n  groq:\n    strict_models: true\n")
    s = load_settings({}, str(path))
    assert s.providers["groq"].strict_models and not s.providers["cerebras"].strict_models
    path.write_text("providers:\n  groq:\n    strict_models: sometimes\n")
    with pytest.raises(ConfigError, match="strict_models"):
        load_settings({}, str(path))
