"""A Chat Completions client on an Anthropic Messages upstream: the request to Messages, the
answer and its stream back to Chat Completions.

Knowingly left out (hints that change nothing Messages could act on): `store`, `metadata`,
`service_tier`, `prompt_cache_key`, `safety_identifier`, `reasoning_effort`. Parameters with
no Messages equivalent are accepted only at their neutral value (`n: 1`, penalties 0, …).
"""

from __future__ import annotations

from typing import Any

import orjson

from keygate.translate.errors import Untranslatable
from keygate.translate.tables import CHAT_TOOL_CHOICE_TO_ANTHROPIC, STOP_TO_FINISH
from keygate.translate.wire import Doc, Sink, Stage, new_id, now_s

DEFAULT_MAX_TOKENS = 4096  # Messages requires max_tokens; Chat clients often leave it out
CARRIED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
    }
)
LEFT_OUT = frozenset(
    {
        "store",
        "metadata",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "reasoning_effort",
    }
)
# Accepted only when they ask for nothing (None always passes).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "seed": (),
    "response_format": ({"type": "text"},),
}


def _check_fields(doc: Doc) -> None:
    for name, value in doc.items():
        if name in CARRIED or name in LEFT_OUT:
            continue
        if name in NEUTRAL:
            if value is None or value in NEUTRAL[name]:
                continue
            raise Untranslatable(name, "has no equivalent on Anthropic's Messages API")
        raise Untranslatable(name, "has no equivalent on Anthropic's Messages API")


def image_block(part: Doc, where: str) -> Doc:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise Untranslatable(f"{where}.image_url.url", "an image part needs a URL")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64":
            raise Untranslatable(f"{where}.image_url.url", "a data: URL must be base64")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type or "image/png", "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Untranslatable(f"{where}.image_url.url", "must be an http(s) or base64 data: URL")


def _text(content: Any, where: str) -> str:
    """A system/developer/tool content as text."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content", "must be a string or a list of parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise Untranslatable(f"{where}.content[{j}].type", f"{kind!r} is not text")
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def _user_blocks(content: Any, where: str) -> list[Doc]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content", "must be a string or a list of parts")
    blocks: list[Doc] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(image_block(part, at))
        else:
            raise Untranslatable(f"{at}.type", f"content type {kind!r} cannot be translated")
    return blocks


def _assistant_blocks(msg: Doc, where: str) -> list[Doc]:
    if msg.get("function_call"):
        raise Untranslatable(f"{where}.function_call", "legacy function calls: use tool_calls")
    content = msg.get("content")
    blocks: list[Doc] = []
    if isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "refusal"):
                text = part.get("text") or part.get("refusal")
                if text:
                    blocks.append({"type": "text", "text": str(text)})
            else:
                raise Untranslatable(f"{where}.content[{j}].type", f"{kind!r} cannot be translated")
    elif isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content is not None:
        raise Untranslatable(f"{where}.content", "must be a string, a list of parts or null")
    for k, call in enumerate(msg.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{k}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise Untranslatable(f"{at}.type", "only function tool calls can be translated")
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            raise Untranslatable(f"{at}.function.arguments", "is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise Untranslatable(f"{at}.function.arguments", "must be a JSON object")
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or new_id("toolu_")),
                "name": str(function.get("name", "")),
                "input": parsed,
            }
        )
    return blocks


def _append(messages: list[Doc], role: str, blocks: list[Doc]) -> None:
    """Consecutive turns of one role become one (tool results of parallel calls must share
    the user turn after the calls)."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _tools(tools: Any) -> list[Doc]:
    if not isinstance(tools, list):
        raise Untranslatable("tools", "must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise Untranslatable(f"tools[{i}].type", "only function tools can be translated")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise Untranslatable(f"tools[{i}].function", "must be an object")
        item: Doc = {"name": function.get("name", "")}
        if function.get("description"):
            item["description"] = function["description"]
        item["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        out.append(item)
    return out


def _tool_choice(choice: Any) -> Doc:
    if isinstance(choice, str):
        mapped = CHAT_TOOL_CHOICE_TO_ANTHROPIC.get(choice)
        if mapped is None:
            raise Untranslatable("tool_choice", f"{choice!r} cannot be translated")
        return {"type": mapped}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise Untranslatable("tool_choice", "must be auto, required, none or a named function")


def request(doc: Doc) -> tuple[Doc, bool]:
    """A Chat Completions request as a Messages request, and whether the client asked for
    usage in its stream."""
    _check_fields(doc)
    history = doc.get("messages")
    if not isinstance(history, list):
        raise Untranslatable("messages", "must be a list")
    system: list[str] = []
    messages: list[Doc] = []
    for i, msg in enumerate(history):
        where = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            text = _text(msg.get("content"), where)
            if text:
                system.append(text)
        elif role == "user":
            _append(messages, "user", _user_blocks(msg.get("content"), where))
        elif role == "assistant":
            _append(messages, "assistant", _assistant_blocks(msg, where))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": str(msg.get("tool_call_id", "")),
                "content": _text(msg.get("content"), where),
            }
            _append(messages, "user", [result])
        else:
            raise Untranslatable(f"{where}.role", f"role {role!r} cannot be translated")
    out: Doc = {"model": doc.get("model"), "messages": messages}
    if system:
        out["system"] = "\n\n".join(system)
    limit = doc.get("max_completion_tokens") or doc.get("max_tokens")
    out["max_tokens"] = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
    for name in ("temperature", "top_p"):
        if doc.get(name) is not None:
            out[name] = doc[name]
    stop = doc.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if doc.get("tools"):
        out["tools"] = _tools(doc["tools"])
    choice = _tool_choice(doc["tool_choice"]) if doc.get("tool_choice") is not None else None
    if doc.get("parallel_tool_calls") is False:
        choice = choice or {"type": "auto"}
        choice["disable_parallel_tool_use"] = True
    if choice is not None and (out.get("tools") or choice["type"] == "none"):
        out["tool_choice"] = choice
    if isinstance(doc.get("user"), str) and doc["user"]:
        out["metadata"] = {"user_id": doc["user"]}
    include_usage = False
    if doc.get("stream"):
        out["stream"] = True
        opts = doc.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    return out, include_usage


def usage_of(usage: Any) -> Doc:
    """Anthropic usage → Chat usage (cache reads and writes are prompt tokens too)."""
    if not isinstance(usage, dict):
        usage = {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached
    prompt += int(usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_id(message_id: Any) -> str:
    return "chatcmpl-" + str(message_id or new_id(""))


def answer(doc: Doc, model: str) -> Doc:
    """A Messages answer as a chat.completion."""
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[Doc] = []
    for block in doc.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id") or new_id("call_"),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: Doc = {"role": "assistant", "content": "".join(texts) if texts else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    message["refusal"] = None
    stop = doc.get("stop_reason") or "end_turn"
    return {
        "id": chat_id(doc.get("id")),
        "object": "chat.completion",
        "created": now_s(),
        "model": doc.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": STOP_TO_FINISH.get(stop, "stop"),
            }
        ],
        "usage": usage_of(doc.get("usage")),
    }


class MessagesToChat(Stage):
    """Anthropic stream events → chat.completion.chunk events: text and thinking deltas as
    content/reasoning_content, each tool_use block as one `tool_calls` index whose
    input_json_delta pieces are its `arguments` deltas; the final usage chunk only when the
    client asked for it (`stream_options.include_usage`)."""

    __slots__ = ("created", "id", "include_usage", "model", "tool_index", "tools", "usage")

    def __init__(self, out: Sink, model: str, include_usage: bool) -> None:
        super().__init__(out)
        self.model = model
        self.include_usage = include_usage
        self.id = ""
        self.created = now_s()
        self.tools: dict[int, int] = {}  # Anthropic block index → tool_calls index
        self.tool_index = 0
        self.usage: Doc = {}

    def _chunk(self, delta: Doc, finish: str | None = None) -> None:
        self.out.event(
            None,
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            },
        )

    def event(self, name: str | None, data: Doc) -> None:
        if self.failed or self.finished:
            return
        kind = data.get("type") or name
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = chat_id(message.get("id"))
            self.model = message.get("model") or self.model
            self.usage = dict(message.get("usage") or {})
            self._chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                at = self.tools[data.get("index", -1)] = self.tool_index
                self.tool_index += 1
                call = {
                    "index": at,
                    "id": block.get("id") or new_id("call_"),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""},
                }
                self._chunk({"tool_calls": [call]})
            elif block.get("type") == "text" and block.get("text"):
                self._chunk({"content": block["text"]})
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                self._chunk({"content": delta.get("text", "")})
            elif dtype == "input_json_delta":
                call_at = self.tools.get(data.get("index", -1))
                if call_at is not None and delta.get("partial_json"):
                    piece = {"index": call_at, "function": {"arguments": delta["partial_json"]}}
                    self._chunk({"tool_calls": [piece]})
            elif dtype == "thinking_delta":
                self._chunk({"reasoning_content": delta.get("thinking", "")})
        elif kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, dict):
                self.usage.update({k: v for k, v in usage.items() if v is not None})
            stop = (data.get("delta") or {}).get("stop_reason") or "end_turn"
            self._chunk({}, STOP_TO_FINISH.get(stop, "stop"))
        elif kind == "message_stop":
            self.finished = True
            if self.include_usage:
                self.out.event(
                    None,
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_of(self.usage),
                    },
                )
            self.out.done()
        elif kind == "error":
            err = data.get("error") or {}
            self.fail(str(err.get("message") or err.get("type") or "upstream error"))
        # ping, content_block_stop and unknown events carry nothing for a Chat client

    def done(self) -> None:
        if not self.finished:
            self.fail("the upstream stream ended before the answer was complete")
