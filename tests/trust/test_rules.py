"""`decide`: order, reasons, follow-ups, escalation, agent containment (TR §5,
T12, T16, T42-T47, C16-C26)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from decimal import Decimal
from unittest import mock

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trust._model import (
    AgentVerdict,
    ClientState,
    CommandKind,
    ConsultAgent,
    Decision,
    InviteCheck,
    Level,
    PaymentCheck,
    RequestFacts,
    StateChange,
)
from trust._policy import ATOMS, COUNTERS, Policy, load_preset
from trust._rules import ENGINE_ERROR, _Run, _Step, decide

OPEN, CAREFUL, STRICT = (load_preset(n) for n in ("open", "careful", "strict"))
STRANGER = ClientState("x:1")
CONTACT = ClientState("x:1", level=Level.CONTACT)
WHITELIST = ClientState("x:1", level=Level.WHITELIST)
ADMIN = ClientState("x:1", level=Level.CONTACT, is_admin=True)
ANON = ClientState.anonymous_sender()
PLAIN = RequestFacts()
INVITE_OK = RequestFacts(command=CommandKind.INVITE, invite=InviteCheck(True, invite_id="inv1"))
INVITE_BAD = RequestFacts(command=CommandKind.INVITE, invite=InviteCheck(False, "expired"))


def pol(frontmatter: str, body: str = "Judge the client.", name: str = "p") -> Policy:
    return Policy.from_text(f"---\n{frontmatter.strip()}\n---\n{body}", name=name)


def must_decide(policy: Policy, client: ClientState, facts: RequestFacts = PLAIN) -> Decision:
    got = decide(policy, client, facts)
    assert isinstance(got, Decision), got
    return got


# --- T43, T47: order and reasons ---------------------------------------------------------


@pytest.mark.parametrize("policy", [OPEN, CAREFUL, STRICT], ids=lambda p: p.name)
def test_T43_blocked_client_denied_blocked_under_every_preset(policy: Policy) -> None:
    for client in (
        attrs.evolve(WHITELIST, blocked=True),
        attrs.evolve(STRANGER, secondary_blocked=True),
    ):
        d = must_decide(policy, client, INVITE_OK)
        assert (d.allow, d.reason, d.tier, d.rule_index, d.actions) == (
            False,
            "blocked",
            "rule",
            None,
            (),
        )


def test_T43_no_policy_can_admit_a_blocked_client() -> None:
    p = pol("fast_rules:\n  - {if: is_blocked, action: allow}\ndefault: allow")
    assert must_decide(p, attrs.evolve(CONTACT, blocked=True)).reason == "blocked"


def test_T47_stranger_under_strict() -> None:
    d = must_decide(STRICT, STRANGER)
    assert (d.allow, d.reason, d.tier, d.rule_index) == (
        False,
        "stranger denied by strict",
        "default",
        None,
    )
    assert d.policy == "strict"


@pytest.mark.parametrize(
    ("policy", "client", "allow", "reason", "tier", "index"),
    [
        (STRICT, ADMIN, True, "admin", "rule", 0),
        (STRICT, WHITELIST, True, "whitelisted", "rule", 1),
        (STRICT, CONTACT, False, "contact denied by strict", "default", None),
        (CAREFUL, CONTACT, True, "contact", "rule", 2),
        (CAREFUL, STRANGER, False, "stranger denied by careful", "rule", 4),
        (OPEN, STRANGER, True, "default allow by open", "default", None),
    ],
)
def test_T47_specific_reasons(
    policy: Policy, client: ClientState, allow: bool, reason: str, tier: str, index: int | None
) -> None:
    d = must_decide(policy, client)
    assert (d.allow, d.reason, d.tier, d.rule_index) == (allow, reason, tier, index)


def test_T47_rule_reason_and_C26_non_level_allow() -> None:
    p = pol(
        "fast_rules:\n  - {if: is_dm, action: allow}\n"
        "  - {if: always, action: deny, reason: 'not in groups'}"
    )
    assert must_decide(p, STRANGER, RequestFacts(is_dm=True)).reason == "allowed by rule 0"
    d = must_decide(p, STRANGER)
    assert (d.reason, d.rule_index) == ("not in groups", 1)


def test_T44_swapping_two_matching_rules_changes_the_decision() -> None:
    a = pol("fast_rules:\n  - {if: is_contact, action: allow}\n  - {if: is_dm, action: deny}")
    b = pol("fast_rules:\n  - {if: is_dm, action: deny}\n  - {if: is_contact, action: allow}")
    facts = RequestFacts(is_dm=True)
    assert must_decide(a, CONTACT, facts).allow is True
    assert must_decide(b, CONTACT, facts).allow is False


# --- T45: escalation ---------------------------------------------------------------------


def test_T45_careful_stranger_11th_message_consults_agent_10th_not() -> None:
    tenth = decide(CAREFUL, attrs.evolve(STRANGER, requests=10), PLAIN)
    assert isinstance(tenth, Decision)
    assert tenth.allow is False
    eleventh = decide(CAREFUL, attrs.evolve(STRANGER, requests=11), PLAIN)
    assert eleventh == ConsultAgent(
        reason="stranger keeps writing; admit as contact or not", rule_index=4
    )


def test_T45_first_matching_trigger_reason_is_passed_on() -> None:
    p = pol(
        "use_agent:\n  - {when: is_contact, reason: first}\n  - {when: always, reason: second}\n"
        "  - {when: always, reason: third}"
    )
    assert decide(p, STRANGER, PLAIN) == ConsultAgent(reason="second", rule_index=None)


def test_C22_consult_reasons() -> None:
    p = pol("default: use_agent")
    assert decide(p, STRANGER, PLAIN) == ConsultAgent("default use_agent", None)
    r = pol("fast_rules:\n  - {if: is_dm, action: use_agent, reason: 'dm review'}")
    assert decide(r, STRANGER, RequestFacts(is_dm=True)) == ConsultAgent("dm review", 0)


def test_C17_command_never_consults_agent() -> None:
    p = pol("default: use_agent")
    for kind in CommandKind:
        d = must_decide(p, STRANGER, RequestFacts(command=kind))
        assert (d.allow, d.reason, d.tier) == (
            False,
            "commands are not sent to the trust agent",
            "default",
        )
    # a deny with a matching trigger is not escalated for a command
    d = must_decide(CAREFUL, attrs.evolve(STRANGER, requests=50), INVITE_BAD)
    assert d.reason == "invite rejected: expired"


def test_C25_verdict_ignored_on_non_escalating_path() -> None:
    facts = RequestFacts(agent=AgentVerdict(True, "sure"))
    d = must_decide(CAREFUL, attrs.evolve(STRANGER, requests=3), facts)
    assert (d.allow, d.reason) == (False, "stranger denied by careful")


# --- agent verdicts, T46, T62 (decide side) ----------------------------------------------

STRANGER_11 = attrs.evolve(STRANGER, requests=11)


def verdict_facts(verdict: AgentVerdict, *, promotion_allowed: bool = True) -> RequestFacts:
    return RequestFacts(agent=verdict, agent_promotion_allowed=promotion_allowed)


def test_verdict_tiers_and_reasons() -> None:
    d = must_decide(CAREFUL, STRANGER_11, verdict_facts(AgentVerdict(False, "spam")))
    assert (d.allow, d.reason, d.tier, d.rule_index) == (False, "trust agent: spam", "agent", 4)
    c = must_decide(CAREFUL, STRANGER_11, verdict_facts(AgentVerdict(True, "fine", cached=True)))
    assert (c.allow, c.reason, c.tier) == (True, "cached trust agent decision: fine", "cache")


def test_T46_staged_whitelist_or_other_client_changes_are_dropped() -> None:
    staged = (
        StateChange("promote_to_whitelist", "vip"),
        StateChange("promote_to_contact", "other", client_id="x:2"),
        StateChange("block", "other", client_id="x:3"),
        StateChange("demote_to_stranger", "x"),
        StateChange("promote_to_contact", "looks fine"),
    )
    d = must_decide(CAREFUL, STRANGER_11, verdict_facts(AgentVerdict(True, "ok", staged=staged)))
    assert d.allow is True
    assert [(a.op, a.client_id) for a in d.actions] == [("promote_to_contact", None)]
    assert d.dropped == 4


def test_T62_promotion_contained_to_one_step_for_allowed_stranger() -> None:
    promote = (StateChange("promote_to_contact", "said so"),)
    # deny verdict drops the promotion
    d = must_decide(CAREFUL, STRANGER_11, verdict_facts(AgentVerdict(False, "no", staged=promote)))
    assert (d.actions, d.dropped) == ((), 1)
    # agent_may_promote false (reverted or human-demoted) drops it
    barred = attrs.evolve(STRANGER_11, agent_may_promote=False)
    d = must_decide(CAREFUL, barred, verdict_facts(AgentVerdict(True, "ok", staged=promote)))
    assert (d.allow, d.actions, d.dropped) == (True, (), 1)
    # hourly deployment limit reached
    d = must_decide(
        CAREFUL,
        STRANGER_11,
        verdict_facts(AgentVerdict(True, "ok", staged=promote), promotion_allowed=False),
    )
    assert (d.allow, d.actions, d.dropped) == (True, (), 1)


def test_C23_agent_block_turns_allow_into_deny() -> None:
    staged = (StateChange("promote_to_contact", "a"), StateChange("block", "abusive"))
    d = must_decide(CAREFUL, STRANGER_11, verdict_facts(AgentVerdict(True, "hmm", staged=staged)))
    assert (d.allow, d.reason) == (False, "blocked by trust agent: hmm")
    assert [a.op for a in d.actions] == ["block"]
    assert d.dropped == 1


def test_T12_T16_no_rule_or_agent_path_changes_admin_or_unblocks() -> None:
    ops = {
        "promote_to_contact",
        "promote_to_whitelist",
        "demote_to_contact",
        "demote_to_stranger",
        "block",
    }
    for policy in (OPEN, CAREFUL, STRICT):
        for client in (STRANGER_11, CONTACT, WHITELIST, ADMIN, ANON):
            for facts in (PLAIN, INVITE_OK, verdict_facts(AgentVerdict(True, "x"))):
                got = decide(policy, client, facts)
                if isinstance(got, Decision):
                    assert {a.op for a in got.actions} <= ops


# --- verify and state actions, follow-ups ------------------------------------------------


def test_careful_invite_accepted_promotes_with_invite_id() -> None:
    d = must_decide(CAREFUL, STRANGER, INVITE_OK)
    assert (d.allow, d.reason, d.tier, d.rule_index) == (True, "invite accepted", "rule", 3)
    assert [(a.op, a.invite_id, a.rule_index) for a in d.actions] == [
        ("promote_to_contact", "inv1", 3)
    ]


def test_T34_failed_invite_without_on_failure_denies() -> None:
    p = pol("fast_rules:\n  - {if: has_invite_code, action: verify_invite}\ndefault: allow")
    d = must_decide(p, STRANGER, INVITE_BAD)
    assert (d.allow, d.reason, d.actions) == (False, "invite rejected: expired", ())


def test_C20_bare_invite_is_missing_code() -> None:
    facts = RequestFacts(command=CommandKind.INVITE, invite=InviteCheck(False, "missing code"))
    assert must_decide(CAREFUL, STRANGER, facts).reason == "invite rejected: missing code"
    assert must_decide(CAREFUL, STRANGER, RequestFacts(command=CommandKind.INVITE)).reason == (
        "invite rejected: missing code"
    )


def test_C26_invite_by_non_stranger_changes_nothing() -> None:
    p = pol(
        "fast_rules:\n  - {if: has_invite_code, action: verify_invite, "
        "on_success: promote_to_contact}"
    )
    d = must_decide(p, CONTACT, INVITE_OK)
    assert (d.allow, d.reason, d.actions) == (True, "invite accepted", ())


def test_C18_rule_reason_covers_success_and_failure() -> None:
    p = pol("fast_rules:\n  - {if: has_invite_code, action: verify_invite, reason: 'beta door'}")
    assert must_decide(p, STRANGER, INVITE_OK).reason == "beta door"
    assert must_decide(p, STRANGER, INVITE_BAD).reason == "beta door"


def test_C21_payment_verified_and_rejected() -> None:
    p = pol(
        "fast_rules:\n  - {if: has_payment, action: verify_payment, on_success: promote_to_contact}\n"
        "payment: {amount: 5}"
    )
    ok = RequestFacts(
        command=CommandKind.PAY, payment=PaymentCheck(True, tx_id="tx9", amount_paid=Decimal(5))
    )
    d = must_decide(p, STRANGER, ok)
    assert (d.allow, d.reason) == (True, "payment verified")
    assert [(a.op, a.payment_tx) for a in d.actions] == [("promote_to_contact", "tx9")]
    none = RequestFacts(
        command=CommandKind.PAY, payment=PaymentCheck(False, "no payment verifier configured")
    )
    assert (
        must_decide(p, STRANGER, none).reason == "payment rejected: no payment verifier configured"
    )


def test_C19_later_rules_see_staged_changes() -> None:
    p = pol(
        "fast_rules:\n"
        "  - {if: is_dm, action: promote_to_contact, on_success: continue}\n"
        "  - {if: is_contact, action: allow}\n"
    )
    d = must_decide(p, STRANGER, RequestFacts(is_dm=True))
    assert (d.allow, d.reason, d.rule_index) == (True, "contact", 1)
    assert [a.op for a in d.actions] == ["promote_to_contact"]


def test_state_actions_skip_no_level_and_follow_up_failure_denies_bare() -> None:
    skip = pol("fast_rules:\n  - {if: always, action: promote_to_whitelist}\ndefault: allow")
    d = must_decide(skip, STRANGER)
    assert (d.allow, d.actions) == (False, ())
    assert "must be a contact first" in d.reason
    noop = must_decide(skip, WHITELIST)
    assert (noop.allow, noop.actions) == (True, ())
    demote = pol("fast_rules:\n  - {if: always, action: demote_to_stranger}")
    assert must_decide(demote, WHITELIST).actions == ()
    d = must_decide(demote, CONTACT)
    assert (d.allow, [a.op for a in d.actions]) == (False, ["demote_to_stranger"])
    block = pol(
        "fast_rules:\n  - {if: is_dm, action: verify_invite, on_success: block, on_failure: continue}\n"
        "default: allow"
    )
    d = must_decide(block, ADMIN, RequestFacts(is_dm=True, invite=InviteCheck(True, invite_id="i")))
    assert (d.allow, d.actions) == (False, ())  # blocking an admin fails: deny, no actions


def test_rule_block_denies_and_records_reason() -> None:
    p = pol("fast_rules:\n  - {if: 'requests_hour > 100', action: block, reason: flooding}")
    d = must_decide(p, attrs.evolve(STRANGER, requests_hour=101))
    assert (d.allow, d.reason) == (False, "flooding")
    assert [(a.op, a.reason) for a in d.actions] == [("block", "flooding")]


# --- C16: anonymous ----------------------------------------------------------------------


def test_C16_anonymous_sender() -> None:
    assert must_decide(OPEN, ANON).allow is True
    d = must_decide(CAREFUL, ANON, INVITE_OK)
    assert (d.allow, d.reason, d.actions) == (False, "anonymous sender", ())
    assert must_decide(CAREFUL, ANON).reason == "stranger denied by careful"
    consult = pol("default: use_agent")
    d = must_decide(
        consult,
        ANON,
        verdict_facts(AgentVerdict(True, "x", staged=(StateChange("promote_to_contact"),))),
    )
    assert (d.allow, d.reason, d.actions) == (False, "anonymous sender", ())
    counter = pol(
        "fast_rules:\n  - {if: 'requests == 0', action: allow}\n  - {if: is_stranger, action: deny}"
    )
    assert must_decide(counter, ANON).allow is True


# --- T42: generated policies and states ---------------------------------------------------

_ACTIONS = [
    "allow",
    "deny",
    "use_agent",
    "verify_invite",
    "verify_payment",
    "promote_to_contact",
    "promote_to_whitelist",
    "demote_to_contact",
    "demote_to_stranger",
    "block",
]
_FOLLOW = [
    "allow",
    "deny",
    "use_agent",
    "continue",
    "promote_to_contact",
    "block",
    "demote_to_stranger",
]

conditions = st.one_of(
    st.sampled_from(sorted(ATOMS)),
    st.builds(lambda a: f"not {a}", st.sampled_from(sorted(ATOMS))),
    st.builds(
        lambda c, o, n: f"'{c} {o} {n}'",
        st.sampled_from(sorted(COUNTERS)),
        st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
        st.integers(0, 30),
    ),
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    lines = ["fast_rules:"]
    uses_pay = False
    for _ in range(draw(st.integers(0, 6))):
        conds = draw(st.lists(conditions, min_size=1, max_size=3))
        action = draw(st.sampled_from(_ACTIONS))
        uses_pay = uses_pay or action == "verify_payment"
        rule = f"  - {{if: [{', '.join(conds)}], action: {action}"
        if action not in ("allow", "deny", "use_agent"):
            for key in ("on_success", "on_failure"):
                if draw(st.booleans()):
                    rule += f", {key}: {draw(st.sampled_from(_FOLLOW))}"
        lines.append(rule + "}")
    if len(lines) == 1:
        lines = ["fast_rules: []"]
    lines.append(f"default: {draw(st.sampled_from(['allow', 'deny', 'use_agent']))}")
    triggers = draw(st.lists(conditions, max_size=2))
    if triggers:
        lines.append("use_agent:")
        lines.extend(f"  - {{when: {t}, reason: r}}" for t in triggers)
    if uses_pay:
        lines.append("payment: {amount: 1}")
    return pol("\n".join(lines))


client_states = st.builds(
    ClientState,
    client_id=st.sampled_from(["x:1", "anonymous"]),
    level=st.sampled_from(list(Level)),
    blocked=st.booleans(),
    secondary_blocked=st.booleans(),
    is_admin=st.booleans(),
    anonymous=st.booleans(),
    agent_may_promote=st.booleans(),
    requests=st.integers(0, 40),
    requests_today=st.integers(0, 40),
    requests_hour=st.integers(0, 40),
    days_known=st.integers(0, 40),
)
staged = st.lists(
    st.builds(
        StateChange,
        op=st.sampled_from(_ACTIONS[5:]),
        client_id=st.sampled_from([None, "x:1", "x:2"]),
    ),
    max_size=3,
).map(tuple)
facts_st = st.builds(
    RequestFacts,
    command=st.none() | st.sampled_from(list(CommandKind)),
    is_dm=st.booleans(),
    mentions_bot=st.booleans(),
    invite=st.none()
    | st.builds(
        InviteCheck,
        ok=st.booleans(),
        reason=st.sampled_from(["unknown", ""]),
        invite_id=st.just("i"),
    ),
    payment=st.none() | st.builds(PaymentCheck, ok=st.booleans(), tx_id=st.just("t")),
    agent=st.none()
    | st.builds(
        AgentVerdict, allow=st.booleans(), reason=st.just("r"), cached=st.booleans(), staged=staged
    ),
    agent_promotion_allowed=st.booleans(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), client=client_states, facts=facts_st)
def test_T42_decide_is_total_and_pure_on_generated_inputs(
    policy: Policy, client: ClientState, facts: RequestFacts
) -> None:
    before = (client, facts)
    with no_io():
        got = decide(policy, client, facts)
    assert isinstance(got, Decision | ConsultAgent)
    assert (client, facts) == before
    assert decide(policy, client, facts) == got  # deterministic
    if isinstance(got, Decision):
        assert got.reason != ENGINE_ERROR
        assert got.reason
        if client.blocked or client.secondary_blocked:
            assert (got.allow, got.reason) == (False, "blocked")
        if client.anonymous:
            assert got.actions == ()
        for action in got.actions:
            assert action.op != "promote_to_whitelist" or action.rule_index is not None
            assert action.client_id is None
    else:
        assert not client.anonymous
        assert facts.command is None
        assert facts.agent is None


@contextlib.contextmanager
def no_io() -> Iterator[None]:
    """Any file or socket use inside the block fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("decide did I/O")

    with mock.patch.object(socket, "socket", refuse), mock.patch("builtins.open", refuse):
        yield


def test_decide_never_raises_on_internal_error() -> None:
    broken = attrs.evolve(CAREFUL, fast_rules=(None,))  # type: ignore[arg-type]
    d = must_decide(broken, STRANGER)
    assert (d.allow, d.reason) == (False, ENGINE_ERROR)


def test_T48_bench_trust_runs_and_reports_median_and_p99() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_trust.py"
    spec = importlib.util.spec_from_file_location("bench_trust", path)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cases = bench.workload()
    assert len({p.name for p, _, _ in cases}) == 4
    twenty = next(p for p, _, _ in cases if p.name == "bench20")
    assert len(twenty.fast_rules) == 20
    result = bench.bench_decide(2000)
    assert result.count == 2000
    assert 0 < result.median_us <= result.p99_us  # measured; no wall-clock target in CI
    assert "median" in result.line()
    evaluated = bench.bench_evaluate(300)  # the engine's fast path over a real SQLite store
    assert (evaluated.name, evaluated.count) == ("evaluate", 300)
    assert 0 < evaluated.median_us <= evaluated.p99_us


def test_a_rules_allow_built_once_is_the_decision_finish_makes() -> None:
    reasons = Policy.from_text(
        """---
name: reasons
fast_rules:
  - {if: [is_contact, is_dm], action: allow, reason: a contact writing directly}
  - {if: [is_dm, 'requests < 5'], action: allow}
  - {if: [is_whitelist, mentions_bot], action: allow}
  - {if: is_stranger, action: promote_to_contact, on_success: continue}
  - {if: is_contact, action: allow}
default: deny
---
"""
    )
    for policy in (OPEN, CAREFUL, STRICT, reasons):
        for rule, tests, allowed in policy.compiled_rules:
            assert tests == tuple(cond.test for cond in rule.conditions)
            if rule.action != "allow":
                assert allowed is None
                continue
            step = _Step("allow", rule.reason, "rule", rule.index, rule.reason)
            assert allowed == _Run(policy, STRANGER, PLAIN).finish(step)
    assert [r[2].reason for r in reasons.compiled_rules if r[2] is not None] == [
        "a contact writing directly",
        "allowed by rule 1",
        "whitelisted",
        "contact",
    ]
    # With a change staged by an earlier rule the allow is built per message, with it.
    d = must_decide(reasons, STRANGER, RequestFacts(is_dm=False))
    assert (d.allow, d.rule_index, [a.op for a in d.actions]) == (True, 4, ["promote_to_contact"])
