"""The default store: trust tables in the state directory's SQLite database (TR §3).

WAL, ``synchronous=FULL``, ``busy_timeout=5000``, file mode 0600; writes take
``BEGIN IMMEDIATE`` so the re-read under a write is the row that gets written. One
connection, used by one worker thread at a time (``CapacityLimiter(1)``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import trio

from trust._records import StoreError
from trust._store import core
from trust._store.base import SqlClientStore, wall_ms
from trust._store.schema import SQLITE
from trust._store.tx import Row, Tx

T = TypeVar("T")

DB_FILENAME: Final = "relay.db"
"""The state directory's database file (shared with the runtime's state tables)."""
_DB_SUFFIXES: Final = (".db", ".sqlite", ".sqlite3")


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.dialect = SQLITE
        self._conn = conn

    def rows(self, sql: str, *params: object) -> list[Row]:
        return list(self._conn.execute(sql, params).fetchall())

    def run(self, sql: str, *params: object) -> int:
        return self._conn.execute(sql, params).rowcount


class SqliteBackend:
    """One SQLite connection in autocommit mode with explicit transactions."""

    def __init__(
        self, path: Path, *, factory: type[sqlite3.Connection] = sqlite3.Connection
    ) -> None:
        """Open (creating, mode 0600) the database at ``path`` in WAL mode.

        ``factory`` is the connection class (``sqlite3.connect``'s ``factory``): a subclass
        can trace statements or, in tests, fail a commit the way a full disk does.
        """
        self.dialect = SQLITE
        self.limiter = trio.CapacityLimiter(1)
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=5.0, factory=factory
        )
        try:
            self._conn.execute("PRAGMA busy_timeout = 5000")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{path}: could not switch SQLite to WAL mode (got {mode})")
            self._conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            self._conn.close()
            raise

    def run_tx(self, fn: Callable[[Tx], T], write: bool) -> T:
        """See :meth:`trust._store.base.Backend.run_tx`."""
        try:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise StoreError(f"trust store unavailable: {exc}") from exc
        try:
            result = fn(_SqliteTx(self._conn))
        except sqlite3.Error as exc:
            self._conn.rollback()
            raise StoreError(f"trust store error: {exc}") from exc
        except BaseException:
            self._conn.rollback()
            raise
        try:
            self._conn.commit()
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.rollback()  # else the next BEGIN fails: the connection is shared
            raise StoreError(f"trust store commit failed: {exc}") from exc
        return result

    def close(self) -> None:
        """See :meth:`trust._store.base.Backend.close`."""
        self._conn.close()


async def open_sqlite_store(
    location: str | os.PathLike[str], clock: Callable[[], int] = wall_ms
) -> SqlClientStore:
    """The store in ``location``: a state directory (its ``relay.db``, created with the
    directory when missing) or a database file (an existing file, or a ``.db`` name).

    Creates the file (mode 0600) and migrates the trust tables. Close with ``aclose()``.
    """

    def connect() -> SqliteBackend:
        path = Path(location)
        if not (path.is_file() or path.suffix in _DB_SUFFIXES):
            path = path / DB_FILENAME
        try:
            # A new state directory is private, as the runtime creates it (it holds secrets).
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return SqliteBackend(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open trust store {path}: {exc}") from exc

    backend = await trio.to_thread.run_sync(connect)
    store = SqlClientStore(backend, clock)
    try:
        await store.transaction(core.migrate)
    except BaseException:
        backend.close()
        raise
    return store
