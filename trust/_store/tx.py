"""One open transaction of the store (:class:`Tx`) and the values its calls take and return.

Every transaction function of :mod:`trust._store` is synchronous, takes a :class:`Tx` and
runs in a worker thread; the backends (:mod:`trust._store.sqlite`,
:mod:`trust._store.postgres`) only open connections and transactions.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import attrs

from trust._records import AuditEntry, ClientRecord, Counters, Invite
from trust._store.rows import audit_reader, client_reader, counters_reader, invite_reader
from trust._store.schema import Dialect

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000

Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction; SQL is written with ``?`` parameters."""

    dialect: Dialect

    def rows(self, sql: str, *params: object) -> list[Row]:
        """All rows of a query."""
        ...

    def run(self, sql: str, *params: object) -> int:
        """Execute a statement; the number of rows it touched."""
        ...


def one_row(tx: Tx, sql: str, *params: object) -> Row | None:
    """The first row of a query, or None."""
    found = tx.rows(sql, *params)
    return found[0] if found else None


def opt_str(value: object) -> str | None:
    """A nullable column as text."""
    return None if value is None else str(value)


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


@attrs.frozen
class AttemptWindow:
    """One limit on failed ``/invite`` attempts: at most ``limit`` counted attempts in
    ``scope`` (``client:<id>`` or ``global``) in any ``window_ms`` (a sliding window)."""

    scope: str
    limit: int
    window_ms: int = HOUR_MS


# --- row mapping ---------------------------------------------------------------------------


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
