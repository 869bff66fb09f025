"""A provider key as the config file and the environment write it: `secret|tier=1|weight=3`.

The options after the secret rank the key (SPEC §15): lower tiers are spent first, `weight` is
its share inside its tier. `proxy=URL` gives the key its own egress proxy (SPEC §16). A bad option is refused with a message that names the option and
never carries the secret (the caller adds where it was found and the masked key).
"""

from __future__ import annotations

TIER_MAX = 1000  # tiers are 0..TIER_MAX
WEIGHT_MAX = 100  # weights are 1..WEIGHT_MAX
KEY_OPTIONS = {"tier": (0, TIER_MAX), "weight": (1, WEIGHT_MAX)}


def parse_key_spec(token: str) -> tuple[str, dict[str, int]]:
    """(the secret, its options) of `secret|name=value|...`; ValueError says what is wrong."""
    secret, *parts = token.split("|")
    options: dict[str, int] = {}
    for part in parts:
        name, eq, raw = part.partition("=")
        name = name.strip()
        if name not in KEY_OPTIONS:
            shown = name if name.isidentifier() and len(name) <= 20 else "?"
            raise ValueError(f"unknown key option {shown!r} (options: {', '.join(KEY_OPTIONS)})")
        low, high = KEY_OPTIONS[name]
        raw = raw.strip()
        if not eq or not raw.isdigit() or not low <= int(raw) <= high:
            shown = raw if len(raw) <= 10 else raw[:10] + "…"
            raise ValueError(f"{name} must be a whole number {low} to {high}, got {shown!r}")
        if name in options:
            raise ValueError(f"{name} is given twice")
        options[name] = int(raw)
    return secret.strip(), options


def split_proxy_option(token: str) -> tuple[str, str | None]:
    """`token` without its `|proxy=URL` option, and that URL (None when it has none); a
    second one is a ValueError. The URL is checked by the caller (config.proxies)."""
    kept, proxy = [], None
    for i, part in enumerate(token.split("|")):
        name, eq, value = part.partition("=")
        if i and eq and name.strip() == "proxy":
            if proxy is not None:
                raise ValueError("proxy is given twice")
            proxy = value.strip()
        else:
            kept.append(part)
    return "|".join(kept), proxy
