"""Built-in provider catalog: where each provider lives, which dialect it speaks, default limits.

The numbers are the contract of SPEC §2; everything here can be overridden by env or YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keygate.dialects import KEY_STYLES

__all__ = ["BUILTINS", "KEY_STYLES", "RESERVED_NAMES", "Builtin", "env_names", "env_prefix"]

RESERVED_NAMES = frozenset({"api", "admin", "v1", "healthz", "metrics"})


@dataclass(frozen=True, slots=True)
class Builtin:
    base_url: str
    key_style: str  # names the dialect (keygate.dialects)
    rps: float
    burst: int
    max_conn: int
    error_rules: tuple[dict[str, Any], ...] = ()  # SPEC §15, as a config file writes them


# Gemini refuses a bad key with a 400 (not a 401), and its 503 is an overload: not the key's fault.
_GEMINI_RULES = (
    {"status": 400, "match": "API_KEY_INVALID", "action": "invalid"},
    {"status": 503, "action": "provider"},
)

BUILTINS: dict[str, Builtin] = {
    "cerebras": Builtin("https://api.cerebras.ai", "bearer", 4, 8, 6),
    "groq": Builtin("https://api.groq.com/openai", "bearer", 1, 3, 2),
    "claude": Builtin("https://api.anthropic.com", "x-api-key", 2, 2, 1),
    "nvidia": Builtin("https://integrate.api.nvidia.com", "bearer", 3, 6, 5),
    "deepseek": Builtin("https://api.deepseek.com", "bearer", 10, 20, 10),
    "openai": Builtin("https://api.openai.com", "bearer", 10, 20, 10),
    "openrouter": Builtin("https://openrouter.ai/api", "bearer", 5, 10, 8),
    "siliconflow": Builtin("https://api.siliconflow.cn", "bearer", 5, 10, 10),
    "ollama": Builtin("https://ollama.com", "bearer", 10, 10, 5),
    "gemini": Builtin(
        "https://generativelanguage.googleapis.com", "gemini", 3, 5, 3, _GEMINI_RULES
    ),
    "xai": Builtin("https://api.x.ai", "bearer", 2, 5, 3),
    "pollinations": Builtin("https://gen.pollinations.ai", "bearer", 5, 10, 5),
}


def env_prefix(name: str) -> str:
    """`my-local` → `MY_LOCAL`: the prefix of a provider's `<NAME>_API_KEYS`/`<NAME>_BASE_URL`."""
    return "".join(c if c.isalnum() else "_" for c in name).upper()


def env_names(name: str, suffix: str) -> tuple[str, str]:
    """A provider's variables for `suffix` (`BASE_URL`, `API_KEYS`), preferred first:
    `KEYGATE_OPENAI_BASE_URL`, then `OPENAI_BASE_URL` — the older form, which the provider's
    own SDK also reads, so a client started in the same shell would bypass keygate."""
    prefix = env_prefix(name)
    return f"KEYGATE_{prefix}_{suffix}", f"{prefix}_{suffix}"
