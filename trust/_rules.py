"""The fast-rule tier: `decide(policy, client, facts) -> Decision | ConsultAgent` (TR §5).

Pure and total: no I/O, no clock, no mutation, never raises. Order: a blocked client is
denied before any rule; an anonymous sender is denied on any path that would consult the
agent or change state; then `fast_rules` in order (verify and state actions run their
follow-ups; `continue` moves on with the staged state visible, C19); then `default`; then
escalation to the trust agent, whose verdict (when `facts.agent` holds one) decides through
the containment filter of §5/§7.
"""

from __future__ import annotations

import logging

import attrs

from trust._model import (
    AgentVerdict,
    ClientState,
    ConsultAgent,
    Decision,
    Level,
    Outcome,
    RequestFacts,
    StateChange,
    StateOp,
    Tier,
)
from trust._policy import TERMINAL, Policy, Rule

log = logging.getLogger("trust.rules")

ENGINE_ERROR = "trust engine error"
ANONYMOUS_SENDER = "anonymous sender"
COMMANDS_NOT_SENT = "commands are not sent to the trust agent"

_TARGET = {
    "promote_to_contact": Level.CONTACT,
    "promote_to_whitelist": Level.WHITELIST,
    "demote_to_contact": Level.CONTACT,
    "demote_to_stranger": Level.STRANGER,
}


def decide(policy: Policy, client: ClientState, facts: RequestFacts) -> Decision | ConsultAgent:
    """Decide one message under `policy`; see the module docstring for the order."""
    try:
        return _Run(policy, client, facts).run()
    except Exception:  # total by contract: a bug here denies instead of crashing a turn
        log.exception("decide failed for policy %s", policy.name)
        return Decision(allow=False, reason=ENGINE_ERROR, tier="rule", policy=policy.name)


@attrs.define
class _Step:
    """A terminal outcome reached by a rule or the default."""

    outcome: Outcome
    reason: str | None
    tier: Tier
    rule_index: int | None
    rule_reason: str | None = None


class _Run:
    __slots__ = ("actions", "client", "facts", "policy", "state")

    def __init__(self, policy: Policy, client: ClientState, facts: RequestFacts) -> None:
        self.policy = policy
        self.client = client
        self.facts = facts
        self.state = client
        self.actions: list[StateChange] = []

    def decision(
        self, allow: bool, reason: str, tier: Tier, index: int | None, *, dropped: int = 0
    ) -> Decision:
        return Decision(
            allow=allow,
            reason=reason,
            tier=tier,
            rule_index=index,
            actions=tuple(self.actions),
            policy=self.policy.name,
            dropped=dropped,
        )

    def deny_bare(self, reason: str, tier: Tier, index: int | None) -> Decision:
        self.actions.clear()
        return self.decision(False, reason, tier, index)

    def run(self) -> Decision | ConsultAgent:
        client = self.client
        if client.blocked or client.secondary_blocked:
            return Decision(allow=False, reason="blocked", tier="rule", policy=self.policy.name)
        step: _Step | Decision | None = None
        facts = self.facts
        for rule, tests, allowed in self.policy.compiled_rules:
            state = self.state  # a `continue` rule may have staged a new one (C19)
            for test in tests:
                if not test(state, facts):
                    break
            else:  # every condition holds (`Rule.matches`, inlined: it runs per rule per message)
                if allowed is not None and not self.actions:
                    return allowed  # what `finish` makes of this allow, built once per policy
                step = self.apply_rule(rule)
                if step is not None:
                    break
        if isinstance(step, Decision):
            return step
        if step is None:
            step = _Step(self.policy.default, None, "default", None)
        return self.finish(step)

    # --- rules ---------------------------------------------------------------------------

    def apply_rule(self, rule: Rule) -> _Step | Decision | None:
        """Run one matching rule: a terminal step, a final decision, or None (continue)."""
        action = rule.action
        if action in TERMINAL:
            return _Step(action, rule.reason, "rule", rule.index, rule.reason)  # type: ignore[arg-type]
        if self.client.anonymous:
            return self.deny_bare(ANONYMOUS_SENDER, "rule", rule.index)
        extra: dict[str, str | None] = {}
        if action == "verify_invite":
            ok, why, extra = self.verify_invite()
        elif action == "verify_payment":
            ok, why, extra = self.verify_payment()
        else:
            ok, why = self.stage(action, rule, {})  # type: ignore[arg-type]
        reason = rule.reason or why
        follow = rule.on_success if ok else rule.on_failure
        assert follow is not None
        if follow == "continue":
            return None
        if follow in TERMINAL:
            return _Step(follow, reason, "rule", rule.index, rule.reason)  # type: ignore[arg-type]
        # A state action as follow-up: implies allow (promote) or deny (demote, block).
        staged_ok, staged_why = self.stage(follow, rule, extra)  # type: ignore[arg-type]
        if not staged_ok:
            return self.deny_bare(rule.reason or staged_why, "rule", rule.index)
        allow = follow.startswith("promote")
        if action in ("verify_invite", "verify_payment"):
            final = reason
        else:
            final = rule.reason or staged_why
        return self.decision(allow, final, "rule", rule.index)

    def verify_invite(self) -> tuple[bool, str, dict[str, str | None]]:
        check = self.facts.invite
        if check is None:
            return False, "invite rejected: missing code", {}
        if check.ok:
            return True, "invite accepted", {"invite_id": check.invite_id}
        return False, f"invite rejected: {check.reason or 'unknown'}", {}

    def verify_payment(self) -> tuple[bool, str, dict[str, str | None]]:
        check = self.facts.payment
        if check is None:
            return False, "payment rejected: no payment reference", {}
        if check.ok:
            return True, "payment verified", {"payment_tx": check.tx_id}
        return False, f"payment rejected: {check.reason or 'not verified'}", {}

    def stage(self, op: StateOp, rule: Rule, extra: dict[str, str | None]) -> tuple[bool, str]:
        """Stage a state action on the evolving state; (succeeded, reason)."""
        state = self.state
        if op == "block":
            if state.is_admin:
                return False, "block not applicable: client is an admin"
            why = rule.reason or f"blocked by rule {rule.index} of {self.policy.name}"
            self.actions.append(StateChange(op=op, reason=why, rule_index=rule.index))
            self.state = attrs.evolve(state, blocked=True)
            return True, "blocked"
        target = _TARGET[op]
        current = state.level
        if op.startswith("promote"):
            if current.rank >= target.rank:
                return True, f"already {_word(current)}"
            if current.rank + 1 != target.rank:
                return False, f"{op} not applicable: must be a {_word(Level(_prev(target)))} first"
            verb = "promoted"
        else:
            if current.rank <= target.rank:
                return True, f"already {_word(current)}"
            if current.rank - 1 != target.rank:
                return False, f"{op} not applicable: demote one level at a time"
            verb = "demoted"
        self.actions.append(
            StateChange(
                op=op,
                reason=rule.reason or f"{verb} by rule {rule.index} of {self.policy.name}",
                invite_id=extra.get("invite_id"),
                payment_tx=extra.get("payment_tx"),
                rule_index=rule.index,
            )
        )
        self.state = attrs.evolve(state, level=target)
        return True, f"{verb} to {target.value}"

    # --- outcome, default, escalation -----------------------------------------------------

    def finish(self, step: _Step) -> Decision | ConsultAgent:
        policy, state, facts = self.policy, self.state, self.facts
        staged_block = next((a for a in self.actions if a.op == "block"), None)
        if staged_block is not None:
            # A rule staged a block (``on_success: continue``): the client is blocked once
            # this decision applies, so it is a deny and nothing may escalate past it.
            return self.decision(False, staged_block.reason, "rule", staged_block.rule_index)
        command = facts.command is not None
        escalate = step.outcome == "use_agent"
        trigger_reason: str | None = None
        if escalate or (
            step.outcome == "deny"
            and not command
            and not any(a.op == "block" for a in self.actions)
        ):
            for trigger in policy.use_agent:
                if trigger.matches(state, facts):
                    escalate = True
                    trigger_reason = trigger.reason
                    break
        if escalate:
            if self.client.anonymous:
                return self.deny_bare(ANONYMOUS_SENDER, step.tier, step.rule_index)
            if command:
                return self.deny_bare(COMMANDS_NOT_SENT, step.tier, step.rule_index)
            if facts.agent is not None:
                return self.verdict(facts.agent, step.rule_index)
            return ConsultAgent(
                reason=trigger_reason or step.rule_reason or "default use_agent",
                rule_index=step.rule_index,
            )
        if step.outcome == "allow":
            if step.reason is not None:
                reason = step.reason
            elif step.tier == "default":
                reason = f"default allow by {policy.name}"
            else:
                reason = self.allow_reason(step.rule_index)
            return self.decision(True, reason, step.tier, step.rule_index)
        reason = step.reason or f"{state.level.value} denied by {policy.name}"
        return self.decision(False, reason, step.tier, step.rule_index)

    def allow_reason(self, index: int | None) -> str:
        return self.policy.allow_reason(index) if index is not None else "allowed by rule None"

    def verdict(self, verdict: AgentVerdict, index: int | None) -> Decision:
        """Apply a trust-agent verdict through the containment filter (§5, §7, T46, T62)."""
        client = self.client
        tier: Tier = "cache" if verdict.cached else "agent"
        kept: list[StateChange] = []
        dropped = 0
        blocks = False
        for change in verdict.staged:
            own = change.client_id is None or change.client_id == client.client_id
            if own and change.op == "block" and not client.is_admin:
                if not blocks:
                    kept.append(attrs.evolve(change, client_id=None, rule_index=None))
                blocks = True
            elif (
                own
                and change.op == "promote_to_contact"
                and verdict.allow
                and self.state.level is Level.STRANGER
                and client.agent_may_promote
                and self.facts.agent_promotion_allowed
                and not any(k.op == "promote_to_contact" for k in kept)
            ):
                kept.append(attrs.evolve(change, client_id=None, rule_index=None))
            else:
                dropped += 1
        if blocks:
            dropped += sum(1 for k in kept if k.op != "block")
            kept = [k for k in kept if k.op == "block"]
            self.actions = [a for a in self.actions if a.op == "block"] + kept
            reason = f"blocked by trust agent: {verdict.reason}" if verdict.allow else None
        else:
            self.actions.extend(kept)
            reason = None
        if reason is None:
            prefix = "cached trust agent decision" if verdict.cached else "trust agent"
            reason = f"{prefix}: {verdict.reason}"
        return self.decision(verdict.allow and not blocks, reason, tier, index, dropped=dropped)


def _word(level: Level) -> str:
    return "whitelisted" if level is Level.WHITELIST else level.value


def _prev(level: Level) -> str:
    return Level.CONTACT.value if level is Level.WHITELIST else Level.STRANGER.value
