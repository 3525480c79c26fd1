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

from trust._records import StoreError
from trust._store import core
from trust._store.base import SqlClientStore, wall_ms
from trust._store.schema import MIGRATION_LOCK_KEY, POSTGRES
from trust._store.tx import Row, Tx

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

POOL_SIZE = 4


class PgTx:
    """The :class:`~trust._store.tx.Tx` of one psycopg connection: what the store's
    transaction functions run on. Public so that tooling holding its own connection (and
    its own transaction) can run them there, e.g. ``core.run_op(PgTx(conn), ...)``."""

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
        self._dsn = dsn
        self._options = f"-c search_path={schema}" if schema else None
        try:
            for _ in range(size):
                conn = self._connect()
                self._all.append(conn)
                self._idle.put(conn)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"trust store unavailable: {exc}") from exc

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return self._psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=5, options=self._options
        )

    def _replace(
        self, conn: psycopg.Connection[tuple[object, ...]]
    ) -> psycopg.Connection[tuple[object, ...]]:
        """A fresh connection in place of a closed or broken one (a restart, a failover,
        ``pg_terminate_backend``); the dead one stays in the pool if connecting fails."""
        try:
            fresh = self._connect()
        except self._psycopg.Error as exc:
            raise StoreError(f"trust store unavailable: {exc}") from exc
        conn.close()
        self._all[self._all.index(conn)] = fresh
        return fresh

    def run_tx(self, fn: Callable[[Tx], T], write: bool) -> T:
        """See :meth:`trust._store.base.Backend.run_tx`.

        A dead connection is replaced before use. A transaction whose connection dies
        before its commit (the server rolled it back) runs once more on a fresh one; a
        failure during the commit itself is not retried (it may have committed).
        """
        psycopg = self._psycopg
        conn = self._idle.get_nowait()  # the limiter guarantees one is idle
        try:
            for attempt in (1, 2):
                if conn.broken or conn.closed:
                    conn = self._replace(conn)
                committing = False
                try:
                    with conn.transaction():
                        result = fn(PgTx(conn))
                        committing = True
                    return result
                except psycopg.OperationalError:
                    if attempt == 2 or committing or not (conn.broken or conn.closed):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except psycopg.errors.UniqueViolation as exc:
            raise StoreError(f"trust store conflict: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"trust store error: {exc}") from exc
        finally:
            self._idle.put(conn)

    def server_pids(self) -> list[int]:
        """The PostgreSQL server process id of each pooled connection (``pid`` in
        ``pg_stat_activity``), to find this instance's sessions on the server."""
        return [conn.info.backend_pid for conn in self._all]

    def close(self) -> None:
        """See :meth:`trust._store.base.Backend.close`."""
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
        await store.transaction(_migrate_locked)
    except BaseException:
        backend.close()
        raise
    return store
