"""Format translation between API families (SPEC §11): OpenAI Chat Completions ⇄ Anthropic
Messages, and the Responses API on Chat Completions (or Messages) upstreams.

The request path sees one object per translated request, an `Adapter` from `adapter_for`;
the modules behind it are pure functions and per-stream state machines (no I/O), so each is
tested on its own: `tables` (the mappings, as data), `sse` (incremental event parsing),
`messages_chat`, `chat_messages`, `responses_chat` (one pair of families each), `count`
(the local token estimate), `errors`.
"""

from __future__ import annotations

from keygate.translate.adapter import (
    NATIVE_RESPONSES,
    Adapter,
    StreamTranslator,
    adapter_for,
    client_family,
    upstream_family,
)
from keygate.translate.errors import Untranslatable

__all__ = [
    "NATIVE_RESPONSES",
    "Adapter",
    "StreamTranslator",
    "Untranslatable",
    "adapter_for",
    "client_family",
    "upstream_family",
]
