"""The trust tables (TR §3 Schema): one definition, rendered for SQLite and PostgreSQL.

Migrations are forward-only: ``MIGRATIONS[n]`` takes the schema from version ``n`` to
``n + 1`` and the version is kept in ``trust_meta``. Column types are written as
placeholders (``{INT}``, ``{BOOL}``, ``{BLOB}``, ``{SERIAL}``, ``{FALSE}``) that each
dialect fills in.
"""

from __future__ import annotations

from typing import Final

import attrs


@attrs.frozen
class Dialect:
    """What differs between the two databases; the SQL is otherwise the same text."""

    name: str
    types: dict[str, str]
    # Appended to row reads inside write transactions (PostgreSQL row locks; SQLite's
    # BEGIN IMMEDIATE already holds the database write lock).
    lock_suffix: str
    paramstyle_pyformat: bool
    # Serialises one kind of write across instances for the rest of the transaction
    # (the agent-promotion budget); None where the write transaction already does.
    xact_lock_sql: str | None = None

    def render(self, ddl: str) -> str:
        """``ddl`` with this dialect's column types."""
        return ddl.format(**self.types)

    def sql(self, text: str) -> str:
        """``text`` (written with ``?`` parameters) in this driver's parameter style."""
        return text.replace("?", "%s") if self.paramstyle_pyformat else text


SQLITE: Final = Dialect(
    name="sqlite",
    types={
        "INT": "INTEGER",
        "BOOL": "INTEGER",
        "BLOB": "BLOB",
        "SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "TEXT": "TEXT",
        "FALSE": "0",
    },
    lock_suffix="",
    paramstyle_pyformat=False,
)

POSTGRES: Final = Dialect(
    name="postgres",
    types={
        "INT": "BIGINT",
        "BOOL": "BOOLEAN",
        "BLOB": "BYTEA",
        "SERIAL": "BIGSERIAL PRIMARY KEY",
        "TEXT": "TEXT",
        "FALSE": "FALSE",
    },
    lock_suffix=" FOR UPDATE",
    paramstyle_pyformat=True,
    xact_lock_sql="SELECT pg_advisory_xact_lock(?)",
)

META_DDL: Final = "CREATE TABLE IF NOT EXISTS trust_meta (key {TEXT} PRIMARY KEY, value {TEXT})"

_V1: Final[tuple[str, ...]] = (
    """CREATE TABLE trust_clients (
        client_id {TEXT} PRIMARY KEY,
        level {TEXT} NOT NULL CHECK (level IN ('stranger', 'contact', 'whitelist')),
        blocked {BOOL} NOT NULL,
        blocked_reason {TEXT},
        blocked_by {TEXT},
        blocked_at {INT},
        is_admin {BOOL} NOT NULL,
        admin_by {TEXT},
        admin_at {INT},
        agent_may_promote {BOOL} NOT NULL,
        created_at {INT} NOT NULL,
        updated_at {INT} NOT NULL
    )""",
    """CREATE TABLE trust_aliases (
        alias_id {TEXT} PRIMARY KEY,
        client_id {TEXT} NOT NULL,
        created_at {INT} NOT NULL
    )""",
    "CREATE INDEX trust_aliases_client ON trust_aliases (client_id)",
    """CREATE TABLE trust_audit (
        id {SERIAL},
        at {INT} NOT NULL,
        client_id {TEXT},
        action {TEXT} NOT NULL,
        from_level {TEXT},
        to_level {TEXT},
        from_admin {BOOL},
        to_admin {BOOL},
        actor {TEXT} NOT NULL,
        tier {TEXT} NOT NULL CHECK (tier IN ('rule', 'agent', 'admin', 'operator')),
        reason {TEXT},
        policy {TEXT},
        rule_index {INT},
        invite_id {TEXT},
        payment_tx {TEXT},
        reverts {INT},
        reverted_by {INT}
    )""",
    "CREATE INDEX trust_audit_client ON trust_audit (client_id, id)",
    """CREATE TABLE trust_invites (
        invite_id {TEXT} PRIMARY KEY,
        code_sha256 {BLOB} NOT NULL UNIQUE,
        created_by {TEXT} NOT NULL,
        created_at {INT} NOT NULL,
        expires_at {INT},
        max_uses {INT} NOT NULL CHECK (max_uses >= 1),
        uses {INT} NOT NULL,
        revoked_at {INT},
        revoked_by {TEXT},
        note {TEXT}
    )""",
    """CREATE TABLE trust_invite_uses (
        invite_id {TEXT} NOT NULL,
        client_id {TEXT} NOT NULL,
        at {INT} NOT NULL,
        audit_id {INT},
        PRIMARY KEY (invite_id, client_id)
    )""",
    """CREATE TABLE trust_payments (
        tx_id {TEXT} PRIMARY KEY,
        client_id {TEXT} NOT NULL,
        amount {TEXT} NOT NULL,
        currency {TEXT},
        at {INT} NOT NULL,
        audit_id {INT}
    )""",
    """CREATE TABLE trust_decision_cache (
        client_id {TEXT} NOT NULL,
        policy_digest {TEXT} NOT NULL,
        allow {BOOL} NOT NULL,
        reason {TEXT} NOT NULL,
        created_at {INT} NOT NULL,
        expires_at {INT} NOT NULL,
        PRIMARY KEY (client_id, policy_digest)
    )""",
    """CREATE TABLE trust_counters (
        client_id {TEXT} PRIMARY KEY,
        first_seen {INT} NOT NULL,
        last_seen {INT} NOT NULL,
        requests {INT} NOT NULL,
        day {INT} NOT NULL,
        requests_today {INT} NOT NULL,
        hour {INT} NOT NULL,
        requests_hour {INT} NOT NULL,
        agent_calls_hour {INT} NOT NULL,
        invite_failures_hour {INT} NOT NULL
    )""",
)

_V2: Final[tuple[str, ...]] = (
    # Failed-invite windows shared by every instance on the store (issue 12): one row per
    # counted attempt and scope (``client:<id>`` or ``global``), kept for the window only.
    # No guessed code is stored, not even as a digest.
    """CREATE TABLE trust_invite_attempts (
        attempt_id {TEXT} NOT NULL,
        scope {TEXT} NOT NULL,
        at {INT} NOT NULL,
        PRIMARY KEY (attempt_id, scope)
    )""",
    "CREATE INDEX trust_invite_attempts_scope ON trust_invite_attempts (scope, at)",
    # Invites made before this version count as custom: the window guards them too.
    "ALTER TABLE trust_invites ADD COLUMN generated {BOOL} NOT NULL DEFAULT {FALSE}",
)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1, _V2)
"""``MIGRATIONS[n]`` upgrades schema version ``n`` to ``n + 1``."""

SCHEMA_VERSION: Final = len(MIGRATIONS)

CLIENT_COLUMNS: Final = (
    "client_id, level, blocked, blocked_reason, blocked_by, blocked_at, is_admin, admin_by,"
    " admin_at, agent_may_promote, created_at, updated_at"
)
AUDIT_COLUMNS: Final = (
    "id, at, client_id, action, from_level, to_level, from_admin, to_admin, actor, tier,"
    " reason, policy, rule_index, invite_id, payment_tx, reverts, reverted_by"
)
INVITE_COLUMNS: Final = (
    "invite_id, code_sha256, created_by, created_at, expires_at, max_uses, uses, revoked_at,"
    " revoked_by, note, generated"
)
COUNTER_COLUMNS: Final = (
    "client_id, first_seen, last_seen, requests, day, requests_today, hour, requests_hour,"
    " agent_calls_hour, invite_failures_hour"
)

# The PostgreSQL advisory lock key that serialises migrations across instances.
MIGRATION_LOCK_KEY: Final = 0x7472757374  # "trust"
# The advisory lock key that serialises agent promotions (the per-hour budget, TR §7).
AGENT_PROMOTION_LOCK_KEY: Final = 0x7472757374_01
