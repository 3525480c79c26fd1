"""The pieces a policy compiles to: rules, triggers, conditions, payment; the errors (TR §4).

Also the vocabulary a policy may use (actions, atoms, counters) and the one duration
syntax of the trust package. :mod:`trust._policy` loads files into these.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Literal

import attrs

from trust._model import STATE_OPS, ClientState, CommandKind, Level, RequestFacts

PRESETS = ("open", "careful", "strict")
TERMINAL = frozenset({"allow", "deny", "use_agent"})
VERIFY = frozenset({"verify_invite", "verify_payment"})
FORBIDDEN_ACTIONS = frozenset({"unblock", "set_admin", "remove_admin"})
ACTIONS = TERMINAL | VERIFY | STATE_OPS
FOLLOW_UPS = TERMINAL | STATE_OPS | {"continue"}
AGENT_TOOLS = ("get_level", "get_history", "promote_to_contact", "block")

NATIVE_KEYS = (
    "name",
    "fast_rules",
    "default",
    "use_agent",
    "cache",
    "reply_on_deny",
    "agent_tools",
    "payment",
    "disable",
)
RULE_KEYS = ("if", "action", "on_success", "on_failure", "reason")
TRIGGER_KEYS = ("when", "reason")
PolicyFormat = Literal["native", "connectonion-0.6.5"]
FORMAT_NATIVE: PolicyFormat = "native"
FORMAT_065: PolicyFormat = "connectonion-0.6.5"

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_DURATION_S = 30 * 86400

Predicate = Callable[[ClientState, RequestFacts], bool]


def _is_blocked(c: ClientState, f: RequestFacts) -> bool:
    return c.blocked or c.secondary_blocked


def _level(level: Level) -> Predicate:
    def test(c: ClientState, f: RequestFacts) -> bool:
        return c.level is level and not (c.blocked or c.secondary_blocked)

    return test


ATOMS: Mapping[str, Predicate] = {
    "is_blocked": _is_blocked,
    "is_admin": lambda c, f: c.is_admin,
    "is_whitelist": _level(Level.WHITELIST),
    "is_contact": _level(Level.CONTACT),
    "is_stranger": _level(Level.STRANGER),
    "is_anonymous": lambda c, f: c.anonymous,
    "has_invite_code": lambda c, f: f.command is CommandKind.INVITE,
    "has_payment": lambda c, f: f.command is CommandKind.PAY,
    "is_dm": lambda c, f: f.is_dm,
    "mentions_bot": lambda c, f: f.mentions_bot,
    "always": lambda c, f: True,
}
"""Condition atoms of §4.3, compiled."""

COUNTERS: Mapping[str, Callable[[ClientState], int]] = {
    "requests": operator.attrgetter("requests"),
    "requests_today": operator.attrgetter("requests_today"),
    "requests_hour": operator.attrgetter("requests_hour"),
    "days_known": operator.attrgetter("days_known"),
}
COMPARISONS: Mapping[str, Callable[[int, int], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class TrustConfigError(ValueError):
    """A `trust` setting that names neither a preset nor an existing file (§4.1, T29)."""


@attrs.frozen
class PolicyProblem:
    """One problem in a policy file: file, 1-based line, key path and message."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


@attrs.frozen
class PolicyWarning(PolicyProblem):
    """A policy that loads but probably does not mean what it says."""


class PolicyError(ValueError):
    """A policy that does not load; `items` holds every problem found, in file order."""

    def __init__(self, items: list[PolicyProblem] | tuple[PolicyProblem, ...]) -> None:
        self.items = tuple(sorted(items, key=lambda p: (p.line, p.key)))
        count = len(self.items)
        lines = "\n".join(f"  {item}" for item in self.items)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in policy:\n{lines}")


def parse_duration(value: object, *, max_s: int = _MAX_DURATION_S) -> int:
    """Seconds of a duration: `0`, `"0"`, `"0s"`, or `<digits><s|m|h|d>` from 1 s to `max_s`
    (30 d for policies). The one duration syntax of the trust package (invite expiry too)."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean (write 0 to disable)")
    if isinstance(value, int):
        if value == 0:
            return 0
        raise ValueError(f"{value!r} has no unit; write e.g. '{value}s' or '{value}h'")
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '90s' or '24h', got {type(value).__name__}")
    text = value.strip()
    if text in ("0", "0s"):
        return 0
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{value!r} is not a duration: use whole <digits><s|m|h|d>, e.g. '24h'")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 1 <= seconds <= max_s:
        raise ValueError(f"{value!r} is out of range: durations run from 1s to {max_s // 86400}d")
    return seconds


@attrs.frozen
class Condition:
    """One compiled condition: `[not ] ATOM` or `COUNTER OP N`."""

    text: str
    test: Predicate = attrs.field(eq=False, repr=False)


@attrs.frozen
class Rule:
    """One fast rule, 0-based `index`, with follow-ups already defaulted (§4.3)."""

    index: int
    conditions: tuple[Condition, ...]
    action: str
    on_success: str | None = None
    on_failure: str | None = None
    reason: str | None = None
    line: int = 0

    def matches(self, client: ClientState, facts: RequestFacts) -> bool:
        """All conditions hold."""
        return all(cond.test(client, facts) for cond in self.conditions)

    def describe(self) -> str:
        """One line: the rule as evaluated."""
        cond = " and ".join(c.text for c in self.conditions)
        text = f"#{self.index} if {cond}: {self.action}"
        if self.on_success is not None:
            text += f"; on_success {self.on_success}; on_failure {self.on_failure}"
        if self.reason:
            text += f" ({self.reason!r})"
        return text


@attrs.frozen
class Trigger:
    """A `use_agent` escalation trigger."""

    conditions: tuple[Condition, ...]
    reason: str | None = None
    line: int = 0

    def matches(self, client: ClientState, facts: RequestFacts) -> bool:
        """All conditions hold."""
        return all(cond.test(client, facts) for cond in self.conditions)


@attrs.frozen
class Payment:
    """The price of `verify_payment`."""

    amount: Decimal
    currency: str | None = None
