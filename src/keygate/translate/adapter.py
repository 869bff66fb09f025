"""The seam between the request path and the translators: one `Adapter` per translated
request, chosen once from the client's family (by path) and the provider's family.

`adapter_for` answers None when both speak the same family, and then nothing of this module
runs for the request. Otherwise the adapter turns the request body into the upstream's,
the whole answer or the stream back into the client's, and an upstream refusal into the
client's error shape; `client` is the dialect keygate's own errors take for this request.
"""

from __future__ import annotations

from typing import Any

import orjson

from keygate.dialects import Dialect
from keygate.dialects.anthropic import ANTHROPIC, Anthropic
from keygate.dialects.openai import OPENAI
from keygate.translate import chat_messages, messages_chat, responses_chat
from keygate.translate.count import estimate
from keygate.translate.errors import (
    Untranslatable,
    anthropic_error,
    openai_error,
    upstream_code,
    upstream_message,
)
from keygate.translate.sse import SSEError, SSEParser
from keygate.translate.wire import (
    AnthropicWriter,
    Doc,
    OpenAIWriter,
    ResponsesWriter,
    Stage,
    Writer,
)

# Client families by the path after the provider prefix.
CLIENT_FAMILIES: dict[str, str] = {
    "/v1/chat/completions": "openai",
    "/v1/messages": "anthropic",
    "/v1/messages/count_tokens": "anthropic-count",
    "/v1/responses": "responses",
}
# The path each upstream family answers on (before the provider's dialect rewrites it).
UPSTREAM_PATHS: dict[str, str] = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
# Built-ins whose upstream serves the Responses API itself: their /v1/responses passes as is.
NATIVE_RESPONSES = frozenset({"openai", "xai", "groq", "openrouter"})
# Chat upstreams that want `max_completion_tokens` (OpenAI's reasoning models refuse max_tokens).
MAX_COMPLETION_TOKENS = frozenset({"openai"})
MAX_ANSWER_BYTES = 32 << 20  # a whole answer held for translation

JSON_TYPE = b"application/json"
SSE_TYPE = b"text/event-stream; charset=utf-8"
_DROPPED = frozenset({b"content-length", b"content-type", b"content-encoding"})


def client_family(path: str) -> str | None:
    """`openai`, `anthropic`, `anthropic-count`, `responses`, or None (not translatable)."""
    return CLIENT_FAMILIES.get(path)


def upstream_family(dialect: Dialect) -> str:
    """Anthropic's Messages for the Anthropic dialect; Chat Completions for every other (Gemini
    answers Chat Completions on its OpenAI-compatible path)."""
    return "anthropic" if isinstance(dialect, Anthropic) else "openai"


# (dialect, client path, provider) that need no adapter: the request path asks for every POST
_PASSES: set[tuple[Dialect, str, str]] = set()


def adapter_for(
    client: str | None, provider_dialect: Dialect, path: str, provider: str = ""
) -> Adapter | None:
    """The adapter for a `client`-family request (None: the family `path` tells, the path
    after the provider prefix) to a provider of `provider_dialect` (named `provider`, for the
    Responses API's native speakers), or None when it passes as is. Cheap when None: the
    request path calls it for every POST; a fallback loop can call it once per target."""
    if client is None:
        client = CLIENT_FAMILIES.get(path)
        if client is None:
            return None
        if (provider_dialect, path, provider) in _PASSES:
            return None
        by_path = True
    else:
        by_path = False
    upstream = upstream_family(provider_dialect)
    if (
        client == upstream
        or (client == "anthropic-count" and upstream == "anthropic")
        or (client == "responses" and upstream == "openai" and provider in NATIVE_RESPONSES)
    ):
        if by_path:  # few: the paths, dialects and providers configured
            _PASSES.add((provider_dialect, path, provider))
        return None
    up_path, wire = provider_dialect.route(UPSTREAM_PATHS[upstream], ())
    return Adapter(client, upstream, up_path, wire, provider)


class Adapter:
    """One translated request. `label` (`anthropic→openai`) goes to the log and the ring."""

    __slots__ = (
        "client",
        "client_family",
        "echo",
        "include_usage",
        "label",
        "local",
        "model",
        "path",
        "provider",
        "streaming",
        "thinking",
        "upstream",
        "wire",
    )

    def __init__(
        self, client: str, upstream: str, path: str, wire: Dialect, provider: str = ""
    ) -> None:
        self.client_family = client
        self.provider = provider
        self.upstream = upstream
        self.path = path  # the upstream path
        self.wire = wire  # the dialect spoken there (key style, usage, reset hints)
        family = "anthropic" if client == "anthropic-count" else client
        self.label = f"{family}→{upstream}"
        self.client: Dialect = ANTHROPIC if family == "anthropic" else OPENAI
        self.streaming = False
        self.include_usage = False
        self.model = ""
        self.thinking = False  # an Anthropic client asked for thinking blocks
        self.echo: Doc = {}
        self.local: bytes | None = None  # an answer made here; nothing goes upstream

    # -- request --------------------------------------------------------------------------

    def request(self, body: bytes, default_model: str = "", force_model: bool = False) -> bytes:
        """The upstream's body for the client's; Untranslatable names what cannot go."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Untranslatable("body", "is not valid JSON") from None
        if not isinstance(doc, dict):
            raise Untranslatable("body", "must be a JSON object")
        return self.request_doc(doc, default_model, force_model)

    def request_doc(
        self,
        doc: Doc,
        default_model: str = "",
        force_model: bool = False,
        model: str | None = None,
    ) -> bytes:
        """`request` for a body already parsed. `doc` is left as it is, so a fallback loop can
        translate one parsed body for each target, each with its own `model` (the name sent
        to that target) and default."""
        try:
            return self._request(doc, default_model, force_model, model)
        except Untranslatable:
            raise
        except (AttributeError, TypeError, KeyError, IndexError, ValueError):
            # a value of a type the translators did not check for: still the client's 400
            raise Untranslatable("body", "a field has a value of the wrong type") from None

    def _request(self, doc: Doc, default_model: str, force_model: bool, model: str | None) -> bytes:
        name = model if model is not None else doc.get("model")
        if default_model and (force_model or not name):
            name = default_model
        self.model = str(name or "")
        self.streaming = doc.get("stream") is True
        client = self.client_family
        if client == "anthropic-count":
            self.local = orjson.dumps({"input_tokens": estimate(doc)})
            return b""
        if client == "anthropic":
            out = messages_chat.request(doc)
            self.thinking = messages_chat.wants_thinking(doc)
        elif client == "openai":
            out, self.include_usage = chat_messages.request(doc)
        else:
            out, self.echo = responses_chat.request(doc)
            if self.upstream == "anthropic":
                out, _ = chat_messages.request(out)
        out["model"] = name
        self.echo["model"] = name
        if self.provider in MAX_COMPLETION_TOKENS and "max_tokens" in out:
            out["max_completion_tokens"] = out.pop("max_tokens")
        return orjson.dumps(out)

    # -- answers --------------------------------------------------------------------------

    def answer(self, body: bytes) -> bytes:
        """A whole 2xx answer in the client's family (ValueError when it cannot be read)."""
        doc = orjson.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("the upstream answer is not a JSON object")
        try:
            return self._answer(doc)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            raise ValueError(f"unexpected upstream answer: {exc}") from None

    def _answer(self, doc: Doc) -> bytes:
        client = self.client_family
        if client == "anthropic":
            return orjson.dumps(messages_chat.answer(doc, self.model, self.thinking))
        if self.upstream == "anthropic":
            doc = chat_messages.answer(doc, self.model)
        if client == "openai":
            return orjson.dumps(doc)
        return orjson.dumps(responses_chat.answer(doc, self.echo))

    def headers(
        self, upstream: list[tuple[bytes, bytes]], stream: bool
    ) -> list[tuple[bytes, bytes]]:
        """The upstream's response headers with the client family's content type."""
        out = [h for h in upstream if h[0] not in _DROPPED]
        out.append((b"content-type", SSE_TYPE if stream else JSON_TYPE))
        return out

    def stream(self) -> StreamTranslator:
        writer: Writer
        client = self.client_family
        if client == "anthropic":
            writer = AnthropicWriter()
            stage: Stage = messages_chat.ChatToMessages(writer, self.model, self.thinking)
        elif client == "openai":
            writer = OpenAIWriter()
            stage = chat_messages.MessagesToChat(writer, self.model, self.include_usage)
        else:
            writer = ResponsesWriter()
            stage = responses_chat.ChatToResponses(writer, self.echo)
            if self.upstream == "anthropic":
                stage = chat_messages.MessagesToChat(stage, self.model, True)
        return StreamTranslator(stage, writer)

    # -- errors ---------------------------------------------------------------------------

    def error(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """An upstream refusal in the client's shape; its status and other headers
        (Retry-After, rate-limit figures) stay."""
        message = upstream_message(body, status)
        if self.client is ANTHROPIC:
            out = anthropic_error(status, message)
        else:
            out = openai_error(status, message, upstream_code(body))
        return out, self.headers(headers, False)


class StreamTranslator:
    """Upstream bytes in, client bytes out, as they come. `abort` after the end means the
    relay must leave the response incomplete (an OpenAI client's sign of a broken stream)."""

    __slots__ = ("parser", "stage", "writer")

    def __init__(self, stage: Stage, writer: Writer) -> None:
        self.parser = SSEParser()
        self.stage = stage
        self.writer = writer

    @property
    def abort(self) -> bool:
        return self.writer.abort

    @property
    def failed(self) -> bool:
        return self.writer.failed

    @property
    def closed(self) -> bool:
        return self.writer.closed

    def feed(self, chunk: bytes) -> bytes:
        try:
            for name, data in self.parser.feed(chunk):
                self._event(name, data)
        except SSEError as exc:
            self.stage.fail(str(exc))
        return self.writer.take()

    def _event(self, name: str | None, data: bytes) -> None:
        if self.writer.closed:
            return
        if data == b"[DONE]":
            self.stage.done()
            return
        try:
            doc: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.stage.fail("the upstream sent an event that is not JSON")
            return
        if isinstance(doc, dict):
            try:
                self.stage.event(name, doc)
            except (AttributeError, TypeError, KeyError, IndexError, ValueError):
                self.stage.fail("the upstream sent an event keygate cannot read")

    def end(self) -> bytes:
        """The upstream's stream ended: what the client still needs (or the error it gets)."""
        if not self.writer.closed:
            try:
                for name, data in self.parser.close():
                    self._event(name, data)
            except SSEError as exc:
                self.stage.fail(str(exc))
            try:
                self.stage.done()  # uses up what was held: it may meet what `feed` let in
            except (AttributeError, TypeError, KeyError, IndexError, ValueError):
                self.stage.fail("the upstream sent an event keygate cannot read")
        return self.writer.take()

    def fail(self, message: str) -> bytes:
        """The upstream broke (reset, silence): end the client's stream as an error."""
        if not self.writer.closed:
            self.stage.fail(message)
        return self.writer.take()
