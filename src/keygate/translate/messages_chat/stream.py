"""The stream: chat.completion.chunk events as Messages streaming events."""

from __future__ import annotations

from typing import Any

from keygate.translate.messages_chat.answer_map import message_id, reasoning_of, usage_of
from keygate.translate.tables import FINISH_TO_STOP
from keygate.translate.wire import Doc, Sink, Stage, call_key, new_id


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
