"""An Anthropic Messages client on a Chat Completions upstream: the request to Chat, the answer
and its stream back to Messages.

Deliberately not carried over (they change nothing the other family could act on): the
model's own `thinking` blocks in the history, `cache_control` hints, `metadata`, the
`thinking` / `service_tier` / `context_management` settings and `output_config.effort`.
Everything else that has no Chat equivalent is refused with a 400 naming it.
"""

from __future__ import annotations

from typing import Any

import orjson

from keygate.translate.errors import Untranslatable
from keygate.translate.tables import ANTHROPIC_TOOL_CHOICE_TO_CHAT, FINISH_TO_STOP
from keygate.translate.wire import Doc, Sink, Stage, call_key, new_id

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


def wants_thinking(doc: Doc) -> bool:
    """Thinking blocks only for a client that asked for them, as Anthropic's API does."""
    thinking = doc.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


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


class ChatToMessages(Stage):
    """chat.completion.chunk events → message_start, content blocks, message_delta,
    message_stop. One block is open at a time; a tool call opens a tool_use block, its
    argument pieces become input_json_delta. The closing message_delta waits for [DONE] (the
    usage chunk comes after the finish_reason)."""

    __slots__ = (
        "block",
        "finish",
        "index",
        "latest",
        "model",
        "started",
        "thinking",
        "tools",
        "usage",
    )

    def __init__(self, out: Sink, model: str, thinking: bool = False) -> None:
        super().__init__(out)
        self.model = model
        self.thinking = thinking  # reasoning deltas become a thinking block (client asked)
        self.started = False
        self.index = -1  # the Anthropic index of the open block, -1 none
        self.block = ""  # "text" | "thinking" | "tool" | ""
        self.tools: dict[Any, int] = {}  # a call's key (`call_key`) → its block index
        self.latest: dict[int, tuple[Any, Any]] = {}
        self.finish: str | None = None
        self.usage: Doc = {"input_tokens": 0, "output_tokens": 0}

    def _start(self, data: Doc) -> None:
        self.started = True
        self.out.event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id(data.get("id")),
                    "type": "message",
                    "role": "assistant",
                    "model": data.get("model") or self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        )

    def _close_block(self) -> None:
        if self.block:
            self.out.event(
                "content_block_stop", {"type": "content_block_stop", "index": self.index}
            )
            self.block = ""

    def _open(self, kind: str, block: Doc) -> None:
        self._close_block()
        self.index += 1
        self.block = kind
        self.out.event(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def event(self, name: str | None, data: Doc) -> None:
        if self.failed or self.finished:
            return
        if data.get("error"):
            self.fail(_error_text(data["error"]))
            return
        if not self.started:
            self._start(data)
        if data.get("usage"):
            self.usage = usage_of(data["usage"])
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = reasoning_of(delta) if self.thinking else ""
            if reasoning:
                if self.block != "thinking":
                    self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                self.out.event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self.index,
                        "delta": {"type": "thinking_delta", "thinking": reasoning},
                    },
                )
            text = delta.get("content")
            if text:
                if self.block != "text":
                    self._open("text", {"type": "text", "text": ""})
                self.out.event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self.index,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            for position, call in enumerate(delta.get("tool_calls") or ()):
                self._tool_delta(call, position)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                self._close_block()

    def _tool_delta(self, call: Doc, position: int) -> None:
        key = call_key(call, position, self.latest)
        function = call.get("function") or {}
        at = self.tools.get(key)
        if at is None:
            self._open(
                "tool",
                {
                    "type": "tool_use",
                    "id": call.get("id") or new_id("toolu_"),
                    "name": function.get("name", ""),
                    "input": {},
                },
            )
            at = self.tools[key] = self.index
        elif at != self.index or self.block != "tool":
            # a call resumed after another began: a Messages block cannot reopen
            self.fail("the upstream interleaved the arguments of parallel tool calls")
            return
        pieces = function.get("arguments")
        if pieces:
            self.out.event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": at,
                    "delta": {"type": "input_json_delta", "partial_json": pieces},
                },
            )

    def done(self) -> None:
        if self.failed or self.finished:
            return
        if self.finish is None:
            self.fail("the upstream stream ended before the answer was complete")
            return
        self.finished = True
        if not self.started:
            self._start({})
        self._close_block()
        self.out.event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": FINISH_TO_STOP.get(self.finish, "end_turn"),
                    "stop_sequence": None,
                },
                "usage": self.usage,
            },
        )
        self.out.event("message_stop", {"type": "message_stop"})
        self.out.done()


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or "upstream error")
    return str(err)
