"""The audit log: appending a row and the reads the engine and the CLI make of it (TR §9)."""

from __future__ import annotations

from trust._records import AuditEntry, AuditTier, StoreError
from trust._store.schema import AUDIT_COLUMNS
from trust._store.tx import Tx, audit_from_row, one_row, opt_str


def insert_audit(
    tx: Tx,
    *,
    at: int,
    client_id: str | None,
    action: str,
    actor: str,
    tier: AuditTier,
    from_level: str | None = None,
    to_level: str | None = None,
    from_admin: bool | None = None,
    to_admin: bool | None = None,
    reason: str | None = None,
    policy: str | None = None,
    rule_index: int | None = None,
    invite_id: str | None = None,
    payment_tx: str | None = None,
    reverts: int | None = None,
) -> AuditEntry:
    """Append one audit row and return it with its id."""
    values = (
        at,
        client_id,
        action,
        from_level,
        to_level,
        from_admin,
        to_admin,
        actor,
        tier,
        reason,
        policy,
        rule_index,
        invite_id,
        payment_tx,
        reverts,
    )
    row = one_row(
        tx,
        f"INSERT INTO trust_audit ({AUDIT_COLUMNS.removeprefix('id, ')})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) RETURNING id",
        *values,
    )
    if row is None:  # pragma: no cover
        raise StoreError("audit insert returned no id")
    return AuditEntry(int(row[0]), *values)


def read_audit(tx: Tx, audit_id: int, *, lock: bool = False) -> AuditEntry | None:
    """One audit row by id."""
    suffix = tx.dialect.lock_suffix if lock else ""
    row = one_row(tx, f"SELECT {AUDIT_COLUMNS} FROM trust_audit WHERE id = ?{suffix}", audit_id)
    return audit_from_row(row) if row else None


def changes_since(tx: Tx, audit_id: int) -> list[tuple[int, str | None]]:
    """``(id, client_id)`` of audit rows after ``audit_id``, oldest first (T20)."""
    rows = tx.rows("SELECT id, client_id FROM trust_audit WHERE id > ? ORDER BY id", audit_id)
    return [(int(r[0]), opt_str(r[1])) for r in rows]


def count_audit(tx: Tx, action: str, tier: AuditTier, since_ms: int) -> int:
    """How many ``action`` rows of ``tier`` were written since ``since_ms``."""
    row = one_row(
        tx,
        "SELECT COUNT(*) FROM trust_audit WHERE action = ? AND tier = ? AND at >= ?",
        action,
        tier,
        since_ms,
    )
    return int(row[0]) if row else 0


def last_audit_id(tx: Tx) -> int:
    """The newest audit id, 0 for an empty log."""
    row = one_row(tx, "SELECT MAX(id) FROM trust_audit")
    return int(row[0]) if row and row[0] is not None else 0
