"""A Responses API client on a Chat Completions upstream (the stateless subset): the request to
Chat, the answer and its stream back to a `response` and its events.

Stateless only: `store: true`, `previous_response_id`, `conversation`, `background: true` and
stored prompts need a server that keeps responses, and are refused. Reasoning items the client
sends back (Codex does, encrypted) are the model's own and are not replayed to another
provider. A stream's `done` events and `response.completed` repeat the whole output, as the
protocol requires, so a Responses stream holds the answer's text (not the upstream's bytes).
"""

from __future__ import annotations

from keygate.translate.responses_chat.answer_map import answer
from keygate.translate.responses_chat.request_map import request
from keygate.translate.responses_chat.stream import ChatToResponses

__all__ = ["ChatToResponses", "answer", "request"]
