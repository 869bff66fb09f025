"""Provider dialects, one module per API family. A new family is a new module and a line here;
its `key_style` becomes a value the provider config accepts."""

from __future__ import annotations

from keygate.dialects.anthropic import ANTHROPIC
from keygate.dialects.base import Dialect
from keygate.dialects.gemini import GEMINI
from keygate.dialects.openai import OPENAI

DIALECTS: dict[str, Dialect] = {
    OPENAI.key_style: OPENAI,
    ANTHROPIC.key_style: ANTHROPIC,
    GEMINI.key_style: GEMINI,
}
KEY_STYLES: tuple[str, ...] = tuple(DIALECTS)
# every family's credential header: the client's is never forwarded, whichever it used
CREDENTIAL_HEADERS = frozenset(h for d in DIALECTS.values() for h in d.credential_headers)


def dialect_for(key_style: str) -> Dialect:
    """The dialect a provider's `key_style` names (validated when the config was read)."""
    return DIALECTS[key_style]


__all__ = ["CREDENTIAL_HEADERS", "DIALECTS", "KEY_STYLES", "Dialect", "dialect_for"]
