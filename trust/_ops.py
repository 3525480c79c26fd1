"""The fixed trust operations of TR §8: one implementation behind the API, the CLI and chat.

Authority (T65): everything but verify needs an admin or the local operator. The tier is
a property of the entry point, never of the actor's spelling: the CLI, the import and the
bootstrap act as ``operator`` and are never bound by a policy's ``disable`` list (the
operator owns the policy file); chat and API callers act as ``admin`` (the default), the
role re-read in the operation's transaction and bound by ``disable`` (T67), even when the
admin's platform happens to be called ``local`` or ``import``. Operations answer one clear
line; refusals are :class:`TrustOpError`.
"""

from __future__ import annotations

from typing import Final

from trust._commands import TrustCommand
from trust._identity import DEFAULT_CANONICALIZER, Canonicalizer, InvalidClientId
from trust._invites import CreatedInvite, create_invite, revoke_invite
from trust._model import ANONYMOUS, Level
from trust._planning import AtomicOp, describe_state
from trust._policy import Policy
from trust._records import AuditEntry, AuditTier, ClientRecord, Invite, OpResult, TrustOpError
from trust._store.base import ClientStore

ADMIN: Final[AuditTier] = "admin"
"""The tier of everything sent over chat: an admin, whatever its platform is called."""
MAX_CHAT_REPLY: Final = 1500
DM_ONLY_REPLY: Final = "Use a direct message for /trust commands."
NOT_AUTHORIZED_REPLY: Final = "not authorized: /trust needs the admin role"
HELP: Final = (
    "/trust promote ID contact|whitelist · /trust demote ID contact|stranger · "
    "/trust block ID REASON · /trust unblock ID · /trust admin set ID · "
    "/trust admin remove ID · /trust level ID · /trust audit [ID] · /trust help"
)


def format_audit(entry: AuditEntry) -> str:
    """One audit row as one line."""
    who = entry.client_id or entry.invite_id or "-"
    change = ""
    if entry.from_level is not None or entry.to_level is not None:
        change = (
            f" {describe_state(entry.from_level, entry.from_admin)}"
            f" → {describe_state(entry.to_level, entry.to_admin)}"
        )
    extra = f" ({entry.reason})" if entry.reason else ""
    revert = f" [reverted by #{entry.reverted_by}]" if entry.reverted_by else ""
    return f"#{entry.id} {entry.action} {who}{change} by {entry.actor}/{entry.tier}{extra}{revert}"


def format_client(rec: ClientRecord) -> str:
    """One client as one line."""
    text = f"{rec.client_id}: {rec.effective_level}"
    if rec.blocked:
        text += f" (level {rec.level.value}; reason: {rec.blocked_reason})"
    if rec.is_admin:
        text += f", admin (by {rec.admin_by})"
    return text


class TrustOps:
    """The operations over one store, under one policy (for ``disable``)."""

    def __init__(
        self,
        store: ClientStore,
        policy: Policy | None = None,
        canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER,
    ) -> None:
        self.store = store
        self.policy = policy
        self.canonicalizer = canonicalizer

    # --- shared checks ---------------------------------------------------------------------

    def client_id(self, typed: str) -> str:
        """A typed id in canonical form, or ``invalid_client_id`` / ``anonymous`` (T6, T9)."""
        if typed.strip().lower() == ANONYMOUS:
            raise TrustOpError("anonymous", "anonymous senders cannot be changed")
        try:
            return self.canonicalizer.parse(typed)
        except InvalidClientId as exc:
            raise TrustOpError("invalid_client_id", str(exc)) from None

    def check_enabled(self, op: str, tier: AuditTier) -> None:
        """Refuse ``disabled`` when the policy disables ``op`` for admins (T67)."""
        if tier == "operator" or self.policy is None:
            return
        if op in self.policy.disable:
            raise TrustOpError(
                "disabled", f"disabled: '{op}' is disabled by policy '{self.policy.name}'"
            )

    async def _check_admin(self, op: str, actor: str, tier: AuditTier, target: str | None) -> None:
        """Read-only operations re-check the admin role here (writes do it in their tx)."""
        if tier == "operator":
            return
        if not (await self.store.get(actor)).is_admin:
            await self.store.record_refusal(
                op, target, actor=actor, tier=tier, reason=f"{op} needs an admin"
            )
            raise TrustOpError("not_authorized", f"{actor} is not an admin; {op} needs one")

    async def _atomic(
        self,
        op_name: str,
        op: AtomicOp,
        typed: str,
        actor: str,
        reason: str | None,
        tier: AuditTier,
    ) -> OpResult:
        self.check_enabled(op_name, tier)
        return await self.store.run_op(
            op, self.client_id(typed), actor=actor, tier=tier, reason=reason
        )

    # --- the operations ----------------------------------------------------------------------

    async def promote(
        self,
        client_id: str,
        to: str,
        actor: str,
        reason: str | None = None,
        *,
        tier: AuditTier = "admin",
    ) -> OpResult:
        """``promote ID --to contact|whitelist``: one step, never skipping a level."""
        target = _level(to)
        if target is Level.CONTACT:
            return await self._atomic(
                "promote", "promote_to_contact", client_id, actor, reason, tier
            )
        if target is Level.WHITELIST:
            return await self._atomic(
                "promote", "promote_to_whitelist", client_id, actor, reason, tier
            )
        raise TrustOpError("invalid_level", "promote --to takes contact or whitelist")

    async def demote(
        self,
        client_id: str,
        to: str,
        actor: str,
        reason: str | None = None,
        *,
        tier: AuditTier = "admin",
    ) -> OpResult:
        """``demote ID --to contact|stranger``: one step."""
        target = _level(to)
        if target is Level.CONTACT:
            return await self._atomic("demote", "demote_to_contact", client_id, actor, reason, tier)
        if target is Level.STRANGER:
            return await self._atomic(
                "demote", "demote_to_stranger", client_id, actor, reason, tier
            )
        raise TrustOpError("invalid_level", "demote --to takes contact or stranger")

    async def block(
        self, client_id: str, reason: str, actor: str, *, tier: AuditTier = "admin"
    ) -> OpResult:
        """``block ID --reason R``."""
        return await self._atomic("block", "block", client_id, actor, reason, tier)

    async def unblock(
        self, client_id: str, actor: str, reason: str | None = None, *, tier: AuditTier = "admin"
    ) -> OpResult:
        """``unblock ID``."""
        return await self._atomic("unblock", "unblock", client_id, actor, reason, tier)

    async def set_admin(
        self, client_id: str, by_admin: str, *, tier: AuditTier = "admin"
    ) -> OpResult:
        """``admin set ID``; records ``by_admin`` (T69)."""
        return await self._atomic("admin/set", "set_admin", client_id, by_admin, None, tier)

    async def remove_admin(
        self, client_id: str, by_admin: str, *, tier: AuditTier = "admin"
    ) -> OpResult:
        """``admin remove ID``; never the last admin except by the local operator."""
        return await self._atomic("admin/remove", "remove_admin", client_id, by_admin, None, tier)

    async def level(self, client_id: str, actor: str, *, tier: AuditTier = "admin") -> OpResult:
        """``show ID`` / ``/trust level ID``."""
        self.check_enabled("level", tier)
        cid = self.client_id(client_id)
        await self._check_admin("level", actor, tier, cid)
        rec = await self.store.get(cid)
        return OpResult(format_client(rec), None, rec)

    async def audit(
        self, client_id: str | None, actor: str, limit: int = 20, *, tier: AuditTier = "admin"
    ) -> tuple[OpResult, list[AuditEntry]]:
        """``audit [--client ID] [--limit N]``: newest first."""
        self.check_enabled("audit", tier)
        cid = self.client_id(client_id) if client_id else None
        await self._check_admin("audit", actor, tier, cid)
        if not 1 <= limit <= 10_000:
            raise TrustOpError("invalid_limit", "limit must be 1-10000")
        rows = await self.store.audit(cid, limit)
        text = "\n".join(format_audit(r) for r in rows) or "no audit rows"
        return OpResult(text, None, None), rows

    async def revert(self, audit_id: int, actor: str, *, tier: AuditTier = "admin") -> OpResult:
        """``revert AUDIT_ID`` (TR §3)."""
        return await self.store.revert(audit_id, actor=actor, tier=tier)

    async def list_clients(
        self, *, level: str | None = None, admins: bool = False, blocked: bool = False
    ) -> list[ClientRecord]:
        """``list [--level L] [--admins] [--blocked]`` (operator only)."""
        return await self.store.list_clients(
            level=_level(level) if level else None, admins=admins, blocked=blocked
        )

    async def create_invite(
        self,
        actor: str,
        *,
        tier: AuditTier = "admin",
        max_uses: int = 1,
        expires_in: str | None = "7d",
        note: str | None = None,
        code: str | None = None,
    ) -> CreatedInvite:
        """``invite create``: the code is in the result only."""
        return await create_invite(
            self.store,
            by=actor,
            tier=tier,
            max_uses=max_uses,
            expires_in=expires_in,
            note=note,
            code=code,
        )

    async def list_invites(self) -> list[Invite]:
        """``invite list``: ids, uses, expiry; never a code."""
        return await self.store.list_invites()

    async def revoke_invite(
        self, invite_id: str, actor: str, *, tier: AuditTier = "admin"
    ) -> OpResult:
        """``invite revoke ID``."""
        text = await revoke_invite(self.store, invite_id, by=actor, tier=tier)
        return OpResult(text, None, None)

    # --- chat --------------------------------------------------------------------------------

    async def chat(self, command: TrustCommand, sender: str) -> str:
        """Run a ``/trust`` command from an admin in a direct message; the reply text.

        The caller has checked the sender is an admin and the chat is a DM (TR §8).
        """
        try:
            reply = await self._chat(command, sender)
        except TrustOpError as exc:
            reply = exc.message if exc.code == "disabled" else f"error: {exc.message}"
        return reply if len(reply) <= MAX_CHAT_REPLY else reply[: MAX_CHAT_REPLY - 1] + "…"

    async def _chat(self, command: TrustCommand, sender: str) -> str:
        if command.usage is not None:
            return command.usage
        op, typed = command.op, command.client or ""
        if op == "help":
            return HELP
        if op == "promote":
            return (await self.promote(typed, command.level or "", sender, tier=ADMIN)).message
        if op == "demote":
            return (await self.demote(typed, command.level or "", sender, tier=ADMIN)).message
        if op == "block":
            return (await self.block(typed, command.reason or "", sender, tier=ADMIN)).message
        if op == "unblock":
            return (await self.unblock(typed, sender, tier=ADMIN)).message
        if op == "admin/set":
            return (await self.set_admin(typed, sender, tier=ADMIN)).message
        if op == "admin/remove":
            return (await self.remove_admin(typed, sender, tier=ADMIN)).message
        if op == "level":
            return (await self.level(typed, sender, tier=ADMIN)).message
        if op == "audit":
            result, _ = await self.audit(command.client, sender, limit=10, tier=ADMIN)
            return result.message
        return HELP


def _level(text: str) -> Level:
    try:
        return Level(text.strip().lower())
    except ValueError:
        raise TrustOpError(
            "invalid_level", f"unknown level {text!r}: stranger, contact or whitelist"
        ) from None
