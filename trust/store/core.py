"""The store's transactions, written once for both databases.

Everything here is synchronous and runs in a worker thread inside one transaction
(:class:`Tx`). The backends (:mod:`trust.store.sqlite`, :mod:`trust.store.postgres`) only
open connections and transactions; :class:`trust.store.base.SqlClientStore` moves each call
to a thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import attrs

from trust.model import Level, StateChange
from trust.planning import AtomicOp, Authority, Planned, plan, plan_revert
from trust.records import (
    AuditEntry,
    AuditTier,
    CachedVerdict,
    ClientRecord,
    Counters,
    ImportEntry,
    ImportReport,
    Invite,
    OpResult,
    PreconditionFailed,
    StoreError,
    TrustOpError,
    state_text,
)
from trust.store.rows import audit_reader, client_reader, counters_reader, invite_reader
from trust.store.schema import (
    AGENT_PROMOTION_LOCK_KEY,
    AUDIT_COLUMNS,
    CLIENT_COLUMNS,
    COUNTER_COLUMNS,
    INVITE_COLUMNS,
    META_DDL,
    MIGRATIONS,
    SCHEMA_VERSION,
    Dialect,
)

HOUR_MS: Final = 3_600_000

Row = tuple[Any, ...]

POLICY_INVITE_PREFIX: Final = "policy:"
"""Invite ids of codes written in a (0.6.5) policy file: unlimited, nothing to consume."""

_DAY_MS: Final = 86_400_000
_NINETY_DAYS_MS: Final = 90 * _DAY_MS


class Tx(Protocol):
    """One open transaction; SQL is written with ``?`` parameters."""

    dialect: Dialect

    def rows(self, sql: str, *params: object) -> list[Row]:
        """All rows of a query."""
        ...

    def run(self, sql: str, *params: object) -> int:
        """Execute a statement; the number of rows it touched."""
        ...


def _one(tx: Tx, sql: str, *params: object) -> Row | None:
    found = tx.rows(sql, *params)
    return found[0] if found else None


@attrs.frozen
class ApplyContext:
    """What one decision's :meth:`apply` needs besides the changes themselves."""

    client_id: str
    policy: str | None = None
    payment_amount: str | None = None
    payment_currency: str | None = None
    agent_promotions_per_hour: int | None = None
    """The budget of agent-tier promotions in the last hour, counted in the transaction."""


@attrs.frozen
class StoreView:
    """One read of a client for the engine: its row, alias blocks and counters."""

    record: ClientRecord
    secondary_blocked: bool
    counters: Counters | None


@attrs.frozen
class CounterDelta:
    """Increments for one client since the last flush, bucketed by UTC day and hour."""

    client_id: str
    first_seen: int
    last_seen: int
    requests: int
    day: int
    requests_today: int
    hour: int
    requests_hour: int
    agent_calls_hour: int = 0
    invite_failures_hour: int = 0


# --- row mapping ---------------------------------------------------------------------------


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def client_from_row(row: Row) -> ClientRecord:
    """A :class:`ClientRecord` from a ``CLIENT_COLUMNS`` row."""
    return client_reader(row)


def audit_from_row(row: Row) -> AuditEntry:
    """An :class:`AuditEntry` from an ``AUDIT_COLUMNS`` row."""
    return audit_reader(row)


def invite_from_row(row: Row) -> Invite:
    """An :class:`Invite` from an ``INVITE_COLUMNS`` row."""
    return invite_reader(row)


def counters_from_row(row: Row) -> Counters:
    """A :class:`Counters` from a ``COUNTER_COLUMNS`` row."""
    return counters_reader(row)


# --- schema --------------------------------------------------------------------------------


def migrate(tx: Tx) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; the caller holds the migration lock."""
    tx.run(tx.dialect.render(META_DDL))
    row = _one(tx, "SELECT value FROM trust_meta WHERE key = 'schema_version'")
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


# --- clients -------------------------------------------------------------------------------


def read_client(tx: Tx, client_id: str, *, lock: bool = False) -> ClientRecord | None:
    """The stored row of ``client_id``, or None."""
    suffix = tx.dialect.lock_suffix if lock else ""
    row = _one(
        tx, f"SELECT {CLIENT_COLUMNS} FROM trust_clients WHERE client_id = ?{suffix}", client_id
    )
    return client_from_row(row) if row else None


def resolve(tx: Tx, client_id: str) -> str:
    """The primary id ``client_id`` is an alias of, or ``client_id`` itself."""
    row = _one(tx, "SELECT client_id FROM trust_aliases WHERE alias_id = ?", client_id)
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
    row = _one(
        tx,
        f"INSERT INTO trust_audit ({AUDIT_COLUMNS.removeprefix('id, ')})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) RETURNING id",
        *values,
    )
    if row is None:  # pragma: no cover
        raise StoreError("audit insert returned no id")
    return AuditEntry(int(row[0]), *values)


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
            _consume_invite(tx, change.invite_id, target, entry.id, now_ms)
        if change.payment_tx is not None:
            _record_payment(tx, change.payment_tx, target, context, entry.id, now_ms)
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


def _consume_invite(tx: Tx, invite_id: str, client_id: str, audit_id: int, now_ms: int) -> None:
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


def _record_payment(
    tx: Tx, tx_id: str, client_id: str, context: ApplyContext, audit_id: int, now_ms: int
) -> None:
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


def read_audit(tx: Tx, audit_id: int, *, lock: bool = False) -> AuditEntry | None:
    """One audit row by id."""
    suffix = tx.dialect.lock_suffix if lock else ""
    row = _one(tx, f"SELECT {AUDIT_COLUMNS} FROM trust_audit WHERE id = ?{suffix}", audit_id)
    return audit_from_row(row) if row else None


def revert(tx: Tx, audit_id: int, *, actor: str, tier: AuditTier, now_ms: int) -> OpResult:
    """Apply the inverse of audit row ``audit_id`` if the client still has its to-state (T24)."""
    entry = read_audit(tx, audit_id, lock=True)
    if entry is None:
        raise TrustOpError("not_found", f"no audit row #{audit_id}")
    if entry.client_id is None:
        raise TrustOpError("not_applicable", f"audit #{entry.id} ({entry.action}) has no client")
    auth = authority(tx, actor, tier)
    current = lock_client(tx, entry.client_id, now_ms)
    last_block = _one(
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
        block_reason=_opt_str(last_block[0]) if last_block else None,
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


# --- reads ---------------------------------------------------------------------------------


def read_view(tx: Tx, client_id: str, secondary: str | None) -> StoreView:
    """The engine's read of one message's sender (TR §1 Aliases, §3)."""
    primary = resolve(tx, client_id)
    record = read_client(tx, primary) or ClientRecord.absent(primary)
    hit = _one(
        tx,
        "SELECT client_id FROM trust_clients WHERE blocked AND (client_id = ? OR client_id IN"
        " (SELECT alias_id FROM trust_aliases WHERE client_id = ?)) LIMIT 1",
        secondary or "",
        primary,
    )
    return StoreView(record, hit is not None, read_counters(tx, primary))


def bind_alias(tx: Tx, alias_id: str, client_id: str, now_ms: int) -> str:
    """Bind ``alias_id`` → ``client_id`` unless already bound; the binding now in force."""
    tx.run(
        "INSERT INTO trust_aliases (alias_id, client_id, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT (alias_id) DO NOTHING",
        alias_id,
        client_id,
        now_ms,
    )
    return resolve(tx, alias_id)


def list_clients(tx: Tx, *, level: Level | None, admins: bool, blocked: bool) -> list[ClientRecord]:
    """Stored clients, filtered, by id."""
    where = ["1 = 1"]
    params: list[object] = []
    if level is not None:
        where.append("level = ?")
        params.append(level.value)
    if admins:
        where.append("is_admin")
    if blocked:
        where.append("blocked")
    rows = tx.rows(
        f"SELECT {CLIENT_COLUMNS} FROM trust_clients WHERE {' AND '.join(where)}"
        " ORDER BY client_id",
        *params,
    )
    return [client_from_row(r) for r in rows]


def read_audit_log(tx: Tx, client_id: str | None, limit: int) -> list[AuditEntry]:
    """Newest audit rows first, of one client (and its aliases' primary) or of all."""
    if client_id is None:
        rows = tx.rows(f"SELECT {AUDIT_COLUMNS} FROM trust_audit ORDER BY id DESC LIMIT ?", limit)
    else:
        rows = tx.rows(
            f"SELECT {AUDIT_COLUMNS} FROM trust_audit WHERE client_id = ? ORDER BY id DESC LIMIT ?",
            resolve(tx, client_id),
            limit,
        )
    return [audit_from_row(r) for r in rows]


def stored_ids(tx: Tx) -> list[str]:
    """Every client id the store holds (clients, aliases and their targets) (T5)."""
    found: set[str] = set()
    for sql in (
        "SELECT client_id FROM trust_clients",
        "SELECT alias_id FROM trust_aliases",
        "SELECT client_id FROM trust_aliases",
    ):
        found.update(str(r[0]) for r in tx.rows(sql))
    return sorted(found)


def changes_since(tx: Tx, audit_id: int) -> list[tuple[int, str | None]]:
    """``(id, client_id)`` of audit rows after ``audit_id``, oldest first (T20)."""
    rows = tx.rows("SELECT id, client_id FROM trust_audit WHERE id > ? ORDER BY id", audit_id)
    return [(int(r[0]), _opt_str(r[1])) for r in rows]


def count_audit(tx: Tx, action: str, tier: AuditTier, since_ms: int) -> int:
    """How many ``action`` rows of ``tier`` were written since ``since_ms``."""
    row = _one(
        tx,
        "SELECT COUNT(*) FROM trust_audit WHERE action = ? AND tier = ? AND at >= ?",
        action,
        tier,
        since_ms,
    )
    return int(row[0]) if row else 0


def last_audit_id(tx: Tx) -> int:
    """The newest audit id, 0 for an empty log."""
    row = _one(tx, "SELECT MAX(id) FROM trust_audit")
    return int(row[0]) if row and row[0] is not None else 0


# --- invites and payments ------------------------------------------------------------------


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
    row = _one(tx, f"SELECT {INVITE_COLUMNS} FROM trust_invites WHERE code_sha256 = ?", digest)
    return invite_from_row(row) if row else None


def list_invites(tx: Tx) -> list[Invite]:
    """Every invite, oldest first."""
    rows = tx.rows(f"SELECT {INVITE_COLUMNS} FROM trust_invites ORDER BY created_at, invite_id")
    return [invite_from_row(r) for r in rows]


def revoke_invite(tx: Tx, invite_id: str, actor: str, tier: AuditTier, now_ms: int) -> AuditEntry:
    """Revoke an invite; ``not_found`` or ``not_applicable`` (already revoked) otherwise."""
    row = _one(
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


@attrs.frozen
class AttemptWindow:
    """One limit on failed ``/invite`` attempts: at most ``limit`` counted attempts in
    ``scope`` (``client:<id>`` or ``global``) in any ``window_ms`` (a sliding window)."""

    scope: str
    limit: int
    window_ms: int = HOUR_MS


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
        row = _one(
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
    row = _one(
        tx, "SELECT COUNT(*) FROM trust_invite_attempts WHERE scope = ? AND at > ?", scope, since_ms
    )
    return int(row[0]) if row else 0


def payment_used(tx: Tx, tx_id: str) -> str | None:
    """The client a payment already onboarded, or None."""
    row = _one(tx, "SELECT client_id FROM trust_payments WHERE tx_id = ?", tx_id)
    return str(row[0]) if row else None


# --- cache and counters --------------------------------------------------------------------


def cache_get(tx: Tx, client_id: str, digest: str, now_ms: int) -> CachedVerdict | None:
    """An unexpired cached verdict."""
    row = _one(
        tx,
        "SELECT client_id, policy_digest, allow, reason, created_at, expires_at"
        " FROM trust_decision_cache WHERE client_id = ? AND policy_digest = ? AND expires_at > ?",
        client_id,
        digest,
        now_ms,
    )
    if row is None:
        return None
    return CachedVerdict(
        str(row[0]), str(row[1]), bool(row[2]), str(row[3]), int(row[4]), int(row[5])
    )


def cache_put(tx: Tx, verdict: CachedVerdict) -> None:
    """Store or replace a verdict."""
    tx.run(
        "INSERT INTO trust_decision_cache (client_id, policy_digest, allow, reason, created_at,"
        " expires_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_id, policy_digest) DO UPDATE"
        " SET allow = excluded.allow, reason = excluded.reason,"
        " created_at = excluded.created_at, expires_at = excluded.expires_at",
        verdict.client_id,
        verdict.policy_digest,
        verdict.allow,
        verdict.reason,
        verdict.created_at,
        verdict.expires_at,
    )


def cache_drop(tx: Tx, client_id: str) -> None:
    """Forget a client's verdicts under every policy."""
    tx.run("DELETE FROM trust_decision_cache WHERE client_id = ?", client_id)


def read_counters(tx: Tx, client_id: str) -> Counters | None:
    """A client's stored counters."""
    row = _one(tx, f"SELECT {COUNTER_COLUMNS} FROM trust_counters WHERE client_id = ?", client_id)
    return counters_from_row(row) if row else None


def _bucket(column: str, key: str) -> str:
    return (
        f"{column} = CASE WHEN trust_counters.{key} = excluded.{key}"
        f" THEN trust_counters.{column} + excluded.{column}"
        f" WHEN trust_counters.{key} > excluded.{key} THEN trust_counters.{column}"
        f" ELSE excluded.{column} END"
    )


def add_counts(tx: Tx, deltas: Iterable[CounterDelta]) -> None:
    """Add increments; bucket counters restart when the UTC day or hour moved on."""
    sql = (
        f"INSERT INTO trust_counters ({COUNTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (client_id) DO UPDATE SET"
        " first_seen = CASE WHEN excluded.first_seen < trust_counters.first_seen"
        " THEN excluded.first_seen ELSE trust_counters.first_seen END,"
        " last_seen = CASE WHEN excluded.last_seen > trust_counters.last_seen"
        " THEN excluded.last_seen ELSE trust_counters.last_seen END,"
        " requests = trust_counters.requests + excluded.requests,"
        f" {_bucket('requests_today', 'day')},"
        f" {_bucket('requests_hour', 'hour')},"
        f" {_bucket('agent_calls_hour', 'hour')},"
        f" {_bucket('invite_failures_hour', 'hour')},"
        " day = CASE WHEN excluded.day > trust_counters.day THEN excluded.day"
        " ELSE trust_counters.day END,"
        " hour = CASE WHEN excluded.hour > trust_counters.hour THEN excluded.hour"
        " ELSE trust_counters.hour END"
    )
    for d in deltas:
        tx.run(
            sql,
            d.client_id,
            d.first_seen,
            d.last_seen,
            d.requests,
            d.day,
            d.requests_today,
            d.hour,
            d.requests_hour,
            d.agent_calls_hour,
            d.invite_failures_hour,
        )


def prune(tx: Tx, now_ms: int) -> int:
    """Drop expired cache rows, invite attempts older than a day (no window is longer) and
    counters of strangers unseen for 90 days."""
    dropped = tx.run("DELETE FROM trust_decision_cache WHERE expires_at <= ?", now_ms)
    dropped += tx.run("DELETE FROM trust_invite_attempts WHERE at <= ?", now_ms - _DAY_MS)
    dropped += tx.run(
        "DELETE FROM trust_counters WHERE last_seen < ? AND client_id NOT IN"
        " (SELECT client_id FROM trust_clients WHERE level <> 'stranger' OR blocked OR is_admin)",
        now_ms - _NINETY_DAYS_MS,
    )
    return dropped


def client_state_text(rec: ClientRecord) -> str:
    """``contact+blocked, admin``: the state as the audit log spells it, with the role."""
    text = state_text(rec.level, rec.blocked)
    return f"{text}, admin" if rec.is_admin else text
