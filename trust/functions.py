"""The atomic functions of TR §2: what each may do to one client row, and their async API.

The planning half (:func:`plan`, :func:`plan_revert`) is pure: given the row re-read under
the transaction's lock, it returns the new row or raises :class:`TrustOpError`. The store
runs it inside one transaction (lock, re-read, plan, write row and one audit row), so the
precondition is always checked on the row, never on a cache. The async functions at the
bottom are the public API over any :class:`~trust.store.base.ClientStore`.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import attrs
import trio

from trust.identity import DEFAULT_CANONICALIZER, Canonicalizer, InvalidClientId
from trust.model import ANONYMOUS, Level
from trust.records import (
    MAX_REASON_CHARS,
    AuditEntry,
    AuditTier,
    ClientRecord,
    ImportEntry,
    ImportReport,
    OpResult,
    TrustOpError,
    parse_state_text,
    state_text,
)

if TYPE_CHECKING:
    from trust.store.base import ClientStore

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
ATOMIC_OPS: Final[tuple[AtomicOp, ...]] = (
    "promote_to_contact",
    "promote_to_whitelist",
    "demote_to_contact",
    "demote_to_stranger",
    "block",
    "unblock",
    "set_admin",
    "remove_admin",
)
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


# --- the public async API -----------------------------------------------------------------


async def promote_to_contact(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Stranger → contact (TR §2)."""
    return await store.run_op(
        "promote_to_contact", client_id, actor=actor, tier=tier, reason=reason
    )


async def promote_to_whitelist(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Contact → whitelist (TR §2)."""
    return await store.run_op(
        "promote_to_whitelist", client_id, actor=actor, tier=tier, reason=reason
    )


async def demote_to_contact(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Whitelist → contact (TR §2)."""
    return await store.run_op("demote_to_contact", client_id, actor=actor, tier=tier, reason=reason)


async def demote_to_stranger(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Contact → stranger; by a human also clears ``agent_may_promote`` (TR §2)."""
    return await store.run_op(
        "demote_to_stranger", client_id, actor=actor, tier=tier, reason=reason
    )


async def block(
    store: ClientStore, client_id: str, reason: str, *, actor: str, tier: AuditTier
) -> OpResult:
    """Flag the client blocked, keeping its level (TR §2)."""
    return await store.run_op("block", client_id, actor=actor, tier=tier, reason=reason)


async def unblock(
    store: ClientStore, client_id: str, *, actor: str, tier: AuditTier, reason: str | None = None
) -> OpResult:
    """Clear the block; the level shows again (TR §2)."""
    return await store.run_op("unblock", client_id, actor=actor, tier=tier, reason=reason)


async def set_admin(
    store: ClientStore, client_id: str, *, by_admin: str, tier: AuditTier
) -> OpResult:
    """Grant the admin role; ``by_admin`` must be an admin or the local operator."""
    return await store.run_op("set_admin", client_id, actor=by_admin, tier=tier, reason=None)


async def remove_admin(
    store: ClientStore, client_id: str, *, by_admin: str, tier: AuditTier
) -> OpResult:
    """Remove the admin role; never the last admin unless by the local operator."""
    return await store.run_op("remove_admin", client_id, actor=by_admin, tier=tier, reason=None)


# --- import of connectonion 0.6.5 list files ----------------------------------------------

CO_LIST_FILES: Final = ("whitelist.txt", "contacts.txt", "blocklist.txt", "admins.txt")


@attrs.frozen
class CoImportPlan:
    """What a ``~/.co`` directory holds: the wanted state per client, and skipped lines."""

    entries: tuple[ImportEntry, ...]
    skipped: tuple[str, ...]


def read_co_lists(
    directory: str | os.PathLike[str],
    *,
    platform: str = "co",
    canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER,
) -> CoImportPlan:
    """Read the four 0.6.5 list files (blocking I/O; run it in a thread).

    A missing file is empty; an unreadable one aborts the import with ``unreadable``
    (T26). ``*`` lines and invalid ids are skipped and listed, never imported (T27).
    Precedence as in 0.6.5: blocked from the blocklist; level whitelist, else contact,
    else stranger; admin from ``admins.txt``.
    """
    base = Path(directory)
    lists: dict[str, set[str]] = {}
    skipped: list[str] = []
    for name in CO_LIST_FILES:
        path = base / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise TrustOpError(
                "unreadable", f"{path}: {exc.__class__.__name__}; nothing imported"
            ) from None
        ids: set[str] = set()
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "*" in line:
                skipped.append(f"{name}:{number}: {line!r}: patterns are not imported")
                continue
            try:
                ids.add(canonicalizer.client_id(platform, line))
            except InvalidClientId as exc:
                skipped.append(f"{name}:{number}: {exc}")
        lists[name] = ids
    entries = []
    for cid in sorted(set().union(*lists.values())):
        level = (
            Level.WHITELIST
            if cid in lists["whitelist.txt"]
            else Level.CONTACT
            if cid in lists["contacts.txt"]
            else Level.STRANGER
        )
        entries.append(
            ImportEntry(
                client_id=cid,
                level=level,
                blocked=cid in lists["blocklist.txt"],
                is_admin=cid in lists["admins.txt"],
            )
        )
    return CoImportPlan(tuple(entries), tuple(skipped))


async def import_co(
    store: ClientStore,
    directory: str | os.PathLike[str],
    *,
    platform: str = "co",
    dry_run: bool = False,
    overwrite: bool = False,
    canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER,
) -> tuple[ImportReport, tuple[str, ...]]:
    """Import a ``~/.co`` directory in one transaction, actor ``import:<dir>``."""
    plan_ = await trio.to_thread.run_sync(
        functools.partial(read_co_lists, directory, platform=platform, canonicalizer=canonicalizer)
    )
    report = await store.import_states(
        plan_.entries, actor=f"import:{directory}", overwrite=overwrite, dry_run=dry_run
    )
    return report, plan_.skipped


def describe_state(level: str | None, admin: bool | None) -> str:
    """Human text of an audit state pair, e.g. ``contact+blocked, admin``."""
    text = level or "-"
    return f"{text}, admin" if admin else text


__all__ = [
    "ATOMIC_OPS",
    "AtomicOp",
    "Authority",
    "Planned",
    "as_atomic_op",
    "block",
    "check_authority",
    "clean_reason",
    "demote_to_contact",
    "demote_to_stranger",
    "describe_state",
    "import_co",
    "plan",
    "plan_revert",
    "promote_to_contact",
    "promote_to_whitelist",
    "read_co_lists",
    "remove_admin",
    "revert_op",
    "set_admin",
    "state_text",
    "unblock",
]
