"""The group-commit engine: one worker thread, one transaction per batch.

The database is only ever touched from a worker thread, one batch at a time, so the single
connection is used by one thread at a time and the trio loop never waits on disk. Every
public coroutine queues one short operation; calls made while a batch is running are
committed together (group commit): the first caller to find no batch running (or, when one
is running, the first caller queued behind it, once it ends) takes the whole queue to the
worker thread in one hop and runs it as ONE transaction, each operation in its
own ``SAVEPOINT`` (a failing operation rolls back alone and raises to its own caller), then
commits once and wakes every caller with its own result. Unless said otherwise, an
operation's effects are committed before its coroutine returns; a caller cancelled after its
batch started still waits for the (short) commit, and one cancelled while still queued is
not run at all.

The exceptions are records of decisions the in-memory dedupe window (dedupe.py) has already
made: claims, and completions nobody acks. They are written behind: queued in decision
order, committed with the next batch or by :meth:`_Engine.flush` (the dispatcher commits
them within 50 ms), never dropped when a caller is cancelled, committed at close, and if
one fails, its batch fails and they are retried whole, in order. A storage failure (disk
full, I/O error) opens an episode the gateway watches (:meth:`_Engine.wait_failing`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import trio

from relay_runtime._state._batch import _nothing, _Op, _run_batch
from relay_runtime._state._records import StateError
from relay_runtime._state._schema import BUSY_TIMEOUT_MS

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay_runtime._state._batch import DB

logger = logging.getLogger("relay_runtime.state")

T = TypeVar("T")

#: How long closing waits for a database call already running in the worker thread.
CLOSE_WAIT_S: Final = 4 * BUSY_TIMEOUT_MS / 1000
#: Tries, and the first pause between them (doubling), to commit written-behind records at
#: close while storage fails; then they are given up so the process can end (bounded).
CLOSE_RETRIES: Final = 3
CLOSE_RETRY_S: Final = 0.1
#: SQLite primary result codes that mean the storage, not the statement, failed.
_STORAGE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_NOLFS,
    }
)


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the storage failing: the disk (full, I/O error, file-size limit,
    read-only) or the database server (connection lost or refused)."""
    if isinstance(exc, OSError):
        return True
    psycopg = sys.modules.get("psycopg")  # loaded only with a PostgreSQL store
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in _STORAGE_CODES


class _OneBatchAtATime:
    """The thread limiter of the engine's worker-thread calls.

    They never overlap (one batch at a time, ``_Engine._busy``), so there is nothing to
    wait for; trio's default limiter would also yield to the scheduler on every call (a
    task step per batch) and take a cancellation there. A ``CapacityLimiter`` as
    ``trio.to_thread.run_sync`` uses one, and as an async context manager.
    """

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        """Take the token: at once, without a checkpoint."""

    def release_on_behalf_of(self, borrower: object) -> None:
        """Give the token back."""

    async def __aenter__(self) -> None:
        """Take the token (as ``async with``)."""

    async def __aexit__(self, *exc_info: object) -> None:
        """Give the token back (as ``async with``)."""


#: What the engine's worker-thread calls are limited by (see :class:`_OneBatchAtATime`).
_ONE_BATCH_AT_A_TIME: Final = cast("trio.CapacityLimiter", _OneBatchAtATime())


class _Engine:
    """The batch queue and storage-failure watch of :class:`~relay_runtime._state.StateDB`."""

    #: The driver's errors, raised to callers as :class:`StateError`.
    _db_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, conn: DB, location: str, lock_fd: int | None) -> None:
        self._conn = conn
        self._lock_fd = lock_fd
        self._queue: list[_Op] = []
        self._busy = False  # a batch is in the worker thread
        #: Set once the batch that takes the operations queued now has run.
        self._queue_done = trio.Event()
        #: Set once the running batch (between batches: the next one) has run.
        self._batch_over = self._queue_done
        #: The ``_queue_done`` of the queue a caller waits to lead as soon as the running
        #: batch ends (``None``: no caller does).
        self._leader_for: trio.Event | None = None
        self._queued = trio.Event()  # set when written-behind records are queued
        #: Why the oldest written-behind record still queued failed its last commit.
        self._behind_error: BaseException | None = None
        #: When (trio clock) the current storage-failure episode began; None: writes work.
        self.failing_since: float | None = None
        #: What failed first in the current (or last) episode.
        self.failure_cause: str | None = None
        self._failing = trio.Event()
        self._recovered = trio.Event()
        self._recovered.set()
        self._closed = False
        self._location = location

    @property
    def location(self) -> str:
        """Where the state lives, for messages: the database file's path, or the server's
        address without its password."""
        return self._location

    async def aclose(self) -> None:
        """Close the connection (idempotent), even when the caller is being cancelled.

        A call already running in the worker thread is waited for (shielded, bounded), so
        the connection is never closed under it and never left open.
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_WAIT_S) as waited:
                # Operations queued before closing still run: their callers lead batches,
                # and written-behind records are committed here, with a few tries (backing
                # off) while storage fails; then they are given up, so closing is bounded.
                tries = 0
                while self._busy or self._queue:
                    if self._busy:
                        await self._batch_over.wait()
                        continue
                    await self._lead_batch()
                    if self._behind_error is None:
                        continue
                    tries += 1
                    if tries >= CLOSE_RETRIES:
                        self._give_up_behind()
                        break
                    await trio.sleep(CLOSE_RETRY_S * 2 ** (tries - 1))
                await trio.to_thread.run_sync(self._conn.close, limiter=_ONE_BATCH_AT_A_TIME)
                if self._lock_fd is not None:
                    os.close(self._lock_fd)  # the next gateway on this state dir may start
        if waited.cancelled_caught:
            # Only a worker thread stuck far past the busy timeout gets here.
            logger.warning(
                "relay state: a database call outlived %g s; connection left to the GC",
                CLOSE_WAIT_S,
            )

    async def _run(
        self,
        fn: Callable[[DB], T] | None,
        bulk: Callable[[DB, list[Any]], list[Any]] | None = None,
        args: Any = None,
        *,
        keep: bool = False,
        read: bool = False,
    ) -> T:
        """Run ``fn(conn)`` in the worker thread; its effects are committed on return.
        (``fn`` ``None``: ``bulk(conn, [args])`` for this call alone.)

        ``fn`` shares a transaction with the other operations of its batch, in a savepoint
        of its own. With ``bulk``, neighbouring calls of the same kind may run as
        ``bulk(conn, [args, ...])`` instead (see :class:`_Op`). A ``keep`` operation
        records a decision the in-memory window already made: if its caller is cancelled
        before it runs, it stays queued (and commits with the next batch) instead of being
        dropped.
        """
        if self._closed:
            raise StateError("state database is closed")
        if not keep:
            await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: do not run
        op = _Op(fn, bulk, args, keep=keep, read=read)
        self._queue.append(op)
        try:
            # Each caller wakes once per batch it needs: when its operation's batch has run,
            # except the first one queued behind a running batch, which wakes when that
            # batch ends and takes the queue to the thread (the queue's other callers wake
            # only when that has run).
            while not op.done:
                if not self._busy:
                    await self._lead_batch()
                elif op.taken:
                    await self._batch_over.wait()
                elif self._leader_for is self._queue_done:
                    await self._queue_done.wait()
                else:
                    await self._wait_to_lead()
        except trio.Cancelled:
            if not op.taken:
                if op.keep:
                    op.orphan = True
                    self._queued.set()
                else:
                    self._queue.remove(op)
                raise
            # Already in a running batch: wait for its commit, so the caller's effects are
            # known committed (or failed). The cancel reaches it at its next checkpoint.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_WAIT_S):
                while not op.done:
                    await self._batch_over.wait()
            if not op.done:
                raise
        if op.error is not None:
            if isinstance(op.error, self._db_errors):
                raise StateError(f"state database {self.location!r}: {op.error}") from op.error
            raise op.error
        return op.value  # type: ignore[no-any-return]

    async def _wait_to_lead(self) -> None:
        """Wait for the running batch to end, as the caller that leads the next one."""
        queue_done = self._leader_for = self._queue_done
        try:
            await self._batch_over.wait()
        except BaseException:
            if self._queue_done is queue_done:
                # Cancelled, and nobody took the queue since: its callers wake to choose
                # another leader.
                queue_done.set()
                self._queue_done = trio.Event()
                if not self._busy:
                    self._batch_over = self._queue_done
            raise
        finally:
            if self._leader_for is queue_done:
                self._leader_for = None

    async def _lead_batch(self) -> None:
        """Take every queued operation to the worker thread as one batch; wake all waiters.

        Raises ``Cancelled`` only before it takes anything.
        """
        # Once taken, the batch (other callers' operations too) must run whatever happens
        # to its leader. No cancel scope shields it: trio.to_thread.run_sync checks for a
        # cancellation on entry only, which this does first with nothing in between to
        # change the answer, then ignores it until the thread returns (it may not abandon
        # the thread); its limiter here never waits.
        await trio.lowlevel.checkpoint_if_cancelled()
        batch, self._queue = self._queue, []
        over = self._batch_over = self._queue_done
        self._queue_done = trio.Event()
        for op in batch:
            op.taken = True
        self._busy = True
        try:
            await trio.to_thread.run_sync(
                _run_batch, self._conn, batch, limiter=_ONE_BATCH_AT_A_TIME
            )
        finally:
            self._busy = False
            self._batch_over = self._queue_done
            over.set()
        self._after_batch(batch)
        failed: list[_Op] = []
        storage: BaseException | None = None  # the first storage failure
        kept_error: BaseException | None = None  # the first error of a kept record
        behind = wrote = False  # written-behind records, writes, among those that worked
        for op in batch:
            error = op.error
            if error is None:
                behind = behind or op.orphan
                wrote = wrote or not op.read
                continue
            if storage is None and is_storage_error(error):
                storage = error
            if not op.keep:
                continue
            kept_error = kept_error or error
            if op.orphan:
                failed.append(op)
            else:
                # Its caller gets the error, and the decision is still recorded: a copy
                # nobody waits for is kept to retry like a written-behind record.
                failed.append(_Op(op.fn, op.bulk, op.args, keep=True, orphan=True))
        if failed:
            # Kept, in order, ahead of everything queued since: the file must not skip a
            # decision the window made. flush() reports the failure until a retry succeeds;
            # the awaited operations of the batch failed with it (raised to their callers).
            error = kept_error
            assert error is not None
            self._behind_error = error
            for op in failed:
                op.taken = op.done = False
                op.value = op.error = None
            self._queue[:0] = failed
            self._queued.set()
            self._storage_failed(storage or error, len(failed))
        else:
            if behind:
                self._behind_error = None
            if storage is not None:
                self._storage_failed(storage, 0)
            elif wrote:
                self._storage_ok()

    def _after_batch(self, batch: list[_Op]) -> None:
        """Look at a batch's outcome before it is sorted out (a store may watch for an
        error of its own)."""

    def _storage_failed(self, error: BaseException, kept: int) -> None:
        """A write failed: one ERROR opens an episode (with its cause); repeats are DEBUG."""
        cause = f"{type(error).__name__}: {error}"
        if self.failing_since is not None:
            logger.debug("relay state: still failing (%s)", cause)
            return
        self.failing_since = trio.current_time()
        self.failure_cause = cause
        self._recovered = trio.Event()
        self._failing.set()
        logger.error(
            "relay state: writing the state database failed (%s); %d record(s) kept and "
            "retried with backoff; nothing is acked until they are committed",
            cause,
            kept,
        )

    def _storage_ok(self) -> None:
        """A write committed: an open failure episode ends (one WARNING)."""
        if self.failing_since is None:
            return
        logger.warning(
            "relay state: the state database is writable again after %.1f s",
            trio.current_time() - self.failing_since,
        )
        self.failing_since = None
        self._failing = trio.Event()
        self._recovered.set()

    def _give_up_behind(self) -> None:
        """At close, with storage failing: drop the written-behind records still queued."""
        behind = [op for op in self._queue if op.orphan]
        self._queue = [op for op in self._queue if not op.orphan]
        logger.error(
            "relay state: %d written-behind record(s) not committed at close (%s); live "
            "messages they admitted are lost, buffered ones will be replayed",
            len(behind),
            self.failure_cause or self._behind_error,
        )

    async def wait_failing(self) -> None:
        """Wait until a storage-failure episode is open."""
        await self._failing.wait()

    async def wait_recovered(self) -> None:
        """Wait until no storage-failure episode is open."""
        await self._recovered.wait()

    async def flush(self) -> None:
        """Commit everything queued so far (written-behind records included).

        Raises :class:`StateError` while a written-behind record could not be committed
        (it stays queued and is retried with every batch): nothing that depends on it, an
        ``inbound_ack`` above all, may go out.
        """
        if not self._queue:
            if self._busy:  # the running batch may hold written-behind records
                await self._batch_over.wait()
            else:
                await trio.lowlevel.checkpoint()
        else:
            await self._run(_nothing, read=True)
        if self._behind_error is not None:
            raise StateError(
                f"state database {self.location!r}: records written behind are not "
                f"committed: {self._behind_error}"
            ) from self._behind_error

    async def wait_queued(self) -> None:
        """Wait until written-behind records are waiting for a commit."""
        while not any(op.orphan for op in self._queue):
            await self._queued.wait()
            self._queued = trio.Event()

    def _write_behind(self, op: _Op) -> None:
        if self._closed:
            raise StateError("state database is closed")
        op.keep = op.orphan = True
        self._queue.append(op)
        self._queued.set()
