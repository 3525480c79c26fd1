"""Policy files: parsing, strict validation, compilation, presets, resolution (TR §4).

A policy is Markdown with a YAML frontmatter. `Policy.from_text` / `Policy.from_file` read
the native format (or translate a connectonion 0.6.5 policy, see `trust.compat`), report
every problem at once in one `PolicyError`, and compile conditions into predicates once, so
`trust.rules.decide` parses nothing per message.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import logging
import operator
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path as FsPath
from typing import Any, Literal

import attrs

from trust import _yaml
from trust.commands import canonical_invite_code, invite_code_digest
from trust.compat import LEGACY_KEYS
from trust.model import (
    OPERATIONS,
    STATE_OPS,
    ClientState,
    CommandKind,
    Level,
    Outcome,
    RequestFacts,
)

__all__ = [
    "AGENT_TOOLS",
    "ATOMS",
    "COUNTERS",
    "OPERATIONS",
    "PRESETS",
    "Condition",
    "Payment",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "PolicyWarning",
    "Rule",
    "Trigger",
    "TrustConfigError",
    "builtin_agent_prompt",
    "load_preset",
    "parse_duration",
    "preset_text",
    "resolve_policy",
]

log = logging.getLogger("trust.policy")

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

_NAME = re.compile(r"[a-z0-9_-]{1,40}")
_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_DURATION_S = 30 * 86400
_CURRENCY = re.compile(r"[A-Z]{3}")
_COUNTER_COND = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*([<>=!]=?|=>|=<|<>)\s*(-?[0-9]+)")
_ATOM_COND = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_COUNT = 10**9
_BOOL_HINT = "YAML reads {raw!r} as a boolean; yes/no/on/off/true/false need quotes"

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
_OPS: Mapping[str, Callable[[int, int], bool]] = {
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


@attrs.frozen
class Policy:
    """A loaded, validated and compiled policy. Build with `from_text`/`from_file`."""

    name: str
    digest: str
    fast_rules: tuple[Rule, ...] = ()
    default: Outcome = "deny"
    use_agent: tuple[Trigger, ...] = ()
    cache_s: int = 3600
    reply_on_deny: str | None = None
    agent_tools: tuple[str, ...] = ()
    payment: Payment | None = None
    disable: frozenset[str] = frozenset()
    body: str = ""
    source: str = "<inline>"
    format: PolicyFormat = FORMAT_NATIVE
    policy_codes: tuple[str, ...] = attrs.field(default=(), repr=False)
    warnings: tuple[PolicyWarning, ...] = ()
    native_frontmatter: str | None = None

    @classmethod
    def from_text(cls, text: str, name: str | None = None, *, source: str = "<inline>") -> Policy:
        """Load a policy from text; `name` (or `name:` in it, else `inline`) names it."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return _load(text, digest=digest, source=source, default_name=name or "inline")

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str, default_name: str) -> Policy:
        """Load a policy from a file's bytes; the digest is their SHA-256."""
        digest = hashlib.sha256(data).hexdigest()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(
                [PolicyProblem(source, 1, "<file>", f"not UTF-8 text: {exc}")]
            ) from None
        return _load(text, digest=digest, source=source, default_name=default_name)

    @classmethod
    def from_file(cls, path: str | FsPath) -> Policy:
        """Load a policy file (named by `name:` or the file stem)."""
        fs_path = FsPath(path)
        return cls.from_bytes(
            fs_path.read_bytes(), source=str(fs_path), default_name=_stem_name(fs_path.stem)
        )

    # --- derived facts -------------------------------------------------------------------

    def uses_action(self, action: str) -> bool:
        """True when some rule runs `action` (directly or as a follow-up)."""
        return any(action in (r.action, r.on_success, r.on_failure) for r in self.fast_rules)

    @property
    def agent_reachable(self) -> bool:
        """True when some path can consult the trust agent."""
        return self.default == "use_agent" or bool(self.use_agent) or self.uses_action("use_agent")

    def enabled_operations(self) -> tuple[str, ...]:
        """§8: verify ops iff a rule uses them; the rest unless disabled."""
        enabled = []
        for op in OPERATIONS:
            if op == "verify/invite":
                on = self.uses_action("verify_invite")
            elif op == "verify/payment":
                on = self.uses_action("verify_payment")
            else:
                on = True
            if on and op not in self.disable:
                enabled.append(op)
        return tuple(enabled)

    def match_policy_code(self, code: str) -> str | None:
        """An id for a matching 0.6.5 policy code (`policy:<name>#<n>`), else None.

        Compares digests with `hmac.compare_digest` against every code, so the time does
        not depend on which code (if any) matched.
        """
        digest = invite_code_digest(code)
        found: str | None = None
        for i, known in enumerate(self.policy_codes):
            if hmac.compare_digest(digest, known) and found is None:
                found = f"policy:{self.name}#{i}"
        return found

    def describe_rules(self) -> list[str]:
        """The compiled rules, one line each, in evaluation order (for `policy show`)."""
        lines = [r.describe() for r in self.fast_rules]
        lines.append(f"default: {self.default}")
        for trig in self.use_agent:
            cond = " and ".join(c.text for c in trig.conditions)
            lines.append(f"use_agent when {cond}" + (f" ({trig.reason!r})" if trig.reason else ""))
        return lines


def _stem_name(stem: str) -> str:
    name = re.sub(r"[^a-z0-9_-]", "-", stem.lower())[:40]
    return name or "policy"


# --- loading -----------------------------------------------------------------------------


def _key_text(path: _yaml.Path) -> str:
    if not path:
        return "<frontmatter>"
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Checker:
    """Collects problems with their file line and key path."""

    def __init__(self, source: str, lines: Mapping[_yaml.Path, int], raw: Mapping[_yaml.Path, str]):
        self.source = source
        self.lines = lines
        self.raw = raw
        self.errors: list[PolicyProblem] = []
        self.warnings: list[PolicyWarning] = []

    def line(self, path: _yaml.Path) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: _yaml.Path, message: str, *, line: int | None = None) -> None:
        where = self.line(path) if line is None else line
        self.errors.append(PolicyProblem(self.source, where, _key_text(path), message))

    def warn(self, path: _yaml.Path, message: str) -> None:
        self.warnings.append(PolicyWarning(self.source, self.line(path), _key_text(path), message))

    def hint(self, path: _yaml.Path, value: object) -> str:
        if isinstance(value, bool):
            return "; " + _BOOL_HINT.format(raw=self.raw.get(path, str(value).lower()))
        return ""


@attrs.frozen
class _Split:
    frontmatter: str
    body: str
    body_line: int


def _split(text: str, check: _Checker) -> _Split | None:
    text = text.removeprefix("\ufeff")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines[0] != "---":
        check.error((), "line 1 must be exactly '---' (YAML frontmatter fence)", line=1)
        return None
    for i in range(1, len(lines)):
        if lines[i] == "---":
            return _Split("\n".join(lines[1:i]), "\n".join(lines[i + 1 :]).strip(), i + 2)
    check.error((), "unterminated frontmatter: no closing line exactly '---'", line=1)
    return None


def _load(text: str, *, digest: str, source: str, default_name: str) -> Policy:
    from trust import compat  # compat builds on this module's checks

    check = _Checker(source, {}, {})
    split = _split(text, check)
    if split is None:
        raise PolicyError(check.errors)
    doc = _yaml.load(split.frontmatter, first_line=2)
    check = _Checker(source, doc.lines, doc.raw)
    for problem in doc.problems:
        check.error(problem.path, problem.message, line=problem.line)
    if doc.problems and doc.value is None:
        raise PolicyError(check.errors)
    if doc.value is None or doc.value == {}:
        check.error((), "empty frontmatter; a deny-all policy is written 'default: deny'", line=1)
        raise PolicyError(check.errors)
    if not isinstance(doc.value, dict):
        check.error((), f"frontmatter must be a mapping of keys, not a {_kind(doc.value)}", line=1)
        raise PolicyError(check.errors)
    config: dict[str, Any] = {str(k): v for k, v in doc.value.items()}
    translation: compat.Translation | None = None
    if compat.is_065(config):
        translation = compat.translate(config, check)
        config = translation.native
    else:
        legacy = [k for k in config if k in LEGACY_KEYS]
        if legacy:
            native = [k for k in config if k in NATIVE_KEYS and k != "default"]
            check.error(
                (legacy[0],),
                f"connectonion 0.6.5 key {legacy[0]!r} mixed with native keys "
                f"({', '.join(native)}); write the policy in one format",
            )
    policy = _compile(config, check, translated=translation is not None, default_name=default_name)
    body = split.body
    if policy is not None and policy.agent_reachable and not body:
        if translation is not None:
            log.info("policy %s: empty body, using the built-in trust-agent prompt", source)
            body = builtin_agent_prompt()
        else:
            check.error(
                ("<body>",),
                "the body is the trust agent's prompt and must not be empty when the "
                "policy can consult the agent",
                line=split.body_line,
            )
    if check.errors or policy is None:
        raise PolicyError(check.errors)
    for code_warning in () if translation is None else translation.code_warnings:
        check.warn(
            code_warning,
            "policy invite codes are unlimited and never expire; "
            "prefer store invites (relay-runtime trust invite create)",
        )
    return attrs.evolve(
        policy,
        digest=digest,
        body=body,
        source=source,
        format=FORMAT_065 if translation else FORMAT_NATIVE,
        policy_codes=translation.codes if translation else (),
        warnings=tuple(check.warnings),
        native_frontmatter=translation.rendered if translation else None,
    )


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, bool):
        return "boolean"
    return type(value).__name__ if not isinstance(value, str) else "string"


def _compile_condition(
    raw: object, path: _yaml.Path, check: _Checker, *, what: str
) -> Condition | None:
    if not isinstance(raw, str):
        check.error(
            path, f"a {what} condition must be text, got {_kind(raw)}{check.hint(path, raw)}"
        )
        return None
    text = " ".join(raw.split())
    negate = False
    body = text
    if body.startswith("not "):
        negate, body = True, body[4:].strip()
    test: Predicate
    counter = _COUNTER_COND.fullmatch(body)
    if counter is not None:
        name, op, number = counter.groups()
        if name not in COUNTERS:
            check.error(path, f"unknown counter {name!r}; counters are {', '.join(COUNTERS)}")
            return None
        if op not in _OPS:
            check.error(path, f"unknown operator {op!r}; use one of > >= < <= == !=")
            return None
        n = int(number)
        if not 0 <= n <= _MAX_COUNT:
            check.error(path, f"counter bound {n} is outside 0..1000000000")
            return None
        get, compare = COUNTERS[name], _OPS[op]

        def test(c: ClientState, f: RequestFacts) -> bool:
            return compare(get(c), n)

        body = f"{name} {op} {n}"
    elif _ATOM_COND.fullmatch(body) and body in ATOMS:
        test = ATOMS[body]
    else:
        if _ATOM_COND.fullmatch(body):
            message = f"unknown condition {body!r}; conditions are {', '.join(ATOMS)}"
        elif any(ch in body for ch in "<>=!"):
            message = f"unknown operator in {body!r}; use COUNTER OP N with > >= < <= == !="
        else:
            message = f"cannot read condition {raw!r}: expected '[not ] ATOM' or 'COUNTER OP N'"
        check.error(path, message)
        return None
    if negate:
        inner = test

        def test(c: ClientState, f: RequestFacts) -> bool:
            return not inner(c, f)

        body = f"not {body}"
    return Condition(text=body, test=test)


def _conditions(
    raw: object, path: _yaml.Path, check: _Checker, *, what: str
) -> tuple[Condition, ...] | None:
    items = raw if isinstance(raw, list) else [raw]
    if isinstance(raw, list) and not raw:
        check.error(path, f"{what} needs at least one condition")
        return None
    out = []
    ok = True
    for i, item in enumerate(items):
        cond = _compile_condition(
            item, (*path, i) if isinstance(raw, list) else path, check, what=what
        )
        ok = ok and cond is not None
        if cond is not None:
            out.append(cond)
    return tuple(out) if ok else None


def _check_keys(
    value: dict[str, Any], allowed: tuple[str, ...], path: _yaml.Path, check: _Checker
) -> None:
    for key in value:
        if key not in allowed:
            check.error((*path, key), f"unknown key {key!r}; allowed: {', '.join(allowed)}")


def _reason(raw: object, path: _yaml.Path, check: _Checker, limit: int) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        check.error(path, f"reason must be non-empty text{check.hint(path, raw)}")
        return None
    if len(raw) > limit:
        check.error(path, f"reason is {len(raw)} characters; the limit is {limit}")
        return None
    return raw.strip()


def _word(
    raw: object,
    path: _yaml.Path,
    check: _Checker,
    allowed: frozenset[str] | tuple[str, ...],
    what: str,
) -> str | None:
    if isinstance(raw, str) and raw in allowed:
        return raw
    if isinstance(raw, str) and raw in FORBIDDEN_ACTIONS:
        check.error(
            path,
            f"{raw!r} is not allowed in a policy: rules and the trust agent never "
            "unblock or change admins; that is done by hand",
        )
        return None
    expected = ", ".join(sorted(allowed))
    shown = repr(raw) if isinstance(raw, str) else _kind(raw)
    check.error(path, f"unknown {what} {shown}; expected one of {expected}{check.hint(path, raw)}")
    return None


def _rule(index: int, raw: object, check: _Checker) -> Rule | None:
    path: _yaml.Path = ("fast_rules", index)
    if not isinstance(raw, dict):
        check.error(path, f"a rule must be a mapping with 'if' and 'action', got {_kind(raw)}")
        return None
    _check_keys(raw, RULE_KEYS, path, check)
    ok = True
    for key in ("if", "action"):
        if key not in raw:
            check.error(path, f"rule is missing {key!r}")
            ok = False
    conditions = (
        _conditions(raw.get("if"), (*path, "if"), check, what="rule") if "if" in raw else None
    )
    action = (
        _word(raw.get("action"), (*path, "action"), check, ACTIONS, "action")
        if "action" in raw
        else None
    )
    reason = _reason(raw.get("reason"), (*path, "reason"), check, 200)
    follow: dict[str, str | None] = {"on_success": None, "on_failure": None}
    for key in follow:
        if key not in raw:
            continue
        if action in TERMINAL:
            check.error((*path, key), f"{key} is only for verify and state actions, not {action!r}")
            ok = False
            continue
        follow[key] = _word(raw[key], (*path, key), check, FOLLOW_UPS, "follow-up")
        ok = ok and follow[key] is not None
    if not ok or conditions is None or action is None:
        return None
    on_success = on_failure = None
    if action not in TERMINAL:
        promotes = action in VERIFY or action.startswith("promote")
        on_success = follow["on_success"] or ("allow" if promotes else "deny")
        on_failure = follow["on_failure"] or "deny"
    return Rule(
        index=index,
        conditions=conditions,
        action=action,
        on_success=on_success,
        on_failure=on_failure,
        reason=reason,
        line=check.line(path),
    )


def _list(config: dict[str, Any], key: str, check: _Checker) -> list[Any]:
    raw = config.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        check.error(
            (key,),
            f"{key} must be a list, got {_kind(raw)} {raw!r}; write {key}: [{raw}]"
            if isinstance(raw, str)
            else f"{key} must be a list, got {_kind(raw)}",
        )
        return []
    return raw


def _compile(
    config: dict[str, Any], check: _Checker, *, translated: bool, default_name: str
) -> Policy | None:
    _check_keys(config, NATIVE_KEYS, (), check)
    name = default_name
    if "name" in config:
        raw_name = config["name"]
        if isinstance(raw_name, str) and _NAME.fullmatch(raw_name):
            name = raw_name
        else:
            check.error(("name",), f"name must match [a-z0-9_-]{{1,40}}, got {raw_name!r}")
    rules = []
    for i, raw in enumerate(_list(config, "fast_rules", check)):
        rule = _rule(i, raw, check)
        if rule is not None:
            rules.append(rule)
    default: Outcome = "deny"
    if "default" in config:
        word = _word(
            config["default"], ("default",), check, ("allow", "deny", "use_agent"), "default"
        )
        if word is not None:
            default = word  # type: ignore[assignment]
    triggers = []
    for i, raw in enumerate(_list(config, "use_agent", check)):
        path: _yaml.Path = ("use_agent", i)
        if not isinstance(raw, dict):
            check.error(
                path, f"a use_agent trigger must be a mapping {{when, reason}}, got {_kind(raw)}"
            )
            continue
        _check_keys(raw, TRIGGER_KEYS, path, check)
        if "when" not in raw:
            check.error(path, "use_agent trigger is missing 'when'")
            continue
        conds = _conditions(raw["when"], (*path, "when"), check, what="use_agent")
        reason = _reason(raw.get("reason"), (*path, "reason"), check, 200)
        if conds is not None:
            triggers.append(Trigger(conds, reason, check.line(path)))
    cache_s = 3600
    if "cache" in config:
        try:
            cache_s = parse_duration(config["cache"])
        except ValueError as exc:
            check.error(("cache",), f"bad duration: {exc}")
    reply = config.get("reply_on_deny")
    if reply is not None and (not isinstance(reply, str) or len(reply) > 500):
        check.error(
            ("reply_on_deny",), "reply_on_deny must be text of at most 500 characters or null"
        )
        reply = None
    tools = []
    for i, raw in enumerate(_list(config, "agent_tools", check)):
        tool = _word(raw, ("agent_tools", i), check, AGENT_TOOLS, "agent tool")
        if tool is not None and tool not in tools:
            tools.append(tool)
    disable = set()
    for i, raw in enumerate(_list(config, "disable", check)):
        op = _word(raw, ("disable", i), check, OPERATIONS, "operation")
        if op is not None:
            disable.add(op)
    payment = _payment(config, check)
    policy = Policy(
        name=name,
        digest="",
        fast_rules=tuple(rules),
        default=default,
        use_agent=tuple(triggers),
        cache_s=cache_s,
        reply_on_deny=reply,
        agent_tools=tuple(tools),
        payment=payment,
        disable=frozenset(disable),
    )
    uses_pay = policy.uses_action("verify_payment")
    if uses_pay and payment is None and "payment" not in config:
        check.error(("payment",), "verify_payment is used, so 'payment: {amount: N}' is required")
    if payment is not None and not uses_pay:
        check.error(("payment",), "payment is set but no rule uses verify_payment")
    for op, action in (("verify/invite", "verify_invite"), ("verify/payment", "verify_payment")):
        if op in disable and not policy.uses_action(action):
            check.warn(("disable",), f"{op!r} is already off: no rule uses {action}")
    _lint(policy, check, translated=translated)
    return policy


def _payment(config: dict[str, Any], check: _Checker) -> Payment | None:
    if "payment" not in config:
        return None
    raw = config["payment"]
    if not isinstance(raw, dict):
        check.error(
            ("payment",), f"payment must be a mapping {{amount, currency}}, got {_kind(raw)}"
        )
        return None
    _check_keys(raw, ("amount", "currency"), ("payment",), check)
    amount_raw = raw.get("amount")
    amount: Decimal | None = None
    if isinstance(amount_raw, int | float) and not isinstance(amount_raw, bool):
        try:
            amount = Decimal(str(amount_raw))
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite() or amount <= 0:
        check.error(
            ("payment", "amount"), f"payment.amount must be a number > 0, got {amount_raw!r}"
        )
        amount = None
    currency = raw.get("currency")
    if currency is not None and not (isinstance(currency, str) and _CURRENCY.fullmatch(currency)):
        check.error(
            ("payment", "currency"), f"currency must be three capitals like 'USD', got {currency!r}"
        )
        currency = None
    return Payment(amount, currency) if amount is not None else None


def _lint(policy: Policy, check: _Checker, *, translated: bool) -> None:
    for rule in policy.fast_rules:
        texts = [c.text for c in rule.conditions]
        if not translated and "is_blocked" in texts:
            check.warn(
                ("fast_rules", rule.index, "if"),
                "is_blocked rules are redundant: blocked clients are denied before any rule",
            )
        if (
            texts == ["always"]
            and rule.action in TERMINAL
            and rule.index + 1 < len(policy.fast_rules)
        ):
            check.warn(
                ("fast_rules", rule.index + 1),
                f"unreachable: rule {rule.index} always decides {rule.action!r}",
            )


# --- presets and resolution --------------------------------------------------------------


def preset_text(name: str) -> bytes:
    """The packaged bytes of a preset (`open`, `careful`, `strict`)."""
    if name not in PRESETS:
        raise TrustConfigError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    return importlib.resources.files("trust").joinpath("presets", f"{name}.md").read_bytes()


def load_preset(name: str) -> Policy:
    """A preset policy from package data, so an installed wheel has them (T28)."""
    key = name.strip().lower()
    return Policy.from_bytes(preset_text(key), source=f"preset:{key}", default_name=key)


def builtin_agent_prompt() -> str:
    """The built-in trust-agent prompt for 0.6.5 `default: ask` policies with no body (C12)."""
    data = (
        importlib.resources.files("trust")
        .joinpath("presets", "agent_prompt.md")
        .read_text(encoding="utf-8")
    )
    return data.strip()


def resolve_policy(trust: str | None) -> Policy:
    """Levels 0-2 of §4.1: None → careful; a preset name; a path to a policy file.

    Anything else (for example a sentence) is a `TrustConfigError`, never inline policy.
    """
    if trust is None:
        return load_preset("careful")
    if not isinstance(trust, str):
        raise TrustConfigError(
            f"trust must be a preset name or a file path, not {type(trust).__name__}"
        )
    key = trust.strip()
    if key.lower() in PRESETS:
        return load_preset(key.lower())
    path = FsPath(key).expanduser()
    try:
        is_file = bool(key) and path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        shown = key if len(key) <= 60 else key[:57] + "..."
        raise TrustConfigError(
            f"trust={shown!r} names neither a preset ({', '.join(PRESETS)}) nor an existing "
            "policy file; inline policy text is not accepted"
        )
    return Policy.from_file(path)


def canonical_policy_code(code: str) -> str:
    """Policy codes are canonicalised like typed codes (C11)."""
    return canonical_invite_code(code)
