"""The Responses request as a Chat Completions request (the stateless subset), and what the
answer echoes of it."""

from __future__ import annotations

from typing import Any

from keygate.translate.errors import Untranslatable
from keygate.translate.tables import RESPONSES_ROLE_TO_CHAT
from keygate.translate.wire import Doc, new_id

CARRIED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "store",
        "previous_response_id",
        "user",
        "background",
        "truncation",
    }
)
LEFT_OUT = frozenset(
    {
        "metadata",
        "include",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "stream_options",
        "client_metadata",
    }
)
STATEFUL = ("conversation", "prompt")
# Tools OpenAI's servers run themselves.
HOSTED_TOOLS = frozenset(
    {"web_search", "web_search_preview", "file_search", "code_interpreter", "image_generation"}
)
# What a `response` object echoes of the request.
ECHOED = ("instructions", "max_output_tokens", "temperature", "top_p", "tool_choice", "tools")


class Stateful(Untranslatable):
    """A Responses feature that needs stored state keygate does not keep."""


def _check(doc: Doc) -> None:
    if doc.get("store") is True:
        raise Stateful(
            "store",
            "keygate serves the Responses API statelessly on this provider; send store: false",
        )
    if doc.get("previous_response_id"):
        raise Stateful(
            "previous_response_id",
            "keygate keeps no responses on this provider; send the whole conversation as input",
        )
    if doc.get("background"):
        raise Stateful("background", "background responses need stored state")
    for name in STATEFUL:
        if doc.get(name) is not None:
            raise Stateful(name, "needs state stored on OpenAI's servers")
    if doc.get("truncation") not in (None, "disabled"):
        raise Untranslatable("truncation", "only 'disabled' can be translated")
    for name in doc:
        if name not in CARRIED and name not in LEFT_OUT:
            raise Untranslatable(name, "has no equivalent on this provider's API")


def _part(part: Any, where: str) -> Doc:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise Untranslatable(f"{where}.image_url", "only images given by URL can be translated")
        image: Doc = {"url": url}
        if part.get("detail") in ("low", "high"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise Untranslatable(f"{where}.type", f"content type {kind!r} cannot be translated")


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content", "must be a string or a list of parts")
    parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                raise Untranslatable(f"{where}.output[{j}].type", "only text can be translated")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise Untranslatable(f"{where}.output", "must be a string or a list of text parts")


def _messages(doc: Doc) -> list[Doc]:
    messages: list[Doc] = []
    if doc.get("instructions"):
        messages.append({"role": "system", "content": str(doc["instructions"])})
    items = doc.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list):
        raise Untranslatable("input", "must be a string or a list of items")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise Untranslatable(where, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = RESPONSES_ROLE_TO_CHAT.get(item.get("role", ""))
            if role is None:
                raise Untranslatable(f"{where}.role", f"role {item.get('role')!r} is unknown")
            messages.append({"role": role, "content": _content(item.get("content"), where)})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id") or item.get("id") or new_id("call_")),
                "type": "function",
                "function": {
                    "name": str(item.get("name", "")),
                    "arguments": str(item.get("arguments") or "{}"),
                },
            }
            last = messages[-1] if messages else None
            if (
                last is not None
                and last["role"] == "assistant"
                and not isinstance(last.get("content"), list)
            ):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": _output_text(item.get("output", ""), where),
                }
            )
        elif kind == "reasoning":
            continue
        else:
            raise Untranslatable(f"{where}.type", f"input item {kind!r} cannot be translated")
    return messages


def _tools(tools: Any, namespaces: dict[str, str]) -> list[Doc]:
    """Function tools as Chat tools; a namespace's tools flattened (`namespaces` remembers
    whose they are, for the calls going back). Hosted tools (OpenAI runs them: web search,
    file search…) are offers a Chat provider cannot take up: left out beside other tools,
    refused when they are all the request offers."""
    if not isinstance(tools, list):
        raise Untranslatable("tools", "must be a list")
    out: list[Doc] = []
    hosted = 0
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str):
            raise Untranslatable(f"tools[{i}].type", "must be a string")
        if kind == "namespace":
            inner = tool.get("tools") if isinstance(tool.get("tools"), list) else []
            for j, member in enumerate(inner):
                if not isinstance(member, dict) or member.get("type") != "function":
                    raise Untranslatable(f"tools[{i}].tools[{j}].type", "only functions")
                namespaces[str(member.get("name", ""))] = str(tool.get("name", ""))
                out.append(_function(member))
            continue
        if kind in HOSTED_TOOLS:
            hosted += 1
            continue
        if kind != "function":
            raise Untranslatable(f"tools[{i}].type", f"tool type {kind!r} cannot be translated")
        out.append(_function(tool))
    if hosted and not out:
        raise Untranslatable("tools[0].type", "hosted tools cannot run on this provider")
    return out


def _function(tool: Doc) -> Doc:
    function: Doc = {"name": tool.get("name", "")}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise Untranslatable("tool_choice", "must be auto, none, required or a named function")


def _format(text: Any, chat: Doc) -> None:
    if not isinstance(text, dict):
        return
    fmt = text.get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return
    if fmt["type"] == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise Untranslatable("text.format.type", f"{fmt['type']!r} cannot be translated")


def request(doc: Doc) -> tuple[Doc, Doc]:
    """A Responses request as a Chat Completions request, and what the answer echoes."""
    _check(doc)
    chat: Doc = {"model": doc.get("model"), "messages": _messages(doc)}
    namespaces: dict[str, str] = {}
    if doc.get("tools"):
        chat["tools"] = _tools(doc["tools"], namespaces)
    if doc.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(doc["tool_choice"])
    if doc.get("max_output_tokens") is not None:
        chat["max_tokens"] = doc["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if doc.get(name) is not None:
            chat[name] = doc[name]
    reasoning = doc.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]
    _format(doc.get("text"), chat)
    if doc.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    echo = {name: doc.get(name) for name in ECHOED}
    echo["parallel_tool_calls"] = doc.get("parallel_tool_calls", True)
    echo["model"] = doc.get("model")
    echo["namespaces"] = namespaces
    return chat, echo
