"""The reply outbox (RC §6.2): actions queued while the connector cannot take them.

Bounded by ``outbox_max``; a ``send`` lives ``outbox_ttl_s``, a ``follow_up``
:data:`~relay_runtime._state.FOLLOW_UP_TTL_S`; an entry that fails
:data:`~relay_runtime._state.OUTBOX_MAX_ATTEMPTS` deliveries is given up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from relay_runtime._state._engine import _Engine
from relay_runtime._state._records import (
    FOLLOW_UP_TTL_S,
    OUTBOX_MAX_ATTEMPTS,
    Attempt,
    OutboxEntry,
    OutboxFull,
    OutboxKind,
    StateError,
)
from relay_runtime._state._sql import _entry

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay_runtime._state._batch import DB

logger = logging.getLogger("relay_runtime.state")


class _Outbox(_Engine):
    """The outbox calls of :class:`~relay_runtime._state.StateDB`."""

    outbox_max: int
    outbox_ttl_s: float

    def _ttl_for(self, kind: str) -> float:
        if kind == "send":
            return self.outbox_ttl_s
        if kind == "follow_up":
            return FOLLOW_UP_TTL_S
        raise StateError(f"outbox kind must be 'send' or 'follow_up', got {kind!r}")

    async def put(
        self,
        identity_platform: str,
        identity_bot_id: str,
        action_json: str,
        request_id: str,
        kind: OutboxKind,
        now: float,
    ) -> int:
        """Queue an action; return its ``outbox_id`` once committed.

        Expired entries are dropped first (WARNING each), so stale ones never hold the bound.
        Raises :class:`OutboxFull` when ``outbox_max`` live entries are queued; nothing is
        evicted to make room.
        """
        ttl = self._ttl_for(kind)
        outbox_max = self.outbox_max

        def put(conn: DB) -> tuple[int, list[OutboxEntry]]:
            expired = self._expire_in(conn, now)
            (count,) = conn.execute("SELECT count(*) FROM relay_outbox").fetchone()
            if count >= outbox_max:
                raise OutboxFull(outbox_max)
            (outbox_id,) = conn.execute(
                "INSERT INTO relay_outbox (platform, bot_id, action_json, request_id, kind,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (identity_platform, identity_bot_id, action_json, request_id, kind, now, now + ttl),
            ).fetchone()
            return int(outbox_id), expired

        outbox_id, expired = await self._run(put)
        self._log_expired(expired, now)
        return outbox_id

    async def peek_batch(self, now: float, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` of the oldest entries not expired at ``now``, oldest first."""

        def peek(conn: DB) -> list[OutboxEntry]:
            rows = conn.execute(
                "SELECT * FROM relay_outbox WHERE expires_at > ? ORDER BY id LIMIT ?",
                (now, limit),
            )
            return [_entry(row) for row in rows]

        return await self._run(peek, read=True)

    async def entries(self) -> list[OutboxEntry]:
        """Every queued entry, oldest first (for inspection and tests)."""

        def select(conn: DB) -> list[OutboxEntry]:
            return [_entry(r) for r in conn.execute("SELECT * FROM relay_outbox ORDER BY id")]

        return await self._run(select, read=True)

    async def delete(self, outbox_id: int) -> bool:
        """Remove an entry (delivered, or given up by the caller); False if it was gone."""

        def delete(conn: DB) -> bool:
            cur = conn.execute("DELETE FROM relay_outbox WHERE id = ?", (outbox_id,))
            return cur.rowcount > 0

        return await self._run(delete)

    async def delete_many(self, outbox_ids: Sequence[int]) -> list[int]:
        """Remove several entries in one transaction; returns the ids that were there."""
        ids = list(outbox_ids)

        def delete(conn: DB) -> list[int]:
            sql = "DELETE FROM relay_outbox WHERE id = ?"
            return [i for i in ids if conn.execute(sql, (i,)).rowcount]

        return await self._run(delete) if ids else []

    async def bump_attempts(self, outbox_id: int) -> Attempt:
        """Count one failed delivery (an unanswered request); the 5th deletes it (ERROR)."""

        def bump(conn: DB) -> tuple[Attempt, OutboxEntry | None]:
            row = conn.execute(
                "UPDATE relay_outbox SET attempts = attempts + 1 WHERE id = ? RETURNING *",
                (outbox_id,),
            ).fetchone()
            if row is None:
                return Attempt(attempts=0, dropped=False), None
            entry = _entry(row)
            if entry.attempts >= OUTBOX_MAX_ATTEMPTS:
                conn.execute("DELETE FROM relay_outbox WHERE id = ?", (outbox_id,))
                return Attempt(attempts=entry.attempts, dropped=True), entry
            return Attempt(attempts=entry.attempts, dropped=False), None

        attempt, dropped = await self._run(bump)
        if dropped is not None:
            logger.error(
                "relay outbox entry dropped after %d failed attempts: outbox_id=%d kind=%s"
                " request_id=%s platform=%s",
                dropped.attempts,
                dropped.id,
                dropped.kind,
                dropped.request_id,
                dropped.platform,
            )
        return attempt

    async def expire(self, now: float) -> list[OutboxEntry]:
        """Delete entries whose TTL has passed at ``now``; a WARNING for each; return them."""
        expired = await self._run(lambda conn: self._expire_in(conn, now))
        self._log_expired(expired, now)
        return expired

    async def count(self) -> int:
        """Number of queued entries (expired ones included until :meth:`expire` runs)."""

        def count(conn: DB) -> int:
            (n,) = conn.execute("SELECT count(*) FROM relay_outbox").fetchone()
            return int(n)

        return await self._run(count, read=True)

    @staticmethod
    def _expire_in(conn: DB, now: float) -> list[OutboxEntry]:
        rows = conn.execute(
            "DELETE FROM relay_outbox WHERE expires_at <= ? RETURNING *", (now,)
        ).fetchall()
        return sorted((_entry(r) for r in rows), key=lambda e: e.id)

    @staticmethod
    def _log_expired(expired: list[OutboxEntry], now: float) -> None:
        for entry in expired:
            logger.warning(
                "relay outbox entry expired unsent: outbox_id=%d kind=%s request_id=%s"
                " platform=%s age_s=%.0f attempts=%d",
                entry.id,
                entry.kind,
                entry.request_id,
                entry.platform,
                now - entry.created_at,
                entry.attempts,
            )
