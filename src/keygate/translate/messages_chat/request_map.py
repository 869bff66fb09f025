"""The Messages request as a Chat Completions request: what is carried over, what is knowingly
left out, and whether the client asked for thinking blocks."""

from __future__ import annotations

from typing import Any

import orjson

from keygate.translate.errors import Untranslatable
from keygate.translate.tables import ANTHROPIC_TOOL_CHOICE_TO_CHAT
from keygate.translate.wire import Doc

# Top-level fields: carried over (by the code below) or knowingly left out.
CARRIED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "output_config",
    }
)
LEFT_OUT = frozenset(
    {
        "metadata",
        "thinking",
        "service_tier",
        "context_management",
        "cache_control",
        "diagnostics",
        "inference_geo",
        "speed",
        "user_profile_id",
        "workspace_id",
    }
)
SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def check_fields(doc: Doc, carried: frozenset[str], left_out: frozenset[str]) -> None:
    for name in doc:
        if name not in carried and name not in left_out:
            raise Untranslatable(name, "has no equivalent on this provider's API")


def _text_of(blocks: Any, where: str) -> str:
    """System text: a string, or text blocks joined."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise Untranslatable(where, "must be a string or a list of text blocks")
    parts = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Untranslatable(f"{where}[{i}].type", "only text blocks can be translated")
        parts.append(str(block.get("text", "")))
    return "\n\n".join(parts)


def image_part(block: Doc, where: str) -> Doc:
    source = block.get("source")
    if not isinstance(source, dict):
        raise Untranslatable(f"{where}.source", "an image needs a source")
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif kind == "url":
        url = str(source.get("url", ""))
    else:
        raise Untranslatable(f"{where}.source.type", f"image source {kind!r} cannot be translated")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: Doc, where: str, images: list[Doc]) -> Doc:
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image":
                images.append(image_part(part, f"{where}.content[{k}]"))
            else:
                raise Untranslatable(
                    f"{where}.content[{k}].type", f"{kind!r} in a tool result cannot be translated"
                )
        content = "\n".join(texts)
    elif not isinstance(content, str):
        raise Untranslatable(f"{where}.content", "must be a string or a list of blocks")
    if block.get("is_error"):
        content = "Error: " + content
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": content}


def _user(msg: Doc, where: str, out: list[Doc]) -> None:
    content = msg.get("content")
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content", "must be a string or a list of blocks")
    parts: list[Doc] = []
    images: list[Doc] = []  # images inside tool results: Chat tool messages carry text only
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(image_part(block, at))
        elif kind == "tool_result":
            # tool messages must follow the assistant's calls at once, before any user text
            out.append(_tool_result(block, at, images))
        elif kind in SKIPPED_BLOCKS:
            continue
        else:
            raise Untranslatable(f"{at}.type", f"content type {kind!r} cannot be translated")
    parts += images
    if not parts:
        return
    if all(p["type"] == "text" for p in parts):
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
    else:
        out.append({"role": "user", "content": parts})


def _assistant(msg: Doc, where: str, out: list[Doc]) -> None:
    content = msg.get("content")
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content", "must be a string or a list of blocks")
    texts: list[str] = []
    calls: list[Doc] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": arguments},
                }
            )
        elif kind in SKIPPED_BLOCKS:
            continue
        else:
            raise Untranslatable(
                f"{where}.content[{j}].type", f"content type {kind!r} cannot be translated"
            )
    message: Doc = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    out.append(message)


def _tools(tools: Any) -> list[Doc]:
    if not isinstance(tools, list):
        raise Untranslatable("tools", "must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise Untranslatable(f"tools[{i}]", "must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise Untranslatable(f"tools[{i}].type", f"server tool {kind!r} cannot be translated")
        function: Doc = {"name": tool.get("name", "")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, chat: Doc) -> None:
    if not isinstance(choice, dict) or choice.get("type") not in ANTHROPIC_TOOL_CHOICE_TO_CHAT:
        raise Untranslatable("tool_choice.type", "must be auto, any, tool or none")
    mapped = ANTHROPIC_TOOL_CHOICE_TO_CHAT[choice["type"]]
    if mapped == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
    else:
        chat["tool_choice"] = mapped
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def request(doc: Doc) -> Doc:
    """A Messages request as a Chat Completions request."""
    check_fields(doc, CARRIED, LEFT_OUT)
    messages: list[Doc] = []
    system = doc.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    history = doc.get("messages")
    if not isinstance(history, list):
        raise Untranslatable("messages", "must be a list")
    for i, msg in enumerate(history):
        where = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "user":
            _user(msg, where, messages)
        elif role == "assistant":
            _assistant(msg, where, messages)
        elif role == "system":  # a system turn mid-conversation (a beta of Messages)
            messages.append({"role": "system", "content": _text_of(msg.get("content"), where)})
        else:
            raise Untranslatable(f"{where}.role", f"role {role!r} cannot be translated")
    chat: Doc = {"model": doc.get("model"), "messages": messages}
    for name in ("max_tokens", "temperature", "top_p"):
        if doc.get(name) is not None:
            chat[name] = doc[name]
    stop = doc.get("stop_sequences")
    if stop:
        chat["stop"] = stop
    if doc.get("tools"):
        chat["tools"] = _tools(doc["tools"])
    if doc.get("tool_choice") is not None:
        _tool_choice(doc["tool_choice"], chat)
    if doc.get("output_config"):
        _output_config(doc["output_config"], chat)
    if doc.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _output_config(config: Any, chat: Doc) -> None:
    """A JSON-schema `format` → response_format. `effort` is a hint left out: Claude Code
    always sends it, and most Chat models refuse `reasoning_effort`."""
    if not isinstance(config, dict):
        raise Untranslatable("output_config", "must be an object")
    fmt = config.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            raise Untranslatable("output_config.format.type", "only json_schema can be translated")
        schema = {"name": "output", "schema": fmt.get("schema") or {}, "strict": True}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}


def wants_thinking(doc: Doc) -> bool:
    """Thinking blocks only for a client that asked for them, as Anthropic's API does."""
    thinking = doc.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
