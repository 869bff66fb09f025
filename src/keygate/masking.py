"""How a provider key is shown wherever it is not used: the pool's entries, the store's records,
the admin API, the CLI, the log and the bytes relayed to a client. Ground floor: it imports
nothing of keygate, so every layer may use it."""

from __future__ import annotations


def mask(secret: str) -> str:
    """First 4 and last 4 characters; short secrets show less so they are never whole."""
    n = len(secret)
    if n >= 12:
        return f"{secret[:4]}…{secret[-4:]}"
    if n >= 6:
        return f"{secret[:2]}…{secret[-2:]}"
    return "…"
