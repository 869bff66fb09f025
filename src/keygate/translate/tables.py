"""The mapping tables between the OpenAI and Anthropic families, as data.

Every table here is read by the translators and printed by the table-driven test, so the test
is the documentation of what maps to what. Values missing from a table have a stated fallback
next to it; nothing is guessed elsewhere.
"""

from __future__ import annotations

# Chat Completions `finish_reason` → Anthropic `stop_reason` (fallback: end_turn).
FINISH_TO_STOP: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic `stop_reason` → Chat Completions `finish_reason` (fallback: stop).
STOP_TO_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Chat Completions `finish_reason` → Responses (status, incomplete_details.reason).
FINISH_TO_RESPONSE_STATUS: dict[str, tuple[str, str | None]] = {
    "stop": ("completed", None),
    "tool_calls": ("completed", None),
    "function_call": ("completed", None),
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}

# Chat message roles → where they go in an Anthropic request.
CHAT_ROLE_TO_ANTHROPIC: dict[str, str] = {
    "system": "system",  # the top-level `system` (joined, in order)
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "user",  # a `tool_result` block in the next user turn
}
# Responses input item roles → Chat message roles.
RESPONSES_ROLE_TO_CHAT: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}

# Content parts, client family → the other family's part type.
ANTHROPIC_PART_TO_CHAT: dict[str, str] = {
    "text": "text",
    "image": "image_url",  # base64 → data: URL, url → url
    "tool_use": "tool_calls",  # on the assistant message, arguments as JSON text
    "tool_result": "tool",  # a `tool` message
    "thinking": "",  # the model's own reasoning: not sent back to another family
    "redacted_thinking": "",
}
CHAT_PART_TO_ANTHROPIC: dict[str, str] = {
    "text": "text",
    "image_url": "image",  # data: URL → base64 source, http(s) → url source
}
RESPONSES_PART_TO_CHAT: dict[str, str] = {
    "input_text": "text",
    "output_text": "text",
    "text": "text",
    "input_image": "image_url",
    "refusal": "text",
}

# tool_choice, Anthropic `type` → Chat value ("tool" becomes a named function).
ANTHROPIC_TOOL_CHOICE_TO_CHAT: dict[str, str] = {
    "auto": "auto",
    "any": "required",
    "none": "none",
    "tool": "function",
}
CHAT_TOOL_CHOICE_TO_ANTHROPIC: dict[str, str] = {
    "auto": "auto",
    "required": "any",
    "none": "none",
}

# HTTP status → the error `type` each family's SDK expects (fallbacks below).
STATUS_TO_ANTHROPIC_ERROR: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUS_TO_OPENAI_ERROR: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """Fallback: 4xx → invalid_request_error, anything else → api_error."""
    found = STATUS_TO_ANTHROPIC_ERROR.get(status)
    if found:
        return found
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def openai_error_type(status: int) -> str:
    """Fallback: 4xx → invalid_request_error, anything else → server_error."""
    found = STATUS_TO_OPENAI_ERROR.get(status)
    if found:
        return found
    return "invalid_request_error" if 400 <= status < 500 else "server_error"
