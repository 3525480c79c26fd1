"""The multi-instance store: the same trust tables in PostgreSQL (TR §3).

psycopg 3 (sync) in worker threads over a bounded set of connections (4 by default, the
``CapacityLimiter`` is the pool size, so a thread always finds a free connection). Row
reads in write transactions take ``SELECT ... FOR UPDATE``; migrations run under a
transaction-scoped advisory lock so instances starting together migrate once.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from trust.records import StoreError
from trust.store import core
from trust.store.base import SqlClientStore, wall_ms
from trust.store.core import Row, Tx
from trust.store.schema import MIGRATION_LOCK_KEY, POSTGRES

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

POOL_SIZE = 4


class _PgTx:
    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self.dialect = POSTGRES
        self._conn = conn

    def rows(self, sql: str, *params: object) -> list[Row]:
        cur = self._conn.execute(self.dialect.sql(sql).encode(), params)
        return list(cur.fetchall()) if cur.description is not None else []

    def run(self, sql: str, *params: object) -> int:
        return self._conn.execute(self.dialect.sql(sql).encode(), params).rowcount


class PostgresBackend:
    """A fixed set of connections handed out to worker threads."""

    def __init__(self, dsn: str, *, schema: str | None = None, size: int = POOL_SIZE) -> None:
        import psycopg

        self._psycopg = psycopg
        self.dialect = POSTGRES
        self.limiter = trio.CapacityLimiter(size)
        self._idle: queue.LifoQueue[psycopg.Connection[tuple[object, ...]]] = queue.LifoQueue()
        self._all: list[psycopg.Connection[tuple[object, ...]]] = []
        options = f"-c search_path={schema}" if schema else None
        try:
            for _ in range(size):
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5, options=options)
                self._all.append(conn)
                self._idle.put(conn)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"trust store unavailable: {exc}") from exc

    def run_tx(self, fn: Callable[[Tx], T], write: bool) -> T:
        """See :meth:`trust.store.base.Backend.run_tx`."""
        psycopg = self._psycopg
        conn = self._idle.get_nowait()  # the limiter guarantees one is idle
        try:
            if conn.broken or conn.closed:
                raise StoreError("trust store connection lost")
            with conn.transaction():
                return fn(_PgTx(conn))
        except psycopg.errors.UniqueViolation as exc:
            raise StoreError(f"trust store conflict: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"trust store error: {exc}") from exc
        finally:
            self._idle.put(conn)

    def close(self) -> None:
        """See :meth:`trust.store.base.Backend.close`."""
        for conn in self._all:
            conn.close()


def _migrate_locked(tx: Tx) -> int:
    tx.rows("SELECT pg_advisory_xact_lock(?)", MIGRATION_LOCK_KEY)
    return core.migrate(tx)


async def open_postgres_store(
    dsn: str,
    *,
    schema: str | None = None,
    size: int = POOL_SIZE,
    clock: Callable[[], int] = wall_ms,
) -> SqlClientStore:
    """The store at ``dsn`` (``RELAY_TRUST_DSN``), tables in ``schema`` or the search path.

    Migrates under an advisory lock. Close with ``aclose()``.
    """
    backend = await trio.to_thread.run_sync(lambda: PostgresBackend(dsn, schema=schema, size=size))
    store = SqlClientStore(backend, clock)
    try:
        await store._call(_migrate_locked)
    except BaseException:
        backend.close()
        raise
    return store
