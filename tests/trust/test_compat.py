"""connectonion 0.6.5 policy translation (TR §4.5, T40, T41, C12, C14)."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
import yaml

from trust import decide
from trust._model import (
    ClientState,
    CommandKind,
    ConsultAgent,
    Decision,
    InviteCheck,
    Level,
    PaymentCheck,
    RequestFacts,
)
from trust._policy import Policy, PolicyError, builtin_agent_prompt

CODE = "WELCOME-2025-ALPHA"

# --- the 0.6.5 reference: evaluate_request as the connectonion fact sheet records it ------


def evaluate_065(
    config: dict[str, Any], state: ClientState, request: dict[str, Any]
) -> tuple[str, bool]:
    """0.6.5's decision ('allow'/'deny'/'ask') and whether the client was promoted."""
    level = state.level
    for entry in config.get("deny", ["blocked"]):
        if entry == "blocked" and state.blocked:
            return "deny", False
    for entry in config.get("allow", []):
        if entry == "whitelisted" and level is Level.WHITELIST:
            return "allow", False
        if entry == "contact" and level is Level.CONTACT:
            return "allow", False
    onboard = config.get("onboard", {})
    promoted = level is Level.STRANGER
    if request.get("invite_code") and request["invite_code"] in onboard.get("invite_code", []):
        return "allow", promoted
    required = onboard.get("payment")
    if required and request.get("payment", 0) >= required:
        return "allow", promoted
    default = config.get("default", "deny")
    return {"allow": "allow", "deny": "deny", "ask": "ask"}.get(default, "deny"), False


CONFIGS = {
    "careful065": {
        "allow": ["whitelisted", "contact"],
        "deny": ["blocked"],
        "onboard": {"invite_code": [CODE], "payment": 10},
        "default": "ask",
    },
    "strict065": {"allow": ["whitelisted"], "deny": ["blocked"], "default": "deny"},
    "open065": {"default": "allow"},
    "contact_only": {"allow": ["contact"], "onboard": {"invite_code": [CODE]}},
    "pay_open": {"onboard": {"payment": 2.5}, "default": "allow"},
    "ask_only": {"deny": ["blocked"], "default": "ask"},
}
STATES = {
    "stranger": ClientState("co:s"),
    "contact": ClientState("co:s", level=Level.CONTACT),
    "whitelist": ClientState("co:s", level=Level.WHITELIST),
    "blocked_stranger": ClientState("co:s", blocked=True),
    "blocked_whitelist": ClientState("co:s", level=Level.WHITELIST, blocked=True),
}
# message kinds: (0.6.5 request fields, native command)
MESSAGES = {
    "plain": {},
    "good_code": {"invite_code": CODE},
    "respelt_code": {"invite_code": CODE.lower()},
    "wrong_code": {"invite_code": "NOT-THE-CODE-9"},
    "paid": {"payment": 10},
    "underpaid": {"payment": 1},
}


def to_policy(config: dict[str, Any], body: str = "Judge strangers.") -> Policy:
    return Policy.from_text(f"---\n{yaml.safe_dump(config)}---\n{body}", name="legacy")


def native_facts(policy: Policy, request: dict[str, Any]) -> RequestFacts:
    """What the engine pre-resolves for the native equivalent of a 0.6.5 request."""
    if "invite_code" in request:
        invite_id = policy.match_policy_code(request["invite_code"])
        check = (
            InviteCheck(True, invite_id=invite_id) if invite_id else InviteCheck(False, "unknown")
        )
        return RequestFacts(command=CommandKind.INVITE, invite=check)
    if "payment" in request:
        need = policy.payment.amount if policy.payment else 0
        ok = request["payment"] >= need
        return RequestFacts(
            command=CommandKind.PAY,
            payment=PaymentCheck(True, tx_id="tx") if ok else PaymentCheck(False, "amount too low"),
        )
    return RequestFacts()


GRID = list(itertools.product(CONFIGS, STATES, MESSAGES))


@pytest.mark.parametrize(("config_name", "state_name", "message"), GRID)
def test_T40_translation_admits_and_promotes_alike(
    config_name: str, state_name: str, message: str
) -> None:
    config = CONFIGS[config_name]
    state = STATES[state_name]
    request = MESSAGES[message]
    policy = to_policy(config)
    # `default: allow` alone reads the same in both formats, so it stays native
    assert (policy.format == "connectonion-0.6.5") == (config_name != "open065")
    old, old_promoted = evaluate_065(config, state, request)
    # 0.6.5 compared invite codes exactly; canonical codes match any spelling (C11).
    if message == "respelt_code" and old != "allow" and not state.blocked:
        old, old_promoted = evaluate_065(config, state, {"invite_code": CODE})
    got = decide(policy, state, native_facts(policy, request))
    promoted = isinstance(got, Decision) and any(a.op == "promote_to_contact" for a in got.actions)
    assert promoted == old_promoted
    if old == "ask":
        if request:
            # command text never reaches the trust agent (C17): deny, agent not asked
            assert isinstance(got, Decision)
            assert (got.allow, got.reason) == (False, "commands are not sent to the trust agent")
        else:
            assert isinstance(got, ConsultAgent)
    else:
        assert isinstance(got, Decision)
        assert got.allow == (old == "allow")


def test_T40_translation_rules_in_order() -> None:
    policy = to_policy(CONFIGS["careful065"])
    assert policy.describe_rules() == [
        "#0 if is_blocked: deny",
        "#1 if is_whitelist: allow",
        "#2 if is_contact: allow",
        "#3 if has_invite_code: verify_invite; on_success promote_to_contact; on_failure continue",
        "#4 if has_payment: verify_payment; on_success promote_to_contact; on_failure continue",
        "default: use_agent",
    ]
    assert policy.cache_s == 0
    assert policy.agent_tools == ()
    assert policy.payment is not None
    assert str(policy.payment.amount) == "10"
    assert policy.native_frontmatter is not None
    assert "verify_invite" in policy.native_frontmatter
    assert CODE not in policy.native_frontmatter


# --- each 0.6.5 defect: its own test ------------------------------------------------------


def errors_of(frontmatter: str) -> list[tuple[int, str, str]]:
    with pytest.raises(PolicyError) as info:
        Policy.from_text(f"---\n{frontmatter}\n---\nbody", name="legacy")
    return [(i.line, i.key, i.message) for i in info.value.items]


def test_defect_scalar_deny_silently_disabled_blocklist() -> None:
    got = errors_of("deny: blocked\nallow: [contact]")
    assert got[0][:2] == (2, "deny")
    assert "blocklist" in got[0][2]


def test_defect_scalar_allow_granted_nothing() -> None:
    got = errors_of("allow: whitelisted")
    assert got[0][:2] == (2, "allow")
    assert "must be a list" in got[0][2]


def test_defect_scalar_invite_code_was_a_substring_test() -> None:
    got = errors_of(f"onboard:\n  invite_code: {CODE}")
    assert got[0][1] == "onboard.invite_code"
    assert "substring" in got[0][2]


def test_defect_unknown_allow_entries_were_ignored() -> None:
    got = errors_of("allow: [whitelist, contact]")
    assert got[0][:2] == (2, "allow[0]")


def test_defect_text_or_non_positive_payment() -> None:
    for value in ("'100'", "0", "-5", "true"):
        got = errors_of(f"onboard: {{payment: {value}}}")
        assert got[0][1] == "onboard.payment", value


def test_defect_self_declared_payment_no_longer_promotes() -> None:
    policy = to_policy(CONFIGS["careful065"])
    plain = decide(policy, STATES["stranger"], RequestFacts())
    assert isinstance(plain, ConsultAgent)  # "I paid 10" as text is just a message
    rejected = decide(
        policy,
        STATES["stranger"],
        RequestFacts(
            command=CommandKind.PAY, payment=PaymentCheck(False, "no payment verifier configured")
        ),
    )
    assert isinstance(rejected, Decision)
    assert rejected.actions == ()
    assert rejected.allow is False


@pytest.mark.parametrize("value", ["yes", "true", "maybe", "1"])
def test_defect_other_default_values_read_as_deny(value: str) -> None:
    got = errors_of(f"allow: [contact]\ndefault: {value}")
    assert got[0][:2] == (3, "default")
    if value in ("yes", "true"):
        assert "boolean" in got[0][2]


def test_defect_empty_deny_could_admit_blocked_clients() -> None:
    policy = to_policy({"deny": [], "default": "allow"})
    assert any(w.key == "deny" and "blocklist" in w.message for w in policy.warnings)
    got = decide(policy, STATES["blocked_stranger"], RequestFacts())
    assert isinstance(got, Decision)
    assert (got.allow, got.reason) == (False, "blocked")


def test_defect_dashes_in_a_comment_cut_the_frontmatter() -> None:
    policy = Policy.from_text("---\ndefault: allow # a---b\nallow: [contact]\n---\nbody")
    assert policy.default == "allow"
    assert policy.describe_rules()[1] == "#1 if is_contact: allow"


def test_defect_list_frontmatter_raised() -> None:
    got = errors_of("- allow\n- deny")
    assert got[0][1] == "<frontmatter>"


def test_defect_unknown_onboard_and_deny_entries() -> None:
    got = {
        g[1]
        for g in errors_of(
            "deny: [blocked, spammers]\nonboard: {invite_code: [ABCDEFGHI], vouch: 2}"
        )
    }
    assert got == {"deny[1]", "onboard.vouch"}


@pytest.mark.parametrize(
    "code", ["OpenOnion", "openonion", "Open-Onion", "BETA2024", "beta 2024", "ABC123", "abc-12-3"]
)
def test_T41_public_or_short_invite_codes_fail(code: str) -> None:
    got = errors_of(f"onboard:\n  invite_code: ['{code}']")
    assert got[0][:2] == (3, "onboard.invite_code[0]")


def test_T41_scalar_public_code_fails() -> None:
    assert errors_of("onboard: {invite_code: [OpenOnion]}")[0][1] == "onboard.invite_code[0]"


def test_policy_codes_are_digests_matched_canonically() -> None:
    policy = to_policy({"onboard": {"invite_code": [CODE]}, "default": "deny"})
    assert CODE not in repr(policy)
    assert all(len(c) == 64 and CODE.lower() not in c for c in policy.policy_codes)
    assert policy.match_policy_code("welcome 2025 alpha") == "policy:legacy#0"
    assert policy.match_policy_code("WELCOME-2025-ALPHX") is None
    assert any("store invites" in w.message for w in policy.warnings)
    assert "verify/invite" in policy.enabled_operations()


def test_admin_in_allow_maps_to_is_admin() -> None:
    policy = to_policy({"allow": ["admin"], "default": "deny"})
    admin = attrs.evolve(STATES["stranger"], is_admin=True)
    got = decide(policy, admin, RequestFacts())
    assert isinstance(got, Decision)
    assert (got.allow, got.reason) == (True, "admin")


def test_C12_ask_with_empty_body_uses_builtin_prompt() -> None:
    policy = to_policy({"default": "ask"}, body="")
    assert policy.body == builtin_agent_prompt()
    assert "untrusted" in policy.body


def test_C14_translated_policy_has_no_is_blocked_warning() -> None:
    policy = to_policy(CONFIGS["strict065"])
    assert not any("redundant" in w.message for w in policy.warnings)
