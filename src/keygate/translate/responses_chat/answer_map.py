"""A chat.completion as a `response`, and the `response` object and output items the stream
builds too."""

from __future__ import annotations

from typing import Any

from keygate.translate.responses_chat.request_map import ECHOED
from keygate.translate.tables import FINISH_TO_RESPONSE_STATUS
from keygate.translate.wire import Doc, new_id, now_s


def usage_of(usage: Any) -> Doc:
    if not isinstance(usage, dict):
        usage = {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    pdetails = usage.get("prompt_tokens_details")
    cdetails = usage.get("completion_tokens_details")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int((pdetails or {}).get("cached_tokens") or 0)
            if isinstance(pdetails, dict)
            else 0
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": int((cdetails or {}).get("reasoning_tokens") or 0)
            if isinstance(cdetails, dict)
            else 0
        },
        "total_tokens": prompt + completion,
    }


def response_doc(
    rid: str, created: int, echo: Doc, status: str, output: list[Doc], model: str
) -> Doc:
    """A `response` object around `output`."""
    doc: Doc = {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": model or echo.get("model") or "",
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "store": False,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": {},
        "usage": None,
    }
    for name in ECHOED:
        doc[name] = echo.get(name)
    doc["tool_choice"] = doc["tool_choice"] or "auto"
    doc["tools"] = doc["tools"] or []
    return doc


def set_finish(doc: Doc, finish: str | None) -> None:
    status, reason = FINISH_TO_RESPONSE_STATUS.get(finish or "stop", ("completed", None))
    doc["status"] = status
    doc["incomplete_details"] = {"reason": reason} if reason else None


def message_item(text: str, item_id: str, status: str = "completed") -> Doc:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def call_item(
    call_id: str, name: str, arguments: str, item_id: str, status: str, echo: Doc | None = None
) -> Doc:
    item = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    namespace = (echo or {}).get("namespaces", {}).get(name)
    if namespace:
        item["namespace"] = namespace  # a namespace's tool, flattened on the way out
    return item


def reasoning_item(text: str, item_id: str) -> Doc:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


def answer(doc: Doc, echo: Doc) -> Doc:
    """A chat.completion as a `response`."""
    choices = doc.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    output: list[Doc] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(reasoning, new_id("rs_")))
    text = msg.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(text, new_id("msg_")))
    for call in msg.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(
            call_item(
                str(call.get("id") or new_id("call_")),
                str(function.get("name", "")),
                str(function.get("arguments") or ""),
                new_id("fc_"),
                "completed",
                echo,
            )
        )
    out = response_doc(
        new_id("resp_"), now_s(), echo, "completed", output, str(doc.get("model") or "")
    )
    set_finish(out, choice.get("finish_reason"))
    out["usage"] = usage_of(doc.get("usage"))
    return out
