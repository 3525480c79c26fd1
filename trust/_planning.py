"""The planning half of the atomic functions of TR §2: what each may do to one client row.

:func:`plan` and :func:`plan_revert` are pure: given the row re-read under the
transaction's lock, they return the new row or raise :class:`TrustOpError`. The store runs
them inside one transaction (lock, re-read, plan, write row and one audit row), so the
precondition is always checked on the row, never on a cache. The async API over a store is
:mod:`trust._functions`.
"""

from __future__ import annotations

import unicodedata
from typing import Final, Literal, get_args

import attrs

from trust._model import ANONYMOUS, Level
from trust._records import (
    MAX_REASON_CHARS,
    AuditEntry,
    AuditTier,
    ClientRecord,
    TrustOpError,
    parse_state_text,
)

AtomicOp = Literal[
    "promote_to_contact",
    "promote_to_whitelist",
    "demote_to_contact",
    "demote_to_stranger",
    "block",
    "unblock",
    "set_admin",
    "remove_admin",
]
#: The atomic functions' names in TR §2 order, read off :data:`AtomicOp`.
ATOMIC_OPS: Final[tuple[AtomicOp, ...]] = get_args(AtomicOp)
# Never callable by a rule or the trust agent (T16).
_HUMAN_ONLY: Final = frozenset({"unblock", "set_admin", "remove_admin"})
_HUMAN_TIERS: Final = frozenset({"admin", "operator"})

_LEVEL_STEPS: Final[dict[str, tuple[Level, Level]]] = {
    "promote_to_contact": (Level.STRANGER, Level.CONTACT),
    "promote_to_whitelist": (Level.CONTACT, Level.WHITELIST),
    "demote_to_contact": (Level.WHITELIST, Level.CONTACT),
    "demote_to_stranger": (Level.CONTACT, Level.STRANGER),
}
_INVERSE: Final[dict[str, AtomicOp]] = {
    "promote_to_contact": "demote_to_stranger",
    "demote_to_stranger": "promote_to_contact",
    "promote_to_whitelist": "demote_to_contact",
    "demote_to_contact": "promote_to_whitelist",
    "block": "unblock",
    "unblock": "block",
    "set_admin": "remove_admin",
    "remove_admin": "set_admin",
}


def as_atomic_op(text: str) -> AtomicOp:
    """``text`` as an :data:`AtomicOp`, or ValueError naming it."""
    for op in ATOMIC_OPS:
        if op == text:
            return op
    raise ValueError(f"unknown operation {text!r}")


def clean_reason(reason: str | None) -> str | None:
    """A reason fit for the audit log: control characters removed, at most 500 characters."""
    if reason is None:
        return None
    text = "".join(ch for ch in reason if unicodedata.category(ch) != "Cc").strip()
    return text[:MAX_REASON_CHARS] or None


@attrs.frozen
class Authority:
    """Who is acting, as re-read in the transaction: ``actor_is_admin`` for tier ``admin``."""

    actor: str
    tier: AuditTier
    actor_is_admin: bool = False

    @property
    def is_human(self) -> bool:
        """An admin or the local operator (not a rule or the trust agent)."""
        return self.tier in _HUMAN_TIERS


@attrs.frozen
class Planned:
    """A checked change: the row to write and the audit fields describing it."""

    op: str
    before: ClientRecord
    after: ClientRecord
    reason: str | None

    @property
    def from_state(self) -> str:
        """Audit ``from_level``."""
        return self.before.state

    @property
    def to_state(self) -> str:
        """Audit ``to_level``."""
        return self.after.state

    def message(self, audit_id: int | None) -> str:
        """The one-line answer an operator or admin sees (TR §8 Messages)."""
        cid = self.after.client_id
        suffix = f" (audit #{audit_id})" if audit_id is not None else ""
        if self.op.startswith(("promote", "demote")):
            verb = "promoted" if self.op.startswith("promote") else "demoted"
            text = f"{cid} {verb}: {self.before.level.value} → {self.after.level.value}"
        elif self.op == "block":
            text = f"{cid} blocked: {self.reason}"
        elif self.op == "unblock":
            text = f"{cid} unblocked: {self.after.level.value} again"
        elif self.op == "set_admin":
            text = f"{cid} is now an admin (by {self.after.admin_by})"
        elif self.op == "remove_admin":
            text = f"{cid} is no longer an admin"
        else:
            text = f"{cid} {self.op}: {self.from_state} → {self.to_state}"
        return text + suffix


def check_authority(op: str, client_id: str, auth: Authority) -> None:
    """Refuse ``not_authorized`` when ``auth`` may not run ``op`` (T16, T65)."""
    if auth.tier in ("rule", "agent") and op in _HUMAN_ONLY:
        raise TrustOpError("not_authorized", f"{op} is never done by a {auth.tier}")
    if auth.tier == "admin" and not auth.actor_is_admin:
        raise TrustOpError("not_authorized", f"{auth.actor} is not an admin; {op} needs one")
    if client_id == ANONYMOUS:
        raise TrustOpError("anonymous", "anonymous senders cannot be changed")


def plan(
    op: AtomicOp,
    current: ClientRecord,
    auth: Authority,
    *,
    reason: str | None,
    now_ms: int,
    admin_count: int = 0,
) -> Planned:
    """Check ``op``'s precondition on the re-read row; return the change or refuse (T14, T15).

    ``admin_count`` is the number of admins, read under the same lock (for ``last_admin``).
    """
    check_authority(op, current.client_id, auth)
    cid = current.client_id
    cleaned = clean_reason(reason)
    if op in _LEVEL_STEPS:
        source, target = _LEVEL_STEPS[op]
        if current.blocked:
            raise TrustOpError("blocked", f"{cid} is blocked; unblock first")
        if current.level is not source:
            raise TrustOpError("not_applicable", _level_refusal(op, current.level, cid))
        after = attrs.evolve(current, level=target, updated_at=now_ms)
        if auth.is_human and op == "demote_to_stranger":
            after = attrs.evolve(after, agent_may_promote=False)
        elif auth.is_human and op == "promote_to_contact":
            after = attrs.evolve(after, agent_may_promote=True)
        return Planned(op, current, after, cleaned)
    if op == "block":
        raw = (reason or "").strip()
        if auth.is_human and (not raw or len(raw) > MAX_REASON_CHARS or cleaned is None):
            raise TrustOpError("invalid_reason", "a block needs a reason of 1-500 characters")
        # A rule's or the agent's block is never lost to its wording: cut, or a default.
        cleaned = cleaned or f"blocked by {auth.actor}"
        if current.blocked:
            raise TrustOpError("not_applicable", f"{cid} is already blocked")
        if current.is_admin:
            raise TrustOpError("is_admin", f"{cid} is an admin; remove admin first")
        after = attrs.evolve(
            current,
            blocked=True,
            blocked_reason=cleaned,
            blocked_by=auth.actor,
            blocked_at=now_ms,
            updated_at=now_ms,
        )
        return Planned(op, current, after, cleaned)
    if op == "unblock":
        if not current.blocked:
            raise TrustOpError("not_applicable", f"{cid} is not blocked")
        after = attrs.evolve(
            current,
            blocked=False,
            blocked_reason=None,
            blocked_by=None,
            blocked_at=None,
            updated_at=now_ms,
        )
        return Planned(op, current, after, cleaned)
    if op == "set_admin":
        if current.is_admin:
            raise TrustOpError("not_applicable", f"{cid} is already an admin")
        if current.blocked:
            raise TrustOpError("blocked", f"{cid} is blocked; unblock first")
        after = attrs.evolve(
            current, is_admin=True, admin_by=auth.actor, admin_at=now_ms, updated_at=now_ms
        )
        return Planned(op, current, after, cleaned)
    if op == "remove_admin":
        if not current.is_admin:
            raise TrustOpError("not_applicable", f"{cid} is not an admin")
        if admin_count <= 1 and auth.tier != "operator":
            raise TrustOpError(
                "last_admin", f"{cid} is the last admin; only the local operator can remove it"
            )
        after = attrs.evolve(
            current, is_admin=False, admin_by=auth.actor, admin_at=now_ms, updated_at=now_ms
        )
        return Planned(op, current, after, cleaned)
    raise TrustOpError("not_applicable", f"unknown operation {op!r}")


def _level_refusal(op: str, level: Level, cid: str) -> str:
    if op == "promote_to_whitelist" and level is Level.STRANGER:
        return f"{cid} is a stranger; must be a contact first"
    if op == "demote_to_stranger" and level is Level.WHITELIST:
        return f"{cid} is whitelisted; demote to contact first"
    return f"{cid} is {_article(level)}; {op.replace('_', ' ')} does not apply"


def _article(level: Level) -> str:
    return {"stranger": "a stranger", "contact": "a contact", "whitelist": "whitelisted"}[
        level.value
    ]


def revert_op(entry: AuditEntry) -> str:
    """The operation that undoes ``entry``, or ``TrustOpError`` when it cannot be reverted."""
    if entry.action.startswith("refused:"):
        raise TrustOpError("not_applicable", f"audit #{entry.id} is a refusal; nothing to revert")
    if entry.reverted_by is not None:
        raise TrustOpError(
            "not_applicable", f"audit #{entry.id} was already reverted by #{entry.reverted_by}"
        )
    if entry.client_id is None:
        raise TrustOpError("not_applicable", f"audit #{entry.id} ({entry.action}) has no client")
    if entry.action == "import" or entry.action in _INVERSE:
        return "import" if entry.action == "import" else _INVERSE[entry.action]
    raise TrustOpError("not_applicable", f"audit #{entry.id} ({entry.action}) cannot be reverted")


def plan_revert(
    entry: AuditEntry,
    current: ClientRecord,
    auth: Authority,
    *,
    now_ms: int,
    admin_count: int,
    block_reason: str | None,
) -> Planned:
    """The inverse of ``entry`` if ``current`` still equals its to-state, else ``conflict``.

    ``block_reason`` is the reason of the client's latest block (for reverting an unblock).
    Reverting an agent promotion also clears ``agent_may_promote`` (T25).
    """
    op = revert_op(entry)
    state_now = (current.state, current.is_admin)
    if entry.to_level is not None and (entry.to_level, bool(entry.to_admin)) != state_now:
        raise TrustOpError(
            "conflict",
            f"{current.client_id} changed since audit #{entry.id} "
            f"(now {current.state}{', admin' if current.is_admin else ''})",
        )
    reason = f"revert of audit #{entry.id}"
    if op == "import":
        check_authority(op, current.client_id, auth)
        if auth.tier != "operator" and not auth.actor_is_admin:
            raise TrustOpError("not_authorized", "reverting an import needs an admin")
        level, blocked = parse_state_text(entry.from_level or Level.STRANGER.value)
        after = attrs.evolve(
            current,
            level=level,
            blocked=blocked,
            blocked_reason=current.blocked_reason if blocked else None,
            is_admin=bool(entry.from_admin),
            updated_at=now_ms,
        )
        return Planned("revert_import", current, after, reason)
    atomic = as_atomic_op(op)
    planned = plan(
        atomic,
        current,
        auth,
        reason=(block_reason or reason) if atomic == "block" else reason,
        now_ms=now_ms,
        admin_count=admin_count,
    )
    if entry.tier == "agent" and entry.action == "promote_to_contact":
        planned = attrs.evolve(planned, after=attrs.evolve(planned.after, agent_may_promote=False))
    return planned


def describe_state(level: str | None, admin: bool | None) -> str:
    """Human text of an audit state pair, e.g. ``contact+blocked, admin``."""
    text = level or "-"
    return f"{text}, admin" if admin else text
