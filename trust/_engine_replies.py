"""What the engine answers to ``/invite`` and ``/pay`` and to a denied message (TR §6)."""

from __future__ import annotations

from typing import Final

from trust._commands import Command, InviteCommand, PayCommand
from trust._model import ClientState, Decision, Level, RequestFacts
from trust._policy import Policy
from trust._stats import StatsRecorder

INVITE_OK_REPLY: Final = "Invite accepted. You are now a contact."
INVITE_BAD_REPLY: Final = "That invite code was not accepted."
INVITE_OFF_REPLY: Final = "Invite codes are not accepted here."
PAY_OK_REPLY: Final = "Payment verified. You are now a contact."
PAY_BAD_REPLY: Final = "That payment was not accepted."
PAY_OFF_REPLY: Final = "Payments are not accepted here."


class CommandReplies:
    """The replies half of the engine: the text a sender gets, counted in the stats."""

    policy: Policy
    _stats: StatsRecorder
    _accepts_invites: bool
    _accepts_payments: bool

    def _reply(
        self,
        command: Command | None,
        client: ClientState,
        decision: Decision,
        facts: RequestFacts,
    ) -> str | None:
        if client.is_blocked or client.anonymous or decision.reason == "blocked":
            return None  # blocked and anonymous senders get nothing (T53)
        if any(a.op == "block" for a in decision.actions):
            return None  # nor one this very decision blocks
        if isinstance(command, InviteCommand):
            return self._invite_reply(command, client, decision, facts)
        if isinstance(command, PayCommand):
            return self._pay_reply(command, client, decision, facts)
        if not decision.allow:
            return self.policy.reply_on_deny
        return None

    def _invite_reply(
        self, command: InviteCommand, client: ClientState, decision: Decision, facts: RequestFacts
    ) -> str | None:
        if not self._accepts_invites:
            return INVITE_OFF_REPLY
        if command.code is None:
            return "usage: /invite CODE"
        already = _already(client)
        if already is not None:
            return already
        promoted = any(a.op == "promote_to_contact" for a in decision.actions)
        if facts.invite is not None and facts.invite.ok and promoted:
            self._stats.invites_accepted += 1
            return INVITE_OK_REPLY
        self._stats.invites_rejected += 1
        return INVITE_BAD_REPLY

    def _pay_reply(
        self, command: PayCommand, client: ClientState, decision: Decision, facts: RequestFacts
    ) -> str | None:
        if not self._accepts_payments:
            return PAY_OFF_REPLY
        if command.usage is not None:
            return command.usage
        if client.level is not Level.STRANGER:
            word = "whitelisted" if client.level is Level.WHITELIST else "a contact"
            return f"No payment needed: you are already {word}."
        promoted = any(a.op == "promote_to_contact" for a in decision.actions)
        if facts.payment is not None and facts.payment.ok and promoted:
            self._stats.payments_verified += 1
            return PAY_OK_REPLY
        self._stats.payments_rejected += 1
        return PAY_BAD_REPLY


def _already(client: ClientState) -> str | None:
    if client.is_admin:
        return "You are already an admin."
    if client.level is Level.WHITELIST:
        return "You are already whitelisted."
    if client.level is Level.CONTACT:
        return "You are already a contact."
    return None
