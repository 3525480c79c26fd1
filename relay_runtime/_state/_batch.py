"""One batch of the state db, as the worker thread runs it: one transaction, a savepoint
per operation (or per run of operations that share a bulk form), one commit.

The SQL is written once, for SQLite's ``sqlite3`` connection; a PostgreSQL store hands in
a connection with the same calls (:class:`DB`) that renders it for its server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence


class Cursor(Protocol):
    """What the state layer reads from a statement's result."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class DB(Protocol):
    """The connection calls the state layer makes (``sqlite3.Connection`` has them).

    Rows are read by position and by column name; ``BEGIN IMMEDIATE`` starts a write
    transaction.
    """

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...

    def close(self) -> None: ...


#: A row as the state layer reads it: by position or by column name.
Row = Any

#: Rows one bulk statement touches at most (each takes a few of SQLite's bound parameters).
BULK_ROWS: Final = 200

T = TypeVar("T")


@attrs.define(eq=False)
class _Op:
    """One queued database operation and, once its batch ran, its result or error."""

    #: What it does; ``None``: ``bulk`` run for this operation alone.
    fn: Callable[[DB], Any] | None
    #: Runs a run of neighbouring operations with the same ``bulk`` in fewer statements,
    #: with the same effects as running their ``fn`` one after another; it gets their
    #: ``args`` and returns their values in order.
    bulk: Callable[[DB, list[Any]], list[Any]] | None = None
    args: Any = None
    #: Records a decision already made in memory: it runs even if its caller stops waiting.
    keep: bool = False
    #: Nobody waits for it (write-behind, or its caller was cancelled): errors are logged.
    orphan: bool = False
    #: Only reads: its success says nothing about whether writes work again.
    read: bool = False
    taken: bool = False
    done: bool = False
    value: Any = None
    error: BaseException | None = None

    def run(self, conn: DB) -> None:
        """Run ``fn`` (or ``bulk`` for its ``args``) alone, keeping its value."""
        if self.fn is not None:
            self.value = self.fn(conn)
        else:
            assert self.bulk is not None
            [self.value] = self.bulk(conn, [self.args])


def _run_batch(conn: DB, ops: list[_Op]) -> None:
    """Run ``ops`` in order as one transaction, each in its own savepoint; commit once.

    Runs in the worker thread. An operation that raises is rolled back to its savepoint and
    keeps its error; the others still commit, unless it was written behind (nobody waits
    for it): then the whole batch fails, so the file never holds what followed a record it
    lacks. Neighbouring operations that share a ``bulk``
    run together in one savepoint; if that fails they run again one by one, so an error
    stays with its own operation. If the transaction itself fails (BEGIN, COMMIT, or an
    error that aborted it), every operation gets that error and nothing is committed.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        # A flush's empty operation needs no savepoint, and must not cut a run in two.
        for group in _runs([op for op in ops if op.fn is not _nothing]):
            if len(group) > 1 and _run_bulk(conn, group):
                continue
            for op in group:
                op.error = _in_savepoint(conn, op.run)
                if op.error is not None and op.orphan:
                    # A decision the window already made: the file may not skip it and
                    # keep what came after. Abort the batch; it is retried whole.
                    raise op.error
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        for op in ops:
            op.value, op.error = None, exc
    for op in ops:
        op.done = True


def _runs(ops: list[_Op]) -> list[list[_Op]]:
    """``ops`` cut into runs of neighbours with the same ``bulk`` (None never groups)."""
    runs: list[list[_Op]] = []
    for op in ops:
        if runs and op.bulk is not None and op.bulk == runs[-1][0].bulk:
            runs[-1].append(op)
        else:
            runs.append([op])
    return runs


def _run_bulk(conn: DB, group: list[_Op]) -> bool:
    """Run ``group`` with its ``bulk`` in one savepoint; False if it has none or it failed."""
    bulk = group[0].bulk
    if bulk is None:
        return False
    values: list[Any] = []

    def run(conn: DB) -> None:
        values.extend(bulk(conn, [op.args for op in group]))

    if _in_savepoint(conn, run) is not None:
        return False
    for op, value in zip(group, values, strict=True):
        op.value = value
    return True


def _in_savepoint(conn: DB, work: Callable[[DB], None]) -> Exception | None:
    """Run ``work`` in a savepoint; on an error roll back to it and return the error."""
    conn.execute("SAVEPOINT relay_op")
    error: Exception | None = None
    try:
        work(conn)
    except Exception as exc:
        if not conn.in_transaction:
            raise  # SQLite aborted the whole transaction: the batch failed
        conn.execute("ROLLBACK TO relay_op")
        error = exc
    conn.execute("RELEASE relay_op")
    return error


def _nothing(conn: DB) -> None:
    """An operation with no effect: waiting for it commits everything queued before it."""


def chunks(items: Sequence[T], size: int = BULK_ROWS) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
