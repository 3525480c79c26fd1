"""The engine's and the CLI's reads, and the bookkeeping tables: aliases, the verdict cache,
counters, pruning."""

from __future__ import annotations

from collections.abc import Iterable

from trust._model import Level
from trust._records import AuditEntry, CachedVerdict, ClientRecord, Counters
from trust._store.core import read_client, resolve
from trust._store.schema import AUDIT_COLUMNS, CLIENT_COLUMNS, COUNTER_COLUMNS
from trust._store.tx import (
    DAY_MS,
    CounterDelta,
    StoreView,
    Tx,
    audit_from_row,
    client_from_row,
    counters_from_row,
    one_row,
)

_NINETY_DAYS_MS = 90 * DAY_MS


def read_view(tx: Tx, client_id: str, secondary: str | None) -> StoreView:
    """The engine's read of one message's sender (TR §1 Aliases, §3)."""
    primary = resolve(tx, client_id)
    record = read_client(tx, primary) or ClientRecord.absent(primary)
    hit = one_row(
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


def cache_get(tx: Tx, client_id: str, digest: str, now_ms: int) -> CachedVerdict | None:
    """An unexpired cached verdict."""
    row = one_row(
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
    row = one_row(
        tx, f"SELECT {COUNTER_COLUMNS} FROM trust_counters WHERE client_id = ?", client_id
    )
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
    dropped += tx.run("DELETE FROM trust_invite_attempts WHERE at <= ?", now_ms - DAY_MS)
    dropped += tx.run(
        "DELETE FROM trust_counters WHERE last_seen < ? AND client_id NOT IN"
        " (SELECT client_id FROM trust_clients WHERE level <> 'stranger' OR blocked OR is_admin)",
        now_ms - _NINETY_DAYS_MS,
    )
    return dropped
