"""The stream: chat.completion.chunk events as the Responses streaming events."""

from __future__ import annotations

from typing import Any

from keygate.translate.responses_chat.answer_map import (
    call_item,
    message_item,
    reasoning_item,
    response_doc,
    set_finish,
    usage_of,
)
from keygate.translate.wire import Doc, Sink, Stage, call_key, new_id, now_s


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
        set_finish(final, self.finish)
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
