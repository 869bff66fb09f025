"""A provider without a single key says so, on the one endpoint as on its prefix route."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from harness import PASSWORD

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/groq/v1/chat/completions", "llama-3.1-8b-instant"),  # the prefix route
        ("/v1/chat/completions", "groq/llama-3.1-8b-instant"),  # provider/model
        ("/v1/chat/completions", "quick"),  # an alias to it
        ("/v1/chat/completions", "chain"),  # a group whose last target it is
        ("/v1/messages", "groq/llama-3.1-8b-instant"),  # another family, translated
    ],
)
def test_a_provider_without_keys_says_none_is_configured(
    gateway_factory: Any, path: str, model: str
) -> None:
    config = {
        "models": {
            "quick": "groq/llama-3.1-8b-instant",
            "chain": {"targets": ["xai/grok-2", "groq/llama-3.1-8b-instant"]},
        }
    }
    gw = gateway_factory(env={"CEREBRAS_API_KEYS": "csk-only-cerebras-0001"}, config=config)
    body = {**CHAT, "model": model, "max_tokens": 16}
    headers = {"Authorization": f"Bearer {PASSWORD}"}
    r = httpx.post(f"{gw.url}{path}", json=body, headers=headers, timeout=10)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    message = error["message"]
    assert message.startswith("no API key configured for provider '"), message
    assert "invalid, exhausted or disabled" not in message
    if path.startswith("/v1/chat"):
        assert error["code"] == "no_keys"
