"""Errors keygate makes itself. Their body is shaped by the client's dialect
(`Dialect.error_body`): the SDKs parse only their own family's shape into a useful exception."""

from __future__ import annotations

# Statuses of keygate's own answers that a later try may not get again. keygate's 503s all say
# that no key can serve the provider, which no retry in the next seconds changes.
RETRY_MAY_HELP = frozenset({408, 409, 429, 500, 502, 504})


class GatewayError(Exception):
    """An answer keygate gives on its own behalf; raised anywhere on the request path.

    `retry` False sends `x-should-retry: false`, which the OpenAI and Anthropic SDKs obey
    instead of retrying by status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or []
        self.retry = status in RETRY_MAY_HELP if retry is None else retry


def retry_after_headers(seconds: float) -> list[tuple[bytes, bytes]]:
    """Retry-After in whole seconds (rounded up) and retry-after-ms, which the SDKs prefer."""
    seconds = max(0.0, seconds)
    whole = int(seconds) + (seconds > int(seconds))
    return [
        (b"retry-after", str(max(1, whole)).encode()),
        (b"retry-after-ms", str(int(seconds * 1000)).encode()),
    ]
