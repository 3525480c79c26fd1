"""Reading the parts of a native policy's frontmatter: conditions, rules, lists, payment.

Each function reports what is wrong to a :class:`~trust._policy_check.Checker` and returns
``None`` for a part it could not read, so one load reports every problem at once.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from trust import _yaml
from trust._model import ClientState, RequestFacts
from trust._policy_check import Checker, kind_name
from trust._policy_rules import (
    ACTIONS,
    ATOMS,
    COMPARISONS,
    COUNTERS,
    FOLLOW_UPS,
    FORBIDDEN_ACTIONS,
    RULE_KEYS,
    TERMINAL,
    VERIFY,
    Condition,
    Payment,
    Predicate,
    Rule,
)

_CURRENCY = re.compile(r"[A-Z]{3}")
_COUNTER_COND = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*([<>=!]=?|=>|=<|<>)\s*(-?[0-9]+)")
_ATOM_COND = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_COUNT = 10**9


def _compile_condition(
    raw: object, path: _yaml.Path, check: Checker, *, what: str
) -> Condition | None:
    if not isinstance(raw, str):
        check.error(
            path, f"a {what} condition must be text, got {kind_name(raw)}{check.hint(path, raw)}"
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
        if op not in COMPARISONS:
            check.error(path, f"unknown operator {op!r}; use one of > >= < <= == !=")
            return None
        n = int(number)
        if not 0 <= n <= _MAX_COUNT:
            check.error(path, f"counter bound {n} is outside 0..1000000000")
            return None
        get, compare = COUNTERS[name], COMPARISONS[op]

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


def parse_conditions(
    raw: object, path: _yaml.Path, check: Checker, *, what: str
) -> tuple[Condition, ...] | None:
    """One condition or a list of them (all must hold); None when any is unreadable."""
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


def check_keys(
    value: dict[str, Any], allowed: tuple[str, ...], path: _yaml.Path, check: Checker
) -> None:
    """Report every key of ``value`` that is not in ``allowed``."""
    for key in value:
        if key not in allowed:
            check.error((*path, key), f"unknown key {key!r}; allowed: {', '.join(allowed)}")


def parse_reason(raw: object, path: _yaml.Path, check: Checker, limit: int) -> str | None:
    """A rule or trigger ``reason``: non-empty text of at most ``limit`` characters."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        check.error(path, f"reason must be non-empty text{check.hint(path, raw)}")
        return None
    if len(raw) > limit:
        check.error(path, f"reason is {len(raw)} characters; the limit is {limit}")
        return None
    return raw.strip()


def parse_word(
    raw: object,
    path: _yaml.Path,
    check: Checker,
    allowed: frozenset[str] | tuple[str, ...],
    what: str,
) -> str | None:
    """One word out of ``allowed`` (an action, follow-up, tool or operation)."""
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
    shown = repr(raw) if isinstance(raw, str) else kind_name(raw)
    check.error(path, f"unknown {what} {shown}; expected one of {expected}{check.hint(path, raw)}")
    return None


def parse_rule(index: int, raw: object, check: Checker) -> Rule | None:
    """Fast rule number ``index``, with its follow-ups defaulted (§4.3)."""
    path: _yaml.Path = ("fast_rules", index)
    if not isinstance(raw, dict):
        check.error(path, f"a rule must be a mapping with 'if' and 'action', got {kind_name(raw)}")
        return None
    check_keys(raw, RULE_KEYS, path, check)
    ok = True
    for key in ("if", "action"):
        if key not in raw:
            check.error(path, f"rule is missing {key!r}")
            ok = False
    conditions = (
        parse_conditions(raw.get("if"), (*path, "if"), check, what="rule") if "if" in raw else None
    )
    action = (
        parse_word(raw.get("action"), (*path, "action"), check, ACTIONS, "action")
        if "action" in raw
        else None
    )
    reason = parse_reason(raw.get("reason"), (*path, "reason"), check, 200)
    follow: dict[str, str | None] = {"on_success": None, "on_failure": None}
    for key in follow:
        if key not in raw:
            continue
        if action in TERMINAL:
            check.error((*path, key), f"{key} is only for verify and state actions, not {action!r}")
            ok = False
            continue
        follow[key] = parse_word(raw[key], (*path, key), check, FOLLOW_UPS, "follow-up")
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


def list_value(config: dict[str, Any], key: str, check: Checker) -> list[Any]:
    """The list under ``key`` (empty when absent); a scalar there is an error."""
    raw = config.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        check.error(
            (key,),
            f"{key} must be a list, got {kind_name(raw)} {raw!r}; write {key}: [{raw}]"
            if isinstance(raw, str)
            else f"{key} must be a list, got {kind_name(raw)}",
        )
        return []
    return raw


def parse_payment(config: dict[str, Any], check: Checker) -> Payment | None:
    """The ``payment`` mapping: an amount > 0 and an optional ISO currency."""
    if "payment" not in config:
        return None
    raw = config["payment"]
    if not isinstance(raw, dict):
        check.error(
            ("payment",), f"payment must be a mapping {{amount, currency}}, got {kind_name(raw)}"
        )
        return None
    check_keys(raw, ("amount", "currency"), ("payment",), check)
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
