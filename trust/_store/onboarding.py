"""Invites, invite attempts and payments: the onboarding rows of the store (TR §6)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from trust._records import AuditEntry, AuditTier, Invite, PreconditionFailed, TrustOpError
from trust._store.audit import insert_audit
from trust._store.schema import INVITE_COLUMNS
from trust._store.tx import ApplyContext, AttemptWindow, Tx, invite_from_row, one_row

POLICY_INVITE_PREFIX: Final = "policy:"
"""Invite ids of codes written in a (0.6.5) policy file: unlimited, nothing to consume."""


def insert_invite(tx: Tx, invite: Invite, tier: AuditTier) -> AuditEntry:
    """Store a new invite and its ``invite_create`` audit row (no client)."""
    tx.run(
        f"INSERT INTO trust_invites ({INVITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        invite.invite_id,
        invite.code_sha256,
        invite.created_by,
        invite.created_at,
        invite.expires_at,
        invite.max_uses,
        invite.uses,
        invite.revoked_at,
        invite.revoked_by,
        invite.note,
        invite.generated,
    )
    return insert_audit(
        tx,
        at=invite.created_at,
        client_id=None,
        action="invite_create",
        actor=invite.created_by,
        tier=tier,
        reason=invite.note,
        invite_id=invite.invite_id,
    )


def find_invite(tx: Tx, digest: bytes) -> Invite | None:
    """The invite whose code hashes to ``digest``."""
    row = one_row(tx, f"SELECT {INVITE_COLUMNS} FROM trust_invites WHERE code_sha256 = ?", digest)
    return invite_from_row(row) if row else None


def list_invites(tx: Tx) -> list[Invite]:
    """Every invite, oldest first."""
    rows = tx.rows(f"SELECT {INVITE_COLUMNS} FROM trust_invites ORDER BY created_at, invite_id")
    return [invite_from_row(r) for r in rows]


def revoke_invite(tx: Tx, invite_id: str, actor: str, tier: AuditTier, now_ms: int) -> AuditEntry:
    """Revoke an invite; ``not_found`` or ``not_applicable`` (already revoked) otherwise."""
    row = one_row(
        tx,
        f"SELECT {INVITE_COLUMNS} FROM trust_invites WHERE invite_id = ?{tx.dialect.lock_suffix}",
        invite_id,
    )
    if row is None:
        raise TrustOpError("not_found", f"no invite {invite_id}")
    if invite_from_row(row).revoked_at is not None:
        raise TrustOpError("not_applicable", f"invite {invite_id} is already revoked")
    tx.run(
        "UPDATE trust_invites SET revoked_at = ?, revoked_by = ? WHERE invite_id = ?",
        now_ms,
        actor,
        invite_id,
    )
    return insert_audit(
        tx,
        at=now_ms,
        client_id=None,
        action="invite_revoke",
        actor=actor,
        tier=tier,
        invite_id=invite_id,
    )


def consume_invite(tx: Tx, invite_id: str, client_id: str, audit_id: int, now_ms: int) -> None:
    """Use one use of a store invite for ``client_id``; a used-up one fails the decision."""
    if invite_id.startswith(POLICY_INVITE_PREFIX):
        return
    used = tx.run(
        "UPDATE trust_invites SET uses = uses + 1 WHERE invite_id = ? AND uses < max_uses"
        " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)",
        invite_id,
        now_ms,
    )
    if used != 1:
        raise PreconditionFailed(client_id, "verify_invite", "invite no longer usable")
    tx.run(
        "INSERT INTO trust_invite_uses (invite_id, client_id, at, audit_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (invite_id, client_id) DO UPDATE SET at = excluded.at,"
        " audit_id = excluded.audit_id",
        invite_id,
        client_id,
        now_ms,
        audit_id,
    )


def record_payment(
    tx: Tx, tx_id: str, client_id: str, context: ApplyContext, audit_id: int, now_ms: int
) -> None:
    """Record a verified payment; one already used fails the decision."""
    added = tx.run(
        "INSERT INTO trust_payments (tx_id, client_id, amount, currency, at, audit_id)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tx_id) DO NOTHING",
        tx_id,
        client_id,
        context.payment_amount or "",
        context.payment_currency,
        now_ms,
        audit_id,
    )
    if added != 1:
        raise PreconditionFailed(client_id, "verify_payment", "payment already used")


def _scope_lock_key(scope: str) -> int:
    """The advisory lock of one attempt scope: a signed 64-bit digest of its name."""
    digest = hashlib.sha256(b"trust_invite_attempts:" + scope.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def reserve_invite_attempt(
    tx: Tx, attempt_id: str, windows: Sequence[AttemptWindow], now_ms: int
) -> str | None:
    """Count one ``/invite`` attempt in every window, or in none: the scope of the first
    full window, or None when the attempt was counted everywhere.

    Each scope is locked before it is counted (PostgreSQL: a transaction advisory lock per
    scope, taken in one order; SQLite: the write transaction holds the database), so two
    instances racing for a window's last slot cannot both pass.
    """
    ordered = sorted(windows, key=lambda w: w.scope)
    if tx.dialect.xact_lock_sql is not None:
        for window in ordered:
            tx.rows(tx.dialect.xact_lock_sql, _scope_lock_key(window.scope))
    for window in ordered:
        row = one_row(
            tx,
            "SELECT COUNT(*) FROM trust_invite_attempts WHERE scope = ? AND at > ?",
            window.scope,
            now_ms - window.window_ms,
        )
        if row is not None and int(row[0]) >= window.limit:
            return window.scope
    for window in ordered:
        tx.run(
            "DELETE FROM trust_invite_attempts WHERE scope = ? AND at <= ?",
            window.scope,
            now_ms - window.window_ms,
        )
        tx.run(
            "INSERT INTO trust_invite_attempts (attempt_id, scope, at) VALUES (?, ?, ?)",
            attempt_id,
            window.scope,
            now_ms,
        )
    return None


def release_invite_attempt(tx: Tx, attempt_id: str) -> None:
    """Un-count an attempt that succeeded (a right code is not a guess to limit)."""
    tx.run("DELETE FROM trust_invite_attempts WHERE attempt_id = ?", attempt_id)


def count_invite_attempts(tx: Tx, scope: str, since_ms: int) -> int:
    """Attempts counted in ``scope`` after ``since_ms``."""
    row = one_row(
        tx, "SELECT COUNT(*) FROM trust_invite_attempts WHERE scope = ? AND at > ?", scope, since_ms
    )
    return int(row[0]) if row else 0


def payment_used(tx: Tx, tx_id: str) -> str | None:
    """The client a payment already onboarded, or None."""
    row = one_row(tx, "SELECT client_id FROM trust_payments WHERE tx_id = ?", tx_id)
    return str(row[0]) if row else None
