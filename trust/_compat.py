"""Translation of connectonion 0.6.5 policies into native rules (TR §4.5).

A 0.6.5 frontmatter uses only `allow`, `deny`, `onboard` and `default`. `translate` turns it
into a native frontmatter mapping that decides the same for well-formed input, and reports
as errors what 0.6.5 silently misread: scalars where lists belong (`deny: blocked` disabled
the blocklist, `invite_code: X` became a substring test), unknown entries, non-positive or
textual payments, booleans and other `default` values, short or public invite codes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import yaml

from trust import _yaml
from trust._commands import PUBLIC_INVITE_CODES, canonical_invite_code, invite_code_digest
from trust._policy_check import Checker

LEGACY_KEYS = ("allow", "deny", "onboard")
"""The keys that mark a frontmatter as connectonion 0.6.5 (with ``default``, shared)."""
_065_KEYS = frozenset({*LEGACY_KEYS, "default"})
_ALLOW = {"whitelisted": "is_whitelist", "contact": "is_contact", "admin": "is_admin"}
_DEFAULTS = {"allow": "allow", "deny": "deny", "ask": "use_agent"}
_MIN_CODE = 8


@attrs.frozen
class Translation:
    """A translated 0.6.5 policy: the native mapping, its policy codes (digests only) and
    the rendered native frontmatter for `policy check`."""

    native: dict[str, Any]
    codes: tuple[str, ...] = ()
    code_warnings: tuple[_yaml.Path, ...] = ()
    rendered: str = ""


def is_065(config: dict[str, Any]) -> bool:
    """True for a connectonion 0.6.5 frontmatter (§4.5)."""
    if not config or not set(config) <= _065_KEYS:
        return False
    return any(k in config for k in LEGACY_KEYS) or config.get("default") == "ask"


def _scalar_for_list(key: str, value: object, effect: str) -> str:
    return (
        f"{key} must be a list, got {value!r}; connectonion 0.6.5 read a scalar character "
        f"by character ({effect}); write {key}: [{value}]"
    )


def translate(config: dict[str, Any], check: Checker) -> Translation:
    """Translate a 0.6.5 frontmatter; problems go to `check` with their original lines."""
    rules: list[dict[str, Any]] = []
    native: dict[str, Any] = {}

    deny = config.get("deny", ["blocked"])
    if not isinstance(deny, list):
        check.error(("deny",), _scalar_for_list("deny", deny, "so the blocklist was silently off"))
    else:
        for i, entry in enumerate(deny):
            if entry != "blocked":
                check.error(("deny", i), f"unknown deny entry {entry!r}; 0.6.5 knew only 'blocked'")
        if not deny:
            check.warn(
                ("deny",),
                "deny: [] turned the blocklist off in 0.6.5; "
                "here blocked clients are always denied",
            )
    rules.append({"if": "is_blocked", "action": "deny"})

    allow = config.get("allow", [])
    if not isinstance(allow, list):
        check.error(("allow",), _scalar_for_list("allow", allow, "so it granted nothing"))
    else:
        for i, entry in enumerate(allow):
            atom = _ALLOW.get(entry) if isinstance(entry, str) else None
            if atom is None:
                check.error(
                    ("allow", i),
                    f"unknown allow entry {entry!r} (0.6.5 silently ignored it); "
                    "use whitelisted, contact or admin",
                )
            else:
                rules.append({"if": atom, "action": "allow"})

    codes: list[str] = []
    code_paths: list[_yaml.Path] = []
    onboard = config.get("onboard")
    if onboard is not None and not isinstance(onboard, dict):
        check.error(("onboard",), "onboard must be a mapping {invite_code: [...], payment: N}")
    elif isinstance(onboard, dict):
        for key in onboard:
            if key not in ("invite_code", "payment"):
                check.error(("onboard", key), f"unknown onboard key {key!r}; 0.6.5 ignored it")
        if "invite_code" in onboard:
            codes = _codes(onboard["invite_code"], check)
            if codes:
                code_paths.append(("onboard", "invite_code"))
                rules.append(
                    {
                        "if": "has_invite_code",
                        "action": "verify_invite",
                        "on_success": "promote_to_contact",
                        "on_failure": "continue",
                    }
                )
        if "payment" in onboard:
            amount = _amount(onboard["payment"], check)
            if amount is not None:
                native["payment"] = {"amount": onboard["payment"]}
                rules.append(
                    {
                        "if": "has_payment",
                        "action": "verify_payment",
                        "on_success": "promote_to_contact",
                        "on_failure": "continue",
                    }
                )

    default = config.get("default", "deny")
    mapped = _DEFAULTS.get(default) if isinstance(default, str) else None
    if mapped is None:
        check.error(
            ("default",),
            f"default must be allow, deny or ask, got {default!r} (0.6.5 read it as deny)"
            f"{check.hint(('default',), default)}",
        )
        mapped = "deny"

    out: dict[str, Any] = {"fast_rules": rules, "default": mapped}
    out.update(native)
    out["cache"] = 0
    out["agent_tools"] = []
    rendered = yaml.safe_dump(out, sort_keys=False, default_flow_style=None)
    if codes:
        rendered += f"# plus {len(codes)} policy invite code(s), held as SHA-256 digests\n"
    return Translation(
        native=out, codes=tuple(codes), code_warnings=tuple(code_paths), rendered=rendered
    )


def _codes(raw: object, check: Checker) -> list[str]:
    path: _yaml.Path = ("onboard", "invite_code")
    if not isinstance(raw, list):
        check.error(
            path,
            f"invite_code must be a list, got {raw!r}; 0.6.5 matched any substring of a "
            f"scalar code; write invite_code: [{raw}]",
        )
        return []
    digests = []
    for i, code in enumerate(raw):
        where = (*path, i)
        if not isinstance(code, str):
            check.error(where, f"invite codes must be quoted text, got {code!r}")
            continue
        canon = canonical_invite_code(code)
        if canon in PUBLIC_INVITE_CODES:
            check.error(where, "this invite code is publicly known (shipped by connectonion)")
        elif len(canon) < _MIN_CODE:
            check.error(where, f"invite codes need at least {_MIN_CODE} characters")
        else:
            digests.append(invite_code_digest(canon))
    return digests


def _amount(raw: object, check: Checker) -> Decimal | None:
    path: _yaml.Path = ("onboard", "payment")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        check.error(
            path, f"payment must be a number > 0, got {raw!r} (0.6.5 crashed on text payments)"
        )
        return None
    amount = Decimal(str(raw))
    if not amount.is_finite() or amount <= 0:
        check.error(path, f"payment must be > 0, got {raw!r}")
        return None
    return amount
