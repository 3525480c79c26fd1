"""Hooks into a state store, for tests of the store itself (not of an agent).

The state layer's interface (:class:`~relay_runtime._state.StateStore`) speaks in records and
hides how a store batches, commits and fails. A test of that machinery — group commit, the
bulk forms, write-behind, a disk that fills up, a server that goes away — needs to reach
below it: queue a raw operation, count batches, cap the file, see what the in-memory dedupe
window holds. These functions are the one place that does, so tests never read a store's
private attributes and the store can change inside without its tests changing::

    from relay_runtime.testing import cap_file, run_operation

    async with await StateDB.open(tmp_path, now=T0) as db:
        await cap_file(db)  # the next write that needs a page fails: disk full
        ...

Every function takes a store opened by :class:`~relay_runtime._state.StateDB` (SQLite) or,
where it says so, ``PgStateDB`` too. None of them changes what the store does, except the
faults they are named for.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio
import trio.testing

from relay_runtime._state._batch import _Op
from relay_runtime._state._records import _claim_keys

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from relay_runtime._dedupe import ClaimStatus
    from relay_runtime._state import MessageKey, StateDB
    from relay_runtime._state._batch import DB
    from relay_runtime._state._store import _Store


T = TypeVar("T")


async def run_operation(
    store: _Store,
    fn: Callable[[DB], T],
    bulk: Callable[[DB, list[Any]], list[Any]] | None = None,
    args: Any = None,
) -> T:
    """Run ``fn(conn)`` on the store's connection as one operation of its next batch (in a
    savepoint of its own, like every store call) and return its value; committed on return.

    With ``bulk``, neighbouring operations sharing it may run as ``bulk(conn, [args, ...])``
    instead (the store's bulk forms). Any store (SQLite or PostgreSQL).
    """
    return await store._run(fn, bulk, args)


def write_behind(store: _Store, fn: Callable[[DB], object]) -> None:
    """Queue ``fn(conn)`` as a written-behind record: committed with the next batch or by
    ``flush()``, kept and retried in order if it fails. Any store."""
    store._write_behind(_Op(fn))


def batch_running(store: _Store) -> bool:
    """Whether a batch is in the store's worker thread now. Any store."""
    return store._busy


async def between_batches(store: _Store) -> None:
    """Return once no batch is in the store's worker thread (at once if none is)."""
    while store._busy:
        await store._batch_over.wait()


@attrs.define
class BatchCount:
    """How many batches the store has taken to its worker thread since counting began."""

    batches: int = 0


def count_batches(store: _Store) -> BatchCount:
    """Count the batches the store runs from now on (closing's included). Any store."""
    count = BatchCount()
    lead = store._lead_batch

    async def counted() -> None:
        count.batches += 1
        await lead()

    store._lead_batch = counted  # type: ignore[method-assign]
    return count


def count_completion_bulks(store: _Store) -> list[int]:
    """From now on, append to the returned list the number of turn completions each run of
    the records' bulk form records (one entry per bulk run that records any). Any store."""
    from relay_runtime._state._turns import _Completion

    runs: list[int] = []
    bulk = store._record_in

    def counted(conn: DB, writes: Any) -> list[None]:
        completions = sum(isinstance(write, _Completion) for write in writes)
        if completions:
            runs.append(completions)
        return bulk(conn, writes)

    store._record_in = counted  # type: ignore[method-assign]
    return runs


def trace_commits(db: StateDB) -> list[str]:
    """From now on, append each ``COMMIT`` the SQLite store's connection runs to the returned
    list (one per transaction: a batch, or a recovery step)."""
    seen: list[str] = []
    conn: sqlite3.Connection = db._conn  # type: ignore[assignment]
    conn.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


async def cap_file(db: StateDB, pages: int | None = None) -> None:
    """Cap the SQLite file at ``pages`` pages (its current size when None): the next write
    that needs a page fails with ``SQLITE_FULL``, exactly as on a full disk; a higher cap is
    space coming back. Applied on the store's own connection between two batches (not
    through its queue, where records that failed go first)."""
    await trio.testing.wait_all_tasks_blocked()
    await between_batches(db)
    conn: sqlite3.Connection = db._conn  # type: ignore[assignment]
    size = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {size if pages is None else pages}")


def probe_connection(db: StateDB) -> None:
    """Run ``SELECT 1`` on the SQLite store's own connection, outside its queue: raises
    :class:`sqlite3.ProgrammingError` once the store has closed it. Call it between batches
    or after closing (the store's worker thread may be using the connection otherwise)."""
    conn: sqlite3.Connection = db._conn  # type: ignore[assignment]
    conn.execute("SELECT 1")


@contextlib.contextmanager
def redirect_reconnects(store: _Store, dsn: str) -> Iterator[None]:
    """While inside, a PostgreSQL store that lost its connection reconnects to ``dsn``
    (e.g. a closed port: the server is unreachable); on leaving, to its own server again."""
    conn = store._conn
    own = conn._dsn  # type: ignore[attr-defined]
    conn._dsn = dsn  # type: ignore[attr-defined]
    try:
        yield
    finally:
        conn._dsn = own  # type: ignore[attr-defined]


def claim_status(store: _Store, k_msg: MessageKey | None, k_buf: str | None) -> ClaimStatus:
    """What claiming a delivery with these keys would decide now, without claiming (the
    store's in-memory dedupe window, which decides every claim). Any store."""
    return store._dedupe.status(_claim_keys(k_msg, k_buf))


def window_keys(store: _Store) -> dict[str, ClaimStatus]:
    """Every key the store's in-memory dedupe window holds, with its claim's status. Any
    store."""
    window = store._dedupe
    return {key: window.status([key]) for key in window._by_key}
