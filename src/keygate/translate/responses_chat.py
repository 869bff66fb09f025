"""A Responses API client on a Chat Completions upstream (the stateless subset): the request to
Chat, the answer and its stream back to a `response` and its events.

Stateless only: `store: true`, `previous_response_id`, `conversation`, `background: true` and
stored prompts need a server that keeps responses, and are refused. Reasoning items the client
sends back (Codex does, encrypted) are the model's own and are not replayed to another
provider. A stream's `done` events and `response.completed` repeat the whole output, as the
protocol requires, so a Responses stream holds the answer's text (not the upstream's bytes).
"""

from __future__ import annotations

from typing import Any

from keygate.translate.errors import Untranslatable
from keygate.translate.tables import FINISH_TO_RESPONSE_STATUS, RESPONSES_ROLE_TO_CHAT
from keygate.translate.wire import Doc, Sink, Stage, call_key, new_id, now_s

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


def _finish(doc: Doc, finish: str | None) -> None:
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
    _finish(out, choice.get("finish_reason"))
    out["usage"] = usage_of(doc.get("usage"))
    return out


class ChatToResponses(Stage):
    """chat.completion.chunk events → the Responses streaming events: one output item open at a
    time (a message with one output_text part, or a function_call), opened with
    output_item.added, filled with deltas, closed with the `done` events."""

    __slots__ = (
        "created",
        "echo",
        "finish",
        "item",
        "items",
        "latest",
        "model",
        "pieces",
        "rid",
        "seq",
        "started",
        "tools",
        "usage",
    )

    def __init__(self, out: Sink, echo: Doc) -> None:
        super().__init__(out)
        self.echo = echo
        self.model = str(echo.get("model") or "")
        self.rid = new_id("resp_")
        self.created = now_s()
        self.seq = 0
        self.started = False
        self.items: list[Doc] = []  # finished output items
        self.item: Doc | None = None  # the open one
        self.pieces: list[str] = []  # its text or arguments so far
        self.tools: dict[Any, int] = {}  # a call's key (`call_key`) → its output index
        self.latest: dict[int, tuple[Any, Any]] = {}
        self.finish: str | None = None
        self.usage: Doc | None = None

    def _emit(self, kind: str, data: Doc) -> None:
        data["type"] = kind
        data["sequence_number"] = self.seq
        self.seq += 1
        self.out.event(kind, data)

    def _response(self, status: str) -> Doc:
        return response_doc(self.rid, self.created, self.echo, status, self.items, self.model)

    def _start(self, data: Doc) -> None:
        self.started = True
        self.model = str(data.get("model") or self.model)
        self._emit("response.created", {"response": self._response("in_progress")})
        self._emit("response.in_progress", {"response": self._response("in_progress")})

    def _open(self, item: Doc) -> None:
        self._close()
        self.item = item
        self.pieces = []
        index = len(self.items)
        self._emit("response.output_item.added", {"output_index": index, "item": dict(item)})
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            self._emit(
                "response.content_part.added",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
            )
        elif item["type"] == "reasoning":
            self._emit(
                "response.reasoning_summary_part.added",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                },
            )

    def _close(self) -> None:
        item = self.item
        if item is None:
            return
        self.item = None
        index = len(self.items)
        joined = "".join(self.pieces)
        self.pieces = []
        if item["type"] == "message":
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            self._emit("response.output_text.done", {**ids, "text": joined, "logprobs": []})
            part = {"type": "output_text", "text": joined, "annotations": []}
            self._emit("response.content_part.done", {**ids, "part": part})
            done = message_item(joined, item["id"])
        elif item["type"] == "reasoning":
            ids = {"item_id": item["id"], "output_index": index, "summary_index": 0}
            self._emit("response.reasoning_summary_text.done", {**ids, "text": joined})
            part = {"type": "summary_text", "text": joined}
            self._emit("response.reasoning_summary_part.done", {**ids, "part": part})
            done = reasoning_item(joined, item["id"])
        else:
            self._emit(
                "response.function_call_arguments.done",
                {"item_id": item["id"], "output_index": index, "arguments": joined},
            )
            done = call_item(
                item["call_id"], item["name"], joined, item["id"], "completed", self.echo
            )
        self._emit("response.output_item.done", {"output_index": index, "item": done})
        self.items.append(done)

    def event(self, name: str | None, data: Doc) -> None:
        if self.failed or self.finished:
            return
        if data.get("error"):
            err = data["error"]
            self.fail(str(err.get("message") if isinstance(err, dict) else err))
            return
        if not self.started:
            self._start(data)
        if data.get("usage"):
            self.usage = usage_of(data["usage"])
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._reasoning(reasoning)
            text = delta.get("content")
            if text:
                item = self.item
                if item is None or item["type"] != "message":
                    self._open(message_item("", new_id("msg_"), "in_progress") | {"content": []})
                    item = self.item
                assert item is not None
                self.pieces.append(text)
                self._emit(
                    "response.output_text.delta",
                    {
                        "item_id": item["id"],
                        "output_index": len(self.items),
                        "content_index": 0,
                        "delta": text,
                        "logprobs": [],
                    },
                )
            for position, call in enumerate(delta.get("tool_calls") or ()):
                self._tool_delta(call, position)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                self._close()

    def _reasoning(self, text: str) -> None:
        """The model's reasoning (`reasoning_content`) as a reasoning item's summary text."""
        if self.item is None or self.item["type"] != "reasoning":
            self._open({"id": new_id("rs_"), "type": "reasoning", "summary": []})
        assert self.item is not None
        self.pieces.append(text)
        self._emit(
            "response.reasoning_summary_text.delta",
            {
                "item_id": self.item["id"],
                "output_index": len(self.items),
                "summary_index": 0,
                "delta": text,
            },
        )

    def _tool_delta(self, call: Doc, position: int) -> None:
        key = call_key(call, position, self.latest)
        function = call.get("function") or {}
        at = self.tools.get(key)
        if at is None:
            item = call_item(
                str(call.get("id") or new_id("call_")),
                str(function.get("name", "")),
                "",
                new_id("fc_"),
                "in_progress",
                self.echo,
            )
            self._open(item)
            at = self.tools[key] = len(self.items)
        elif at != len(self.items) or self.item is None:
            self.fail("the upstream interleaved the arguments of parallel tool calls")
            return
        pieces = function.get("arguments")
        if pieces:
            assert self.item is not None
            self.pieces.append(pieces)
            self._emit(
                "response.function_call_arguments.delta",
                {"item_id": self.item["id"], "output_index": at, "delta": pieces},
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
        self._close()
        final = self._response("completed")
        _finish(final, self.finish)
        final["usage"] = self.usage or usage_of(None)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        self._emit(kind, {"response": final})
        self.out.done()

    def fail(self, message: str) -> None:
        if self.failed:
            return
        if not self.started:
            self._start({})
        self._close()
        failed = self._response("failed")
        failed["error"] = {"code": "server_error", "message": message}
        self._emit("response.failed", {"response": failed})
        super().fail(message)
