"""The PostgreSQL store: :class:`PgStateDB`, a gateway's state in a shared database.

Everything but the connection is the SQLite store's: the same records, the same in-memory
dedupe decisions, the same group commit (one transaction per batch, so no round trip per
message is waited for by a turn), the same SQL (``_pg_schema`` says how), the same
storage-failure episodes (a dropped connection is one; the next batch reconnects). With a
:class:`~relay_runtime._state._lease.Lease`, every transaction is fenced by its token.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

import psycopg
import trio

from relay_runtime._state._dsn import redact_dsn
from relay_runtime._state._lease import Lease, LeaseSql
from relay_runtime._state._pg_schema import PgConnection
from relay_runtime._state._records import LeaseLost
from relay_runtime._state._store import _Store, check_sizes

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay_runtime._state._batch import _Op


class PgStateDB(_Store):
    """One gateway's state in PostgreSQL. Open with :meth:`open`; use as ``async with``."""

    _db_errors = (psycopg.Error,)
    _put_reply_key_sql: ClassVar[str] = (
        "INSERT INTO relay_meta (name, value) VALUES ('reply_key', ?)"
        " ON CONFLICT (gateway_id, name) DO UPDATE SET value = excluded.value"
    )
    _put_meta_sql: ClassVar[str] = (
        "INSERT INTO relay_meta (name, value) VALUES (?, ?)"
        " ON CONFLICT (gateway_id, name) DO UPDATE SET value = excluded.value"
    )
    _lease: Lease | None = None

    @classmethod
    async def open(
        cls,
        dsn: str,
        gateway_id: str,
        *,
        now: float,
        location: str,
        lease: Lease | None = None,
        outbox_max: int = 1000,
        outbox_ttl_s: float = 86400,
        dedupe_window_s: float = 86400,
        dedupe_max: int = 10000,
        turns_max: int = 100_000,
    ) -> PgStateDB:
        """Connect to ``dsn`` (``location`` is how messages name it: without a password),
        create or migrate the tables, and recover ``gateway_id``'s state after a crash,
        as :meth:`StateDB.open <relay_runtime._state.StateDB.open>` does.

        With ``lease`` (held), its token fences every transaction, recovery included.
        """
        check_sizes(
            outbox_max,
            outbox_ttl_s=outbox_ttl_s,
            dedupe_window_s=dedupe_window_s,
            dedupe_max=dedupe_max,
            turns_max=turns_max,
        )
        fence = None if lease is None else lease.fence_token
        conn = await trio.to_thread.run_sync(PgConnection, dsn, gateway_id, location, fence)
        try:
            loaded = await cls._opened(conn, location, now, dedupe_window_s, dedupe_max)
        except BaseException:
            conn.close()
            raise
        db = cls(
            conn,
            location,
            outbox_max=outbox_max,
            outbox_ttl_s=outbox_ttl_s,
            dedupe_window_s=dedupe_window_s,
            dedupe_max=dedupe_max,
            turns_max=turns_max,
            **loaded,
        )
        db._lease = lease
        return db

    def _after_batch(self, batch: list[_Op]) -> None:
        """A batch refused by the fence: the lease is lost (the gateway stops serving)."""
        lost = next((op.error for op in batch if isinstance(op.error, LeaseLost)), None)
        if lost is not None and self._lease is not None:
            self._lease.mark_lost(str(lost))


async def open_leased(
    stack: contextlib.AsyncExitStack,
    dsn: str,
    gateway_id: str,
    *,
    now: Callable[[], float],
    lease_ttl_s: float,
    **sizes: Any,
) -> tuple[PgStateDB, Lease]:
    """Take ``gateway_id``'s lease (waiting as a standby while another process holds it),
    then open its state fenced by the lease; both closed by ``stack`` (the state first,
    then the lease is released, so a standby takes over at once).

    ``now`` is read once the lease is held (recovery ends what was running then).
    Raises :class:`StateError` when the database cannot be used.
    """
    location = redact_dsn(dsn)
    lease = Lease(LeaseSql(dsn, gateway_id, location), ttl_s=lease_ttl_s)
    await lease.acquire()
    stack.push_async_callback(lease.release)
    db = await PgStateDB.open(dsn, gateway_id, now=now(), location=location, lease=lease, **sizes)
    await stack.enter_async_context(db)
    return db, lease
