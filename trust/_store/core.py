"""The store's writes to client rows, written once for both databases: schema migration,
the atomic functions, a decision's changes, reverts, bootstrap and import (TR §2, §3).

Everything here runs in one transaction (:class:`~trust._store.tx.Tx`) in a worker thread;
:class:`trust._store.base.SqlClientStore` moves each call to a thread. Reads and the
bookkeeping tables are in :mod:`trust._store.queries`, invites and payments in
:mod:`trust._store.onboarding`, the audit log in :mod:`trust._store.audit`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from trust._model import StateChange
from trust._planning import AtomicOp, Authority, Planned, plan, plan_revert
from trust._records import (
    AuditEntry,
    AuditTier,
    ClientRecord,
    ImportEntry,
    ImportReport,
    OpResult,
    PreconditionFailed,
    StoreError,
    TrustOpError,
    state_text,
)
from trust._store.audit import count_audit, insert_audit, read_audit
from trust._store.onboarding import consume_invite, record_payment
from trust._store.schema import (
    AGENT_PROMOTION_LOCK_KEY,
    CLIENT_COLUMNS,
    META_DDL,
    MIGRATIONS,
    SCHEMA_VERSION,
)
from trust._store.tx import HOUR_MS, ApplyContext, Tx, client_from_row, one_row, opt_str


def migrate(tx: Tx) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; the caller holds the migration lock."""
    tx.run(tx.dialect.render(META_DDL))
    row = one_row(tx, "SELECT value FROM trust_meta WHERE key = 'schema_version'")
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"trust schema version {version} is newer than this release ({SCHEMA_VERSION})"
        )
    for step in MIGRATIONS[version:]:
        for ddl in step:
            tx.run(tx.dialect.render(ddl))
    if version != SCHEMA_VERSION:
        if row is None:
            tx.run(
                "INSERT INTO trust_meta (key, value) VALUES ('schema_version', ?)",
                str(SCHEMA_VERSION),
            )
        else:
            tx.run(
                "UPDATE trust_meta SET value = ? WHERE key = 'schema_version'",
                str(SCHEMA_VERSION),
            )
    return SCHEMA_VERSION


def read_client(tx: Tx, client_id: str, *, lock: bool = False) -> ClientRecord | None:
    """The stored row of ``client_id``, or None."""
    suffix = tx.dialect.lock_suffix if lock else ""
    row = one_row(
        tx, f"SELECT {CLIENT_COLUMNS} FROM trust_clients WHERE client_id = ?{suffix}", client_id
    )
    return client_from_row(row) if row else None


def resolve(tx: Tx, client_id: str) -> str:
    """The primary id ``client_id`` is an alias of, or ``client_id`` itself."""
    row = one_row(tx, "SELECT client_id FROM trust_aliases WHERE alias_id = ?", client_id)
    return str(row[0]) if row else client_id


def lock_client(tx: Tx, client_id: str, now_ms: int) -> ClientRecord:
    """Lock ``client_id``'s row (creating a stranger row so there is one to lock) and re-read.

    The created row disappears with the transaction when nothing is written.
    """
    inserted = tx.run(
        f"INSERT INTO trust_clients ({CLIENT_COLUMNS}) VALUES (?, 'stranger', ?, NULL, NULL,"
        " NULL, ?, NULL, NULL, ?, ?, ?) ON CONFLICT (client_id) DO NOTHING",
        client_id,
        False,
        False,
        True,
        now_ms,
        now_ms,
    )
    record = read_client(tx, client_id, lock=True)
    if record is None:  # pragma: no cover - the insert above guarantees a row
        raise StoreError(f"row for {client_id} vanished inside its transaction")
    return attrs.evolve(record, stored=False) if inserted else record


def write_client(tx: Tx, rec: ClientRecord) -> None:
    """Write every column of ``rec`` (its row exists: see :func:`lock_client`)."""
    tx.run(
        "UPDATE trust_clients SET level = ?, blocked = ?, blocked_reason = ?, blocked_by = ?,"
        " blocked_at = ?, is_admin = ?, admin_by = ?, admin_at = ?, agent_may_promote = ?,"
        " updated_at = ? WHERE client_id = ?",
        rec.level.value,
        rec.blocked,
        rec.blocked_reason,
        rec.blocked_by,
        rec.blocked_at,
        rec.is_admin,
        rec.admin_by,
        rec.admin_at,
        rec.agent_may_promote,
        rec.updated_at,
        rec.client_id,
    )
    # Any state change invalidates the client's cached agent verdicts (T61).
    tx.run("DELETE FROM trust_decision_cache WHERE client_id = ?", rec.client_id)


def audit_planned(
    tx: Tx,
    planned: Planned,
    auth: Authority,
    now_ms: int,
    *,
    action: str | None = None,
    policy: str | None = None,
    rule_index: int | None = None,
    invite_id: str | None = None,
    payment_tx: str | None = None,
    reverts: int | None = None,
) -> AuditEntry:
    """Write ``planned``'s row and its one audit row."""
    write_client(tx, planned.after)
    return insert_audit(
        tx,
        at=now_ms,
        client_id=planned.after.client_id,
        action=action or planned.op,
        actor=auth.actor,
        tier=auth.tier,
        from_level=planned.from_state,
        to_level=planned.to_state,
        from_admin=planned.before.is_admin,
        to_admin=planned.after.is_admin,
        reason=planned.reason,
        policy=policy,
        rule_index=rule_index,
        invite_id=invite_id,
        payment_tx=payment_tx,
        reverts=reverts,
    )


def authority(tx: Tx, actor: str, tier: AuditTier) -> Authority:
    """``actor``'s authority, its admin flag re-read in this transaction."""
    is_admin = False
    if tier == "admin":
        row = read_client(tx, resolve(tx, actor))
        is_admin = row is not None and row.is_admin
    return Authority(actor=actor, tier=tier, actor_is_admin=is_admin)


def admin_count(tx: Tx) -> int:
    """Number of admins, their rows locked so two removals cannot both pass."""
    return len(
        tx.rows(f"SELECT client_id FROM trust_clients WHERE is_admin{tx.dialect.lock_suffix}")
    )


def run_op(
    tx: Tx,
    op: AtomicOp,
    client_id: str,
    *,
    actor: str,
    tier: AuditTier,
    reason: str | None,
    now_ms: int,
) -> OpResult:
    """One atomic function: lock, re-read, check, write row and audit row (T13, T22)."""
    auth = authority(tx, actor, tier)
    primary = resolve(tx, client_id)
    current = lock_client(tx, primary, now_ms)
    count = admin_count(tx) if op == "remove_admin" else 0
    planned = plan(op, current, auth, reason=reason, now_ms=now_ms, admin_count=count)
    entry = audit_planned(tx, planned, auth, now_ms)
    return OpResult(planned.message(entry.id), entry.id, planned.after)


def record_refusal(
    tx: Tx, op: str, client_id: str | None, actor: str, tier: AuditTier, reason: str, now_ms: int
) -> AuditEntry:
    """The ``refused:<op>`` row of a ``not_authorized`` refusal (T14, T65)."""
    return insert_audit(
        tx,
        at=now_ms,
        client_id=client_id,
        action=f"refused:{op}",
        actor=actor,
        tier=tier,
        reason=reason,
    )


def apply_changes(
    tx: Tx,
    changes: Sequence[StateChange],
    *,
    actor: str,
    tier: AuditTier,
    context: ApplyContext,
    now_ms: int,
) -> list[AuditEntry]:
    """One decision's changes in this one transaction; a failed re-check raises
    :class:`PreconditionFailed` and rolls everything back (T18)."""
    entries: list[AuditEntry] = []
    for change in changes:
        target = resolve(tx, change.client_id or context.client_id)
        current = lock_client(tx, target, now_ms)
        # Each change is attributed to whoever staged it: a rule's change within an
        # agent-tier decision is still the rule's (T22).
        change_auth = Authority(actor=actor, tier=tier)
        if change.rule_index is not None and context.policy:
            change_auth = Authority(actor=f"rule:{context.policy}#{change.rule_index}", tier="rule")
        try:
            planned = plan(change.op, current, change_auth, reason=change.reason, now_ms=now_ms)
        except TrustOpError as exc:
            raise PreconditionFailed(target, change.op, exc.message) from None
        if change_auth.tier == "agent" and change.op == "promote_to_contact":
            if not current.agent_may_promote:
                raise PreconditionFailed(target, change.op, "agent may not promote this client")
            _check_promotion_budget(tx, target, context, now_ms)
        entry = audit_planned(
            tx,
            planned,
            change_auth,
            now_ms,
            policy=context.policy,
            rule_index=change.rule_index,
            invite_id=change.invite_id,
            payment_tx=change.payment_tx,
        )
        if change.invite_id is not None:
            consume_invite(tx, change.invite_id, target, entry.id, now_ms)
        if change.payment_tx is not None:
            record_payment(tx, change.payment_tx, target, context, entry.id, now_ms)
        entries.append(entry)
    return entries


def _check_promotion_budget(tx: Tx, target: str, context: ApplyContext, now_ms: int) -> None:
    """Refuse an agent promotion over the hourly budget, counted under a lock so that
    concurrent decisions (and instances) cannot all pass the same count (TR §7)."""
    limit = context.agent_promotions_per_hour
    if limit is None:
        return
    if tx.dialect.xact_lock_sql is not None:
        tx.rows(tx.dialect.xact_lock_sql, AGENT_PROMOTION_LOCK_KEY)
    if count_audit(tx, "promote_to_contact", "agent", now_ms - HOUR_MS) >= limit:
        raise PreconditionFailed(target, "promote_to_contact", "agent promotions per hour reached")


def revert(tx: Tx, audit_id: int, *, actor: str, tier: AuditTier, now_ms: int) -> OpResult:
    """Apply the inverse of audit row ``audit_id`` if the client still has its to-state (T24)."""
    entry = read_audit(tx, audit_id, lock=True)
    if entry is None:
        raise TrustOpError("not_found", f"no audit row #{audit_id}")
    if entry.client_id is None:
        raise TrustOpError("not_applicable", f"audit #{entry.id} ({entry.action}) has no client")
    auth = authority(tx, actor, tier)
    current = lock_client(tx, entry.client_id, now_ms)
    last_block = one_row(
        tx,
        "SELECT reason FROM trust_audit WHERE client_id = ? AND action IN ('block', 'import')"
        " AND reason IS NOT NULL ORDER BY id DESC LIMIT 1",
        entry.client_id,
    )
    planned = plan_revert(
        entry,
        current,
        auth,
        now_ms=now_ms,
        admin_count=admin_count(tx),
        block_reason=opt_str(last_block[0]) if last_block else None,
    )
    new = audit_planned(tx, planned, auth, now_ms, reverts=entry.id)
    tx.run("UPDATE trust_audit SET reverted_by = ? WHERE id = ?", new.id, entry.id)
    return OpResult(f"audit #{entry.id} reverted: {planned.message(new.id)}", new.id, planned.after)


def bootstrap_admins(tx: Tx, client_ids: Iterable[str], now_ms: int) -> list[AuditEntry]:
    """Make ``client_ids`` admins, actor ``config``, only while there is no admin (T17)."""
    if admin_count(tx) > 0:
        return []
    auth = Authority(actor="config", tier="operator")
    entries = []
    done: set[str] = set()
    for client_id in client_ids:
        target = resolve(tx, client_id)
        if target in done:
            continue  # listed twice, or an alias of one listed before
        done.add(target)
        current = lock_client(tx, target, now_ms)
        try:
            planned = plan("set_admin", current, auth, reason="bootstrap admin", now_ms=now_ms)
        except TrustOpError as exc:
            raise TrustOpError(
                exc.code, f"bootstrap admin {client_id} refused: {exc.message}"
            ) from None
        entries.append(audit_planned(tx, planned, auth, now_ms))
    return entries


def import_states(
    tx: Tx,
    wanted: Sequence[ImportEntry],
    *,
    actor: str,
    overwrite: bool,
    dry_run: bool,
    now_ms: int,
) -> ImportReport:
    """Set each client to its imported state in this transaction, one ``import`` row each."""
    changed: list[str] = []
    unchanged: list[str] = []
    conflicts: list[str] = []
    audit_ids: list[int] = []
    auth = Authority(actor=actor, tier="operator")
    for item in wanted:
        target = resolve(tx, item.client_id)
        current = read_client(tx, target, lock=True) or ClientRecord.absent(target)
        after = attrs.evolve(
            current,
            level=item.level,
            blocked=item.blocked,
            blocked_reason=(current.blocked_reason or "imported from blocklist")
            if item.blocked
            else None,
            blocked_by=(current.blocked_by or actor) if item.blocked else None,
            blocked_at=(current.blocked_at or now_ms) if item.blocked else None,
            is_admin=item.is_admin,
            admin_by=(current.admin_by or actor) if item.is_admin else None,
            admin_at=(current.admin_at or now_ms) if item.is_admin else None,
            updated_at=now_ms,
        )
        same = (current.level, current.blocked, current.is_admin) == (
            after.level,
            after.blocked,
            after.is_admin,
        )
        if same:
            unchanged.append(current.client_id)
            continue
        if current.stored and not overwrite:
            conflicts.append(current.client_id)
            continue
        changed.append(current.client_id)
        if dry_run:
            continue
        if not current.stored:
            lock_client(tx, target, now_ms)
        planned = Planned("import", current, after, f"import from {actor.removeprefix('import:')}")
        audit_ids.append(audit_planned(tx, planned, auth, now_ms).id)
    return ImportReport(tuple(changed), tuple(unchanged), tuple(conflicts), tuple(audit_ids))


def client_state_text(rec: ClientRecord) -> str:
    """``contact+blocked, admin``: the state as the audit log spells it, with the role."""
    text = state_text(rec.level, rec.blocked)
    return f"{text}, admin" if rec.is_admin else text
