"""`/v1/messages/count_tokens` for providers that have no such endpoint: a local estimate.

About four bytes of UTF-8 text per token (the figure tokenizers of English and code land near),
a few tokens of framing per message and tool, and Anthropic's own rule of thumb for images
(at most ~1,600 tokens each). An estimate, not a tokenizer: close enough to budget a context.
"""

from __future__ import annotations

from typing import Any

import orjson

from keygate.translate.errors import Untranslatable

BYTES_PER_TOKEN = 4
PER_MESSAGE = 4
PER_TOOL = 8
PER_IMAGE = 1600


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    return len(orjson.dumps(value))


def _block_tokens(block: Any) -> tuple[int, int]:
    """(text bytes, fixed tokens) of one content block."""
    if isinstance(block, str):
        return _text_bytes(block), 0
    if not isinstance(block, dict):
        return 0, 0
    kind = block.get("type")
    if kind == "text":
        return _text_bytes(block.get("text", "")), 0
    if kind == "image":
        return 0, PER_IMAGE
    if kind == "tool_use":
        return _text_bytes(block.get("name", "")) + _text_bytes(block.get("input") or {}), 0
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            size = fixed = 0
            for part in content:
                s, f = _block_tokens(part)
                size += s
                fixed += f
            return size, fixed
        return _text_bytes(content), 0
    if kind == "thinking":
        return _text_bytes(block.get("thinking", "")), 0
    return _text_bytes(block), 0


def estimate(doc: dict[str, Any]) -> int:
    """Input tokens of a Messages request (`count_tokens` body: model, system, messages, tools)."""
    messages = doc.get("messages")
    if not isinstance(messages, list):
        raise Untranslatable("messages", "must be a list")
    size = fixed = 0
    system = doc.get("system")
    if system:
        for block in system if isinstance(system, list) else [system]:
            s, f = _block_tokens(block)
            size += s
            fixed += f
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        fixed += PER_MESSAGE
        content = msg.get("content")
        for block in content if isinstance(content, list) else [content]:
            s, f = _block_tokens(block)
            size += s
            fixed += f
    tools = doc.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        fixed += PER_TOOL
        size += _text_bytes(tool)
    return max(1, (size + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN + fixed)
