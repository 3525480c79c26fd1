"""Policy files: loading, compilation, presets, resolution (TR §4).

A policy is Markdown with a YAML frontmatter. `Policy.from_text` / `Policy.from_file` read
the native format (or translate a connectonion 0.6.5 policy, see `trust._compat`), report
every problem at once in one `PolicyError`, and compile conditions into predicates once, so
`trust._rules.decide` parses nothing per message. The compiled pieces and the errors are in
`trust._policy_rules`, the readers of each frontmatter part in `trust._policy_parse`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.resources
import logging
import re
from pathlib import Path as FsPath
from typing import Any

import attrs

from trust import _compat as compat
from trust import _yaml
from trust._commands import canonical_invite_code, invite_code_digest
from trust._compat import LEGACY_KEYS
from trust._model import OPERATIONS as OPERATIONS
from trust._model import Decision, Outcome
from trust._policy_check import Checker, kind_name
from trust._policy_parse import (
    check_keys,
    list_value,
    parse_conditions,
    parse_payment,
    parse_reason,
    parse_rule,
    parse_word,
)
from trust._policy_rules import (
    AGENT_TOOLS as AGENT_TOOLS,
)
from trust._policy_rules import (
    ATOMS as ATOMS,
)
from trust._policy_rules import (
    COUNTERS as COUNTERS,
)
from trust._policy_rules import (
    FORMAT_065 as FORMAT_065,
)
from trust._policy_rules import (
    FORMAT_NATIVE,
    NATIVE_KEYS,
    TRIGGER_KEYS,
    PolicyFormat,
)
from trust._policy_rules import (
    PRESETS as PRESETS,
)
from trust._policy_rules import (
    TERMINAL as TERMINAL,
)
from trust._policy_rules import (
    Condition as Condition,
)
from trust._policy_rules import (
    Payment as Payment,
)
from trust._policy_rules import (
    PolicyError as PolicyError,
)
from trust._policy_rules import (
    PolicyProblem as PolicyProblem,
)
from trust._policy_rules import (
    PolicyWarning as PolicyWarning,
)
from trust._policy_rules import (
    Predicate as Predicate,
)
from trust._policy_rules import (
    Rule as Rule,
)
from trust._policy_rules import (
    Trigger as Trigger,
)
from trust._policy_rules import (
    TrustConfigError as TrustConfigError,
)
from trust._policy_rules import (
    parse_duration as parse_duration,
)

log = logging.getLogger("trust.policy")

_NAME = re.compile(r"[a-z0-9_-]{1,40}")
CompiledRule = tuple[Rule, tuple[Predicate, ...], Decision | None]
"""A fast rule, its conditions' tests, and its allow decision (see `Policy.compiled_rules`)."""
_LEVEL_WORDS = {"is_admin": "admin", "is_whitelist": "whitelisted", "is_contact": "contact"}


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

    @functools.cached_property
    def compiled_rules(self) -> tuple[CompiledRule, ...]:
        """The fast rules as `decide` walks them, built by its first call: each rule with
        its conditions' tests and the decision it makes when it allows with nothing staged
        (None for other actions), which depends on the rule and the policy only."""
        return tuple(
            (rule, tuple(cond.test for cond in rule.conditions), self._rule_allow(rule))
            for rule in self.fast_rules
        )

    def _rule_allow(self, rule: Rule) -> Decision | None:
        if rule.action != "allow":
            return None
        try:
            reason = rule.reason if rule.reason is not None else self.allow_reason(rule.index)
        except IndexError:  # a hand-built rule with a stray index: `decide` reports it
            return None
        return Decision(True, reason, "rule", rule.index, policy=self.name)

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

    def allow_reason(self, index: int) -> str:
        """The reason of an allow by rule ``index`` that gives none: the level it tests."""
        for cond in self.fast_rules[index].conditions:
            word = _LEVEL_WORDS.get(cond.text)
            if word is not None:
                return word
        return f"allowed by rule {index}"

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


@attrs.frozen
class _Split:
    frontmatter: str
    body: str
    body_line: int


def _split(text: str, check: Checker) -> _Split | None:
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
    check = Checker(source, {}, {})
    split = _split(text, check)
    if split is None:
        raise PolicyError(check.errors)
    doc = _yaml.load(split.frontmatter, first_line=2)
    check = Checker(source, doc.lines, doc.raw)
    for problem in doc.problems:
        check.error(problem.path, problem.message, line=problem.line)
    if doc.problems and doc.value is None:
        raise PolicyError(check.errors)
    if doc.value is None or doc.value == {}:
        check.error((), "empty frontmatter; a deny-all policy is written 'default: deny'", line=1)
        raise PolicyError(check.errors)
    if not isinstance(doc.value, dict):
        check.error(
            (), f"frontmatter must be a mapping of keys, not a {kind_name(doc.value)}", line=1
        )
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


def _compile(
    config: dict[str, Any], check: Checker, *, translated: bool, default_name: str
) -> Policy | None:
    check_keys(config, NATIVE_KEYS, (), check)
    name = default_name
    if "name" in config:
        raw_name = config["name"]
        if isinstance(raw_name, str) and _NAME.fullmatch(raw_name):
            name = raw_name
        else:
            check.error(("name",), f"name must match [a-z0-9_-]{{1,40}}, got {raw_name!r}")
    rules = []
    for i, raw in enumerate(list_value(config, "fast_rules", check)):
        rule = parse_rule(i, raw, check)
        if rule is not None:
            rules.append(rule)
    default: Outcome = "deny"
    if "default" in config:
        word = parse_word(
            config["default"], ("default",), check, ("allow", "deny", "use_agent"), "default"
        )
        if word is not None:
            default = word  # type: ignore[assignment]
    triggers = []
    for i, raw in enumerate(list_value(config, "use_agent", check)):
        path: _yaml.Path = ("use_agent", i)
        if not isinstance(raw, dict):
            check.error(
                path,
                f"a use_agent trigger must be a mapping {{when, reason}}, got {kind_name(raw)}",
            )
            continue
        check_keys(raw, TRIGGER_KEYS, path, check)
        if "when" not in raw:
            check.error(path, "use_agent trigger is missing 'when'")
            continue
        conds = parse_conditions(raw["when"], (*path, "when"), check, what="use_agent")
        reason = parse_reason(raw.get("reason"), (*path, "reason"), check, 200)
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
    for i, raw in enumerate(list_value(config, "agent_tools", check)):
        tool = parse_word(raw, ("agent_tools", i), check, AGENT_TOOLS, "agent tool")
        if tool is not None and tool not in tools:
            tools.append(tool)
    disable = set()
    for i, raw in enumerate(list_value(config, "disable", check)):
        op = parse_word(raw, ("disable", i), check, OPERATIONS, "operation")
        if op is not None:
            disable.add(op)
    payment = parse_payment(config, check)
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


def _lint(policy: Policy, check: Checker, *, translated: bool) -> None:
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
