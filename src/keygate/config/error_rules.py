"""Per-provider error rules (SPEC §15): what an upstream error means for the key that got it,
said by the user per status and error text, checked in order before the built-in judgement.

A rule list is checked once, where it is read (config file, store, admin API), and compiled
then: the request path only asks `find`, which does nothing for a status no rule names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ACTIONS", "MATCH_WINDOW", "RULES_MAX", "ErrorRule", "ErrorRules", "parse_rules"]

# invalid/exhausted/cool/disable: the key's fault (it is set aside, the request tries another);
# provider: the upstream's fault (retried elsewhere, key untouched); pass: relayed as it came.
ACTIONS = ("invalid", "exhausted", "cool", "disable", "provider", "pass")
FIELDS = ("status", "match", "action", "cool_s")
RULES_MAX = 50  # rules per provider
MATCH_MAX = 500  # characters of one regular expression
COOL_MAX_S = 30 * 86_400.0
# How much of an error body a rule's expression searches: errors say what they are near the
# start, and a bounded window keeps a rule's cost bounded whatever the upstream sends.
MATCH_WINDOW = 16 * 1024


class ErrorRule:
    """One checked rule: the statuses it answers, its compiled expression (None: any body)."""

    __slots__ = ("action", "cool_s", "index", "pattern", "statuses")

    def __init__(
        self,
        index: int,
        statuses: frozenset[int],
        pattern: re.Pattern[str] | None,
        action: str,
        cool_s: float,
    ) -> None:
        self.index = index
        self.statuses = statuses
        self.pattern = pattern
        self.action = action
        self.cool_s = cool_s


class ErrorRules(list[dict[str, Any]]):
    """A provider's rules as written (normalised: what the store keeps and the API shows), with
    their compiled form beside them. A list so that it is stored, shown and compared as
    written; checked whole when made, never changed in place."""

    __slots__ = ("compiled", "statuses")

    def __init__(self, rules: Iterable[Mapping[str, Any]] = ()) -> None:
        given = list(rules)
        if len(given) > RULES_MAX:
            raise ValueError(f"at most {RULES_MAX} rules, got {len(given)}")
        checked = [_rule(i, raw) for i, raw in enumerate(given)]
        super().__init__(spec for spec, _ in checked)
        self.compiled = tuple(rule for _, rule in checked)
        self.statuses = frozenset(s for rule in self.compiled for s in rule.statuses)

    def find(self, status: int, body: bytes) -> ErrorRule | None:
        """The first rule for this status whose expression (if any) is found in `body`."""
        if status not in self.statuses:
            return None
        text: str | None = None
        for rule in self.compiled:
            if status not in rule.statuses:
                continue
            if rule.pattern is None:
                return rule
            if text is None:
                text = body[:MATCH_WINDOW].decode("utf-8", "replace")
            if rule.pattern.search(text):
                return rule
        return None


def parse_rules(value: Any) -> ErrorRules:
    """Check a rule list from a config file, the store or the admin API; a ValueError says
    what is wrong, starting `[index].field: ` when it is one rule's."""
    if isinstance(value, ErrorRules):
        return value
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of rules, got {type(value).__name__}")
    return ErrorRules(value)


def _shown(value: Any) -> str:
    """`repr(value)` cut to 40 characters, for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _where(index: int, field: str = "") -> str:
    return f"[{index}].{field}" if field else f"[{index}]"


def _rule(index: int, raw: Any) -> tuple[dict[str, Any], ErrorRule]:
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"{_where(index)}: must be a mapping of status, match, action, got {type(raw).__name__}"
        )
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise ValueError(
            f"{_where(index, unknown[0])}: unknown field (a rule has {', '.join(FIELDS)})"
        )
    if "status" not in raw:
        raise ValueError(f"{_where(index, 'status')}: required")
    status = raw["status"]
    statuses = _statuses(index, status)
    spec: dict[str, Any] = {"status": status if isinstance(status, int) else sorted(statuses)}
    pattern = None
    match = raw.get("match")
    if match is not None:
        if not isinstance(match, str) or not match or len(match) > MATCH_MAX:
            raise ValueError(
                f"{_where(index, 'match')}: must be a regular expression of 1 to {MATCH_MAX}"
                " characters"
            )
        try:
            pattern = re.compile(match)
        except re.error as exc:
            raise ValueError(f"{_where(index, 'match')}: bad regular expression: {exc}") from None
        spec["match"] = match
    if "action" not in raw:
        raise ValueError(f"{_where(index, 'action')}: required (one of {', '.join(ACTIONS)})")
    action = raw["action"]
    if action not in ACTIONS:
        raise ValueError(
            f"{_where(index, 'action')}: must be one of {', '.join(ACTIONS)}, got {_shown(action)}"
        )
    spec["action"] = action
    cool_s = 0.0
    if action == "cool":
        if "cool_s" not in raw:
            raise ValueError(f"{_where(index, 'cool_s')}: required for action cool (seconds)")
        cool = raw["cool_s"]
        if (
            isinstance(cool, bool)
            or not isinstance(cool, int | float)
            or not math.isfinite(cool)
            or not 0 < cool <= COOL_MAX_S
        ):
            raise ValueError(
                f"{_where(index, 'cool_s')}: must be seconds > 0 and ≤ {COOL_MAX_S:.0f}, got {_shown(cool)}"
            )
        cool_s = float(cool)
        spec["cool_s"] = cool
    elif "cool_s" in raw:
        raise ValueError(f"{_where(index, 'cool_s')}: only for action cool")
    return spec, ErrorRule(index, statuses, pattern, action, cool_s)


def _status(index: int, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ValueError(
            f"{_where(index, 'status')}: must be an HTTP status from 100 to 599 (or a list of"
            f" them), got {_shown(value)}"
        )
    return value


def _statuses(index: int, value: Any) -> frozenset[int]:
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"{_where(index, 'status')}: an empty list matches nothing")
        return frozenset(_status(index, v) for v in value)
    return frozenset((_status(index, value),))
