"""A chat.completion as a Messages answer, and the pieces of it the stream reuses (usage, the
message id, the reasoning text)."""

from __future__ import annotations

from typing import Any

import orjson

from keygate.translate.tables import FINISH_TO_STOP
from keygate.translate.wire import Doc, new_id


def parse_arguments(text: Any) -> Any:
    """Tool arguments as the object the client expects; text that is not JSON stays visible."""
    if isinstance(text, dict):
        return text
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"arguments": value}


def usage_of(usage: Any) -> Doc:
    """Chat usage → Anthropic usage (cached prompt tokens reported apart, as Anthropic does)."""
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    out: Doc = {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def message_id(chat_id: Any) -> str:
    text = str(chat_id or "")
    return text if text.startswith("msg_") else ("msg_" + text if text else new_id("msg_"))


def reasoning_of(message: Doc) -> str:
    """The reasoning text providers put beside the answer (`reasoning_content`, `reasoning`)."""
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


def answer(doc: Doc, model: str, thinking: bool = False) -> Doc:
    """A chat.completion as a Messages answer."""
    choices = doc.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    content: list[Doc] = []
    reasoning = reasoning_of(msg) if thinking else ""
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = msg.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_id("toolu_"),
                "name": function.get("name", ""),
                "input": parse_arguments(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    return {
        "id": message_id(doc.get("id")),
        "type": "message",
        "role": "assistant",
        "model": doc.get("model") or model,
        "content": content,
        "stop_reason": FINISH_TO_STOP.get(finish or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": usage_of(doc.get("usage")),
    }
