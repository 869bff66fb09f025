"""An Anthropic Messages client on a Chat Completions upstream: the request to Chat, the answer
and its stream back to Messages.

Deliberately not carried over (they change nothing the other family could act on): the
model's own `thinking` blocks in the history, `cache_control` hints, `metadata`, the
`thinking` / `service_tier` / `context_management` settings and `output_config.effort`.
Everything else that has no Chat equivalent is refused with a 400 naming it.
"""

from __future__ import annotations

from keygate.translate.messages_chat.answer_map import answer
from keygate.translate.messages_chat.request_map import request, wants_thinking
from keygate.translate.messages_chat.stream import ChatToMessages

__all__ = ["ChatToMessages", "answer", "request", "wants_thinking"]
