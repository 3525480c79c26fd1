"""The durable state database: reply outbox, turn results and the replay-dedupe window.

Everything lives in one SQLite file, ``<state_dir>/relay.db`` (WAL, ``synchronous=FULL``,
mode 0600). Our tables are prefixed ``relay_``; the trust store keeps its own ``trust_``
tables in the same file.

The database is only ever touched from a worker thread, one batch at a time, so the single
connection is used by one thread at a time and the trio loop never waits on disk. Every
public coroutine queues one short operation; calls made while a batch is running are
committed together (group commit): the first caller to find no batch running takes the whole
queue to the worker thread in one hop and runs it as ONE transaction, each operation in its
own ``SAVEPOINT`` (a failing operation rolls back alone and raises to its own caller), then
commits once and wakes every caller with its own result. An operation's effects are
committed before its coroutine returns. Operations are not abandoned on cancellation: a
caller cancelled after its batch started still waits for the (short) commit, so "committed"
never becomes "maybe committed"; one cancelled while still queued is not run at all.

No wall clock is read in here: every time-dependent call takes ``now`` (seconds, any epoch
the caller uses consistently; the runtime passes ``time.time()``).
"""

from __future__ import annotations

import enum
import errno
import json
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "DB_FILENAME",
    "FOLLOW_UP_TTL_S",
    "OUTBOX_MAX_ATTEMPTS",
    "SCHEMA_VERSION",
    "TURN_END_STATES",
    "TURN_RESULT_TTL_S",
    "Attempt",
    "ClaimHandle",
    "ClaimRequest",
    "ClaimResult",
    "ClaimStatus",
    "MessageKey",
    "OutboxEntry",
    "OutboxFull",
    "OutboxKind",
    "StateDB",
    "StateError",
    "TurnEndState",
    "TurnRecord",
    "TurnState",
]

logger = logging.getLogger(__name__)

DB_FILENAME: Final = "relay.db"
#: A ``follow_up`` is bound to the connector's interaction vault, which forgets it after 15 min.
FOLLOW_UP_TTL_S: Final = 15 * 60
#: Deliveries of one outbox entry that may fail (drop/timeout) before it is given up.
OUTBOX_MAX_ATTEMPTS: Final = 5
#: How long a finished turn's result is kept.
TURN_RESULT_TTL_S: Final = 24 * 3600
BUSY_TIMEOUT_MS: Final = 5000
_SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")
#: How long closing waits for a database call already running in the worker thread.
CLOSE_WAIT_S: Final = 4 * BUSY_TIMEOUT_MS / 1000
#: Rows one bulk statement touches at most (each takes a few of SQLite's bound parameters).
BULK_ROWS: Final = 200

OutboxKind = Literal["send", "follow_up"]
TurnEndState = Literal["completed", "failed", "interrupted", "denied", "cancelled"]
TurnState = Literal[
    "running", "completed", "failed", "interrupted", "denied", "cancelled", "crashed"
]
#: States a caller may finish a turn with (``crashed`` is only set by crash recovery).
TURN_END_STATES: Final[frozenset[str]] = frozenset(
    {"completed", "failed", "interrupted", "denied", "cancelled"}
)
#: ``K_msg`` of RC §4.6: ``(platform_raw, chat_id, message_id)``.
MessageKey = tuple[str, str, str]

T = TypeVar("T")


class StateError(Exception):
    """The state database cannot be used (unreadable, newer schema, bad argument)."""


class OutboxFull(StateError):
    """The outbox holds ``outbox_max`` entries; the new request was not accepted."""

    def __init__(self, outbox_max: int) -> None:
        super().__init__(f"relay outbox full (outbox_max={outbox_max})")
        self.outbox_max = outbox_max


@attrs.frozen
class OutboxEntry:
    """One queued ``send``/``follow_up``, as committed."""

    id: int
    platform: str
    bot_id: str
    action_json: str
    request_id: str
    kind: OutboxKind
    created_at: float
    expires_at: float
    attempts: int


@attrs.frozen
class Attempt:
    """The outcome of :meth:`StateDB.bump_attempts`."""

    attempts: int
    #: True when this failure used up the last attempt and the entry was deleted.
    dropped: bool


class ClaimStatus(enum.Enum):
    """What :meth:`StateDB.claim` found for a delivery."""

    NEW = "new"  # nothing known: the caller owns the new claim and runs the turn
    IN_FLIGHT = "in_flight"  # the same delivery is running now: do not run
    COMPLETED = "completed"  # already handled within the window: do not run, ack at once


@attrs.frozen
class ClaimHandle:
    """Names one claim row; for ``NEW`` it is the caller's own claim."""

    claim_id: int


@attrs.frozen
class ClaimResult:
    """Status of a delivery, and the claim it maps to (``None`` when it has no keys)."""

    status: ClaimStatus
    handle: ClaimHandle | None


@attrs.frozen
class ClaimRequest:
    """One delivery to claim in :meth:`StateDB.claim_turns`: its session and its keys."""

    session_key: str
    k_msg: MessageKey | None
    k_buf: str | None


@attrs.frozen
class _Completion:
    """The arguments of one :meth:`StateDB.complete_turn`."""

    handle: ClaimHandle | None
    turn_id: int | None
    state: TurnEndState
    now: float
    error: str | None


@attrs.frozen
class TurnRecord:
    """One turn's recorded start and end."""

    turn_id: int
    session_key: str
    k_msg: MessageKey | None
    k_buf: str | None
    state: TurnState
    started_at: float
    ended_at: float | None
    error: str | None


# Forward-only migrations: index i upgrades schema version i to i + 1. Never edit a shipped
# entry; append a new one.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE relay_outbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        platform    TEXT    NOT NULL,
        bot_id      TEXT    NOT NULL,
        action_json TEXT    NOT NULL,
        request_id  TEXT    NOT NULL,
        kind        TEXT    NOT NULL CHECK (kind IN ('send', 'follow_up')),
        created_at  REAL    NOT NULL,
        expires_at  REAL    NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX relay_outbox_expires ON relay_outbox (expires_at);

    CREATE TABLE relay_turns (
        turn_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        session_key TEXT    NOT NULL,
        k_msg       TEXT,
        k_buf       TEXT,
        state       TEXT    NOT NULL,
        started_at  REAL    NOT NULL,
        ended_at    REAL,
        error       TEXT
    );
    CREATE INDEX relay_turns_state ON relay_turns (state);
    CREATE INDEX relay_turns_ended ON relay_turns (ended_at);

    CREATE TABLE relay_dedupe_claims (
        claim_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        state        TEXT    NOT NULL CHECK (state IN ('in_flight', 'completed')),
        created_at   REAL    NOT NULL,
        completed_at REAL
    );
    CREATE INDEX relay_dedupe_claims_state ON relay_dedupe_claims (state, completed_at);

    CREATE TABLE relay_dedupe_keys (
        key      TEXT    PRIMARY KEY,
        claim_id INTEGER NOT NULL REFERENCES relay_dedupe_claims (claim_id)
    ) WITHOUT ROWID;
    CREATE INDEX relay_dedupe_keys_claim ON relay_dedupe_keys (claim_id);
    """,
    # 1 -> 2: the number of completed claims, kept by triggers in the same transaction as
    # the change, so trimming to ``dedupe_max`` does not count the window on every completion.
    """
    CREATE TABLE relay_dedupe_count (completed INTEGER NOT NULL);
    INSERT INTO relay_dedupe_count (completed)
        SELECT count(*) FROM relay_dedupe_claims WHERE state = 'completed';
    CREATE TRIGGER relay_dedupe_count_insert AFTER INSERT ON relay_dedupe_claims
        WHEN new.state = 'completed'
        BEGIN UPDATE relay_dedupe_count SET completed = completed + 1; END;
    CREATE TRIGGER relay_dedupe_count_update AFTER UPDATE OF state ON relay_dedupe_claims
        WHEN (new.state = 'completed') <> (old.state = 'completed')
        BEGIN
            UPDATE relay_dedupe_count
            SET completed = completed + (CASE WHEN new.state = 'completed' THEN 1 ELSE -1 END);
        END;
    CREATE TRIGGER relay_dedupe_count_delete AFTER DELETE ON relay_dedupe_claims
        WHEN old.state = 'completed'
        BEGIN UPDATE relay_dedupe_count SET completed = completed - 1; END;
    """,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


def _statements(script: str) -> list[str]:
    """The SQL statements of ``script``; a ``;`` inside a trigger body does not end one."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        raise StateError(f"incomplete statement in a state db migration: {pending.strip()!r}")
    return statements


def _msg_key_text(k_msg: MessageKey) -> str:
    # str(): an id that arrived as the number 12345 is the same key as "12345" (R29).
    return json.dumps(["msg", *(str(part) for part in k_msg)], separators=(",", ":"))


def _buf_key_text(k_buf: str) -> str:
    return json.dumps(["buf", str(k_buf)], separators=(",", ":"))


def _claim_keys(k_msg: MessageKey | None, k_buf: str | None) -> list[str]:
    """The stored keys of a delivery; ``K_msg`` counts only with chat and message ids."""
    keys: list[str] = []
    if k_msg is not None and k_msg[1] and k_msg[2]:
        keys.append(_msg_key_text(k_msg))
    if k_buf:
        keys.append(_buf_key_text(k_buf))
    return keys


def _entry(row: sqlite3.Row) -> OutboxEntry:
    return OutboxEntry(
        id=row["id"],
        platform=row["platform"],
        bot_id=row["bot_id"],
        action_json=row["action_json"],
        request_id=row["request_id"],
        kind=row["kind"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        attempts=row["attempts"],
    )


def _turn(row: sqlite3.Row) -> TurnRecord:
    k_msg_raw = row["k_msg"]
    k_msg: MessageKey | None = None
    if k_msg_raw is not None:
        platform, chat_id, message_id = json.loads(k_msg_raw)
        k_msg = (platform, chat_id, message_id)
    return TurnRecord(
        turn_id=row["turn_id"],
        session_key=row["session_key"],
        k_msg=k_msg,
        k_buf=row["k_buf"],
        state=row["state"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        error=row["error"],
    )


@attrs.define(eq=False)
class _Op:
    """One queued database operation and, once its batch ran, its result or error."""

    fn: Callable[[sqlite3.Connection], Any]
    #: Runs a run of neighbouring operations with the same ``bulk`` in fewer statements,
    #: with the same effects as running their ``fn`` one after another; it gets their
    #: ``args`` and returns their values in order.
    bulk: Callable[[sqlite3.Connection, list[Any]], list[Any]] | None = None
    args: Any = None
    taken: bool = False
    done: bool = False
    value: Any = None
    error: BaseException | None = None


def _run_batch(conn: sqlite3.Connection, ops: list[_Op]) -> None:
    """Run ``ops`` in order as one transaction, each in its own savepoint; commit once.

    Runs in the worker thread. An operation that raises is rolled back to its savepoint and
    keeps its error; the others still commit. Neighbouring operations that share a ``bulk``
    run together in one savepoint; if that fails they run again one by one, so an error
    stays with its own operation. If the transaction itself fails (BEGIN, COMMIT, or an
    error that aborted it), every operation gets that error and nothing is committed.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        for group in _runs(ops):
            if len(group) > 1 and _run_bulk(conn, group):
                continue
            for op in group:
                op.error = _in_savepoint(conn, op)
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


def _run_bulk(conn: sqlite3.Connection, group: list[_Op]) -> bool:
    """Run ``group`` with its ``bulk`` in one savepoint; False if it has none or it failed."""
    bulk = group[0].bulk
    if bulk is None:
        return False
    values: list[Any] = []

    def run(conn: sqlite3.Connection) -> None:
        values.extend(bulk(conn, [op.args for op in group]))

    if _in_savepoint(conn, run) is not None:
        return False
    for op, value in zip(group, values, strict=True):
        op.value = value
    return True


def _in_savepoint(
    conn: sqlite3.Connection, work: _Op | Callable[[sqlite3.Connection], None]
) -> Exception | None:
    """Run ``work`` (an operation, keeping its value) in a savepoint; on an error roll back
    to it and return the error."""
    conn.execute("SAVEPOINT relay_op")
    error: Exception | None = None
    try:
        if isinstance(work, _Op):
            work.value = work.fn(conn)
        else:
            work(conn)
    except Exception as exc:
        if not conn.in_transaction:
            raise  # SQLite aborted the whole transaction: the batch failed
        conn.execute("ROLLBACK TO relay_op")
        error = exc
    conn.execute("RELEASE relay_op")
    return error


def _chunks(items: Sequence[T], size: int = BULK_ROWS) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _create_private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 if missing, and force 0600 if it exists.

    A symlink planted at the database or at one of SQLite's companion files (a shared state
    dir) would redirect the state elsewhere: it is refused, never followed.
    """
    for suffix in _SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        if companion.is_symlink():
            raise OSError(errno.ELOOP, "is a symbolic link; refusing to follow it", str(companion))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "is a symbolic link; refusing to follow it", str(path)
            ) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "is not a regular file", str(path))
        os.fchmod(fd, 0o600)  # on the file we opened, not whatever the path names now
    finally:
        os.close(fd)


class StateDB:
    """The relay's durable state. Open with :meth:`open`; use as ``async with``.

    Sizes and windows come from the configuration (RC §10): ``outbox_max`` (0 = every put
    fails fast), ``outbox_ttl_s`` (TTL of a queued ``send``), ``dedupe_window_s`` and
    ``dedupe_max`` (completed deliveries remembered; each delivery's ``K_msg`` and ``K_buf``
    together count once).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        outbox_max: int,
        outbox_ttl_s: float,
        dedupe_window_s: float,
        dedupe_max: int,
    ) -> None:
        self._conn = conn
        self._queue: list[_Op] = []
        self._busy = False  # a batch is in the worker thread
        self._batch_over = trio.Event()
        self._closed = False
        self.path = path
        self.outbox_max = outbox_max
        self.outbox_ttl_s = outbox_ttl_s
        self.dedupe_window_s = dedupe_window_s
        self.dedupe_max = dedupe_max

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    async def open(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        now: float,
        outbox_max: int = 1000,
        outbox_ttl_s: float = 86400,
        dedupe_window_s: float = 86400,
        dedupe_max: int = 10000,
    ) -> StateDB:
        """Open (creating if needed) ``<state_dir>/relay.db``, migrate, and recover.

        Recovery after a crash: turns left ``running`` become ``crashed`` (ended at ``now``)
        and ``IN_FLIGHT`` dedupe claims are released so a replay runs the delivery again.
        """
        if outbox_max < 0:
            raise StateError(f"outbox_max must be >= 0, got {outbox_max!r}")
        for name, value in (
            ("outbox_ttl_s", outbox_ttl_s),
            ("dedupe_window_s", dedupe_window_s),
            ("dedupe_max", dedupe_max),
        ):
            if value <= 0:
                raise StateError(f"{name} must be > 0, got {value!r}")
        path = Path(state_dir) / DB_FILENAME
        conn = await trio.to_thread.run_sync(cls._connect, path, now)
        return cls(
            conn,
            path,
            outbox_max=outbox_max,
            outbox_ttl_s=outbox_ttl_s,
            dedupe_window_s=dedupe_window_s,
            dedupe_max=dedupe_max,
        )

    @staticmethod
    def _connect(path: Path, now: float) -> sqlite3.Connection:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private_file(path)
        except OSError as exc:
            raise StateError(f"cannot create state database {str(path)!r}: {exc}") from exc
        # Batches run one at a time; which cached worker thread runs one varies, hence
        # check_same_thread=False.
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StateError(f"state database {str(path)!r} cannot use WAL (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            StateDB._migrate(conn, path)
            StateDB._recover(conn, now)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateError(f"state database {str(path)!r} is unusable: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection, path: Path) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM relay_schema").fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"state database {str(path)!r} has schema version {version}, newer than "
                    f"this relay-runtime supports ({SCHEMA_VERSION}); upgrade relay-runtime"
                )
            for script in _MIGRATIONS[version:]:
                for statement in _statements(script):
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO relay_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                conn.execute("UPDATE relay_schema SET version = ?", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _recover(conn: sqlite3.Connection, now: float) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            crashed = conn.execute(
                "UPDATE relay_turns SET state = 'crashed', ended_at = ? WHERE state = 'running'",
                (now,),
            ).rowcount
            claims = [
                r[0]
                for r in conn.execute(
                    "SELECT claim_id FROM relay_dedupe_claims WHERE state = 'in_flight'"
                )
            ]
            StateDB._delete_claims(conn, claims)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if crashed:
            logger.warning(
                "relay state: %d turn(s) were running at a crash; marked crashed", crashed
            )
        if claims:
            logger.info(
                "relay state: released %d in-flight dedupe claim(s) after a crash", len(claims)
            )

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
                # Operations queued before closing still run (their callers lead batches).
                while self._busy or self._queue:
                    await self._batch_over.wait()
                await trio.to_thread.run_sync(self._conn.close)
        if waited.cancelled_caught:
            # Only a worker thread stuck far past the busy timeout gets here.
            logger.warning(
                "relay state: a database call outlived %g s; connection left to the GC",
                CLOSE_WAIT_S,
            )

    async def __aenter__(self) -> StateDB:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        bulk: Callable[[sqlite3.Connection, list[Any]], list[Any]] | None = None,
        args: Any = None,
    ) -> T:
        """Run ``fn(conn)`` in the worker thread; its effects are committed on return.

        ``fn`` shares a transaction with the other operations of its batch, in a savepoint
        of its own. With ``bulk``, neighbouring calls of the same kind may run as
        ``bulk(conn, [args, ...])`` instead (see :class:`_Op`).
        """
        if self._closed:
            raise StateError("state database is closed")
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: do not run at all
        op = _Op(fn, bulk, args)
        self._queue.append(op)
        try:
            while not op.done:
                if not self._busy:
                    await self._lead_batch()
                else:
                    await self._batch_over.wait()
        except trio.Cancelled:
            if not op.taken:
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
            if isinstance(op.error, sqlite3.Error):
                raise StateError(f"state database {str(self.path)!r}: {op.error}") from op.error
            raise op.error
        return op.value  # type: ignore[no-any-return]

    async def _lead_batch(self) -> None:
        """Take every queued operation to the worker thread as one batch; wake all waiters."""
        batch, self._queue = self._queue, []
        for op in batch:
            op.taken = True
        self._busy = True
        try:
            # Shielded: the batch holds other callers' operations too.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_run_batch, self._conn, batch)
        finally:
            self._busy = False
            self._batch_over.set()
            self._batch_over = trio.Event()

    # -------------------------------------------------------------------- outbox

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

        def put(conn: sqlite3.Connection) -> tuple[int, list[OutboxEntry]]:
            expired = self._expire_in(conn, now)
            (count,) = conn.execute("SELECT count(*) FROM relay_outbox").fetchone()
            if count >= outbox_max:
                raise OutboxFull(outbox_max)
            cur = conn.execute(
                "INSERT INTO relay_outbox (platform, bot_id, action_json, request_id, kind,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (identity_platform, identity_bot_id, action_json, request_id, kind, now, now + ttl),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid, expired

        outbox_id, expired = await self._run(put)
        self._log_expired(expired, now)
        return outbox_id

    async def peek_next(self, now: float) -> OutboxEntry | None:
        """The oldest entry not expired at ``now`` (FIFO), without removing it."""
        batch = await self.peek_batch(now, 1)
        return batch[0] if batch else None

    async def peek_batch(self, now: float, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` of the oldest entries not expired at ``now``, oldest first."""

        def peek(conn: sqlite3.Connection) -> list[OutboxEntry]:
            rows = conn.execute(
                "SELECT * FROM relay_outbox WHERE expires_at > ? ORDER BY id LIMIT ?",
                (now, limit),
            )
            return [_entry(row) for row in rows]

        return await self._run(peek)

    async def entries(self) -> list[OutboxEntry]:
        """Every queued entry, oldest first (for inspection and tests)."""

        def select(conn: sqlite3.Connection) -> list[OutboxEntry]:
            return [_entry(r) for r in conn.execute("SELECT * FROM relay_outbox ORDER BY id")]

        return await self._run(select)

    async def delete(self, outbox_id: int) -> bool:
        """Remove an entry (delivered, or given up by the caller); False if it was gone."""

        def delete(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM relay_outbox WHERE id = ?", (outbox_id,))
            return cur.rowcount > 0

        return await self._run(delete)

    async def delete_many(self, outbox_ids: Sequence[int]) -> list[int]:
        """Remove several entries in one transaction; returns the ids that were there."""
        ids = list(outbox_ids)

        def delete(conn: sqlite3.Connection) -> list[int]:
            sql = "DELETE FROM relay_outbox WHERE id = ?"
            return [i for i in ids if conn.execute(sql, (i,)).rowcount]

        return await self._run(delete) if ids else []

    async def bump_attempts(self, outbox_id: int) -> Attempt:
        """Count one failed delivery (an unanswered request); the 5th deletes it (ERROR)."""

        def bump(conn: sqlite3.Connection) -> tuple[Attempt, OutboxEntry | None]:
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

        def count(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute("SELECT count(*) FROM relay_outbox").fetchone()
            return int(n)

        return await self._run(count)

    @staticmethod
    def _expire_in(conn: sqlite3.Connection, now: float) -> list[OutboxEntry]:
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

    # -------------------------------------------------------------- dedupe window

    async def claim(self, k_msg: MessageKey | None, k_buf: str | None, now: float) -> ClaimResult:
        """Claim a delivery by its keys (RC §4.6, §7.3).

        ``NEW``: no key is known; an ``IN_FLIGHT`` claim holding both keys was committed and
        its handle returned. ``COMPLETED`` (either key completed within the window) wins over
        ``IN_FLIGHT`` (either key running); the handle then names the existing claim. A
        delivery with neither key is not deduplicated: ``NEW`` with no handle.
        """
        keys = _claim_keys(k_msg, k_buf)
        if not keys:
            return ClaimResult(ClaimStatus.NEW, None)
        return await self._run(lambda conn: self._claim_in(conn, keys, now))

    async def claim_turn(
        self, session_key: str, k_msg: MessageKey | None, k_buf: str | None, now: float
    ) -> tuple[ClaimResult, int | None]:
        """:meth:`claim` and, for a ``NEW`` delivery, :meth:`turn_started`, in one transaction.

        Returns the claim and the new turn's id (``None`` unless ``NEW``). The turn is
        recorded ``running`` from now on, started at ``now``; if it never starts, end it with
        :meth:`release_unstarted`.
        """
        keys = _claim_keys(k_msg, k_buf)

        def claim_turn(conn: sqlite3.Connection) -> tuple[ClaimResult, int | None]:
            result = self._claim_in(conn, keys, now) if keys else ClaimResult(ClaimStatus.NEW, None)
            if result.status is not ClaimStatus.NEW:
                return result, None
            return result, self._start_in(conn, session_key, k_msg, k_buf, now)

        return await self._run(claim_turn)

    async def claim_turns(
        self, requests: Sequence[ClaimRequest], now: float
    ) -> list[tuple[ClaimResult, int | None]]:
        """:meth:`claim_turn` for each request, in order, as ONE operation (one transaction).

        Results are exactly those of sequential :meth:`claim_turn` calls: a later request
        sharing a key with an earlier ``NEW`` one in the same call is ``IN_FLIGHT``. If any
        claim fails, none is committed and the error is raised.
        """
        if not requests:
            return []
        prepared = [(r, _claim_keys(r.k_msg, r.k_buf)) for r in requests]

        def claim_turns(conn: sqlite3.Connection) -> list[tuple[ClaimResult, int | None]]:
            out: list[tuple[ClaimResult, int | None]] = []
            for request, keys in prepared:
                result = (
                    self._claim_in(conn, keys, now) if keys else ClaimResult(ClaimStatus.NEW, None)
                )
                turn_id = None
                if result.status is ClaimStatus.NEW:
                    turn_id = self._start_in(
                        conn, request.session_key, request.k_msg, request.k_buf, now
                    )
                out.append((result, turn_id))
            return out

        return await self._run(claim_turns)

    async def release_unstarted(self, handle: ClaimHandle | None, turn_id: int | None) -> None:
        """One transaction: release the claim and forget the turn record of a turn that
        never started (recorded by :meth:`claim_turn`, then cancelled while queued)."""

        def release(conn: sqlite3.Connection) -> None:
            if handle is not None:
                self._release_in(conn, handle)
            if turn_id is not None:
                conn.execute(
                    "DELETE FROM relay_turns WHERE turn_id = ? AND state = 'running'", (turn_id,)
                )

        await self._run(release)

    def _claim_in(self, conn: sqlite3.Connection, keys: list[str], now: float) -> ClaimResult:
        self._evict_old_claims(conn, now - self.dedupe_window_s)
        marks = ",".join("?" * len(keys))
        found = conn.execute(
            "SELECT c.claim_id, c.state FROM relay_dedupe_keys k"
            " JOIN relay_dedupe_claims c ON c.claim_id = k.claim_id"
            f" WHERE k.key IN ({marks}) ORDER BY c.state = 'completed' DESC, c.claim_id",
            keys,
        ).fetchone()
        if found is not None:
            status = (
                ClaimStatus.COMPLETED if found["state"] == "completed" else ClaimStatus.IN_FLIGHT
            )
            return ClaimResult(status, ClaimHandle(found["claim_id"]))
        cur = conn.execute(
            "INSERT INTO relay_dedupe_claims (state, created_at) VALUES ('in_flight', ?)",
            (now,),
        )
        assert cur.lastrowid is not None
        claim_id = cur.lastrowid
        conn.executemany(
            "INSERT INTO relay_dedupe_keys (key, claim_id) VALUES (?, ?)",
            [(key, claim_id) for key in keys],
        )
        return ClaimResult(ClaimStatus.NEW, ClaimHandle(claim_id))

    async def complete(self, handle: ClaimHandle | None, now: float) -> bool:
        """Mark a claim ``COMPLETED`` (committed on return); False if it no longer exists."""
        if handle is None:
            return False
        return await self._run(lambda conn: self._complete_in(conn, handle, now))

    async def release(self, handle: ClaimHandle | None) -> bool:
        """Remove an ``IN_FLIGHT`` claim (shutdown-cancelled or never started).

        A replay of the delivery then runs it. A completed claim is left alone (False).
        """
        if handle is None:
            return False

        def release(conn: sqlite3.Connection) -> bool:
            return self._release_in(conn, handle)

        return await self._run(release)

    async def claim_status(self, k_msg: MessageKey | None, k_buf: str | None) -> ClaimStatus:
        """Read-only lookup: ``NEW`` if neither key is known (expired ones still count)."""
        keys = _claim_keys(k_msg, k_buf)
        if not keys:
            return ClaimStatus.NEW

        def lookup(conn: sqlite3.Connection) -> ClaimStatus:
            states = {
                r[0]
                for r in conn.execute(
                    "SELECT c.state FROM relay_dedupe_keys k JOIN relay_dedupe_claims c"
                    f" ON c.claim_id = k.claim_id WHERE k.key IN ({','.join('?' * len(keys))})",
                    keys,
                )
            }
            if "completed" in states:
                return ClaimStatus.COMPLETED
            return ClaimStatus.IN_FLIGHT if states else ClaimStatus.NEW

        return await self._run(lookup)

    def _complete_in(self, conn: sqlite3.Connection, handle: ClaimHandle, now: float) -> bool:
        cur = conn.execute(
            "UPDATE relay_dedupe_claims SET state = 'completed', completed_at = ?"
            " WHERE claim_id = ? AND state = 'in_flight'",
            (now, handle.claim_id),
        )
        if cur.rowcount == 0:
            return False
        self._evict_old_claims(conn, now - self.dedupe_window_s)
        self._trim_completed(conn)
        return True

    def _trim_completed(self, conn: sqlite3.Connection) -> None:
        """Forget the oldest completed claims beyond ``dedupe_max``."""
        (completed,) = conn.execute("SELECT completed FROM relay_dedupe_count").fetchone()
        excess = completed - self.dedupe_max
        if excess > 0:
            oldest = [
                r[0]
                for r in conn.execute(
                    "SELECT claim_id FROM relay_dedupe_claims WHERE state = 'completed'"
                    " ORDER BY completed_at, claim_id LIMIT ?",
                    (excess,),
                )
            ]
            self._delete_claims(conn, oldest)

    @staticmethod
    def _release_in(conn: sqlite3.Connection, handle: ClaimHandle) -> bool:
        row = conn.execute(
            "SELECT 1 FROM relay_dedupe_claims WHERE claim_id = ? AND state = 'in_flight'",
            (handle.claim_id,),
        ).fetchone()
        if row is None:
            return False
        StateDB._delete_claims(conn, [handle.claim_id])
        return True

    @staticmethod
    def _evict_old_claims(conn: sqlite3.Connection, cutoff: float) -> None:
        old = [
            r[0]
            for r in conn.execute(
                "SELECT claim_id FROM relay_dedupe_claims"
                " WHERE state = 'completed' AND completed_at <= ?",
                (cutoff,),
            )
        ]
        StateDB._delete_claims(conn, old)

    @staticmethod
    def _delete_claims(conn: sqlite3.Connection, claim_ids: list[int]) -> None:
        if not claim_ids:
            return
        params = [(c,) for c in claim_ids]
        conn.executemany("DELETE FROM relay_dedupe_keys WHERE claim_id = ?", params)
        conn.executemany("DELETE FROM relay_dedupe_claims WHERE claim_id = ?", params)

    # --------------------------------------------------------------- turn results

    async def turn_started(
        self,
        session_key: str,
        k_msg: MessageKey | None,
        k_buf: str | None,
        now: float,
    ) -> int:
        """Record a turn as ``running``; return its ``turn_id``."""

        return await self._run(lambda conn: self._start_in(conn, session_key, k_msg, k_buf, now))

    async def turn_finished(
        self, turn_id: int, state: TurnEndState, now: float, error: str | None = None
    ) -> bool:
        """Record a turn's end state; False if the turn is unknown or already ended."""
        _check_end_state(state)
        return await self._run(lambda conn: self._finish_in(conn, turn_id, state, now, error))

    async def complete_turn(
        self,
        handle: ClaimHandle | None,
        turn_id: int | None,
        state: TurnEndState,
        now: float,
        error: str | None = None,
    ) -> None:
        """One transaction: mark the claim ``COMPLETED`` and record the turn's end state.

        This is the record RC §7.4 requires to be committed before an ``inbound_ack``. For
        ``state == "cancelled"`` (shutdown) use :meth:`release_turn` instead.
        """
        _check_end_state(state)
        completion = _Completion(handle, turn_id, state, now, error)

        def finish(conn: sqlite3.Connection) -> None:
            if handle is not None:
                self._complete_in(conn, handle, now)
            if turn_id is not None:
                self._finish_in(conn, turn_id, state, now, error)

        await self._run(finish, self._complete_turns_in, completion)

    def _complete_turns_in(
        self, conn: sqlite3.Connection, completions: list[_Completion]
    ) -> list[None]:
        """Several :meth:`complete_turn` at once: a few statements for the whole run."""
        claims = [(c.handle.claim_id, c.now) for c in completions if c.handle is not None]
        for chunk in _chunks(claims):
            cases = " ".join(["WHEN ? THEN ?"] * len(chunk))
            conn.execute(
                "UPDATE relay_dedupe_claims SET state = 'completed',"
                f" completed_at = CASE claim_id {cases} END"
                f" WHERE state = 'in_flight' AND claim_id IN ({','.join('?' * len(chunk))})",
                [*(v for pair in chunk for v in pair), *(claim_id for claim_id, _ in chunk)],
            )
        turns = [c for c in completions if c.turn_id is not None]
        for part in _chunks(turns):
            cases = " ".join(["WHEN ? THEN ?"] * len(part))
            conn.execute(
                f"UPDATE relay_turns SET state = CASE turn_id {cases} END,"
                f" ended_at = CASE turn_id {cases} END, error = CASE turn_id {cases} END"
                f" WHERE state = 'running' AND turn_id IN ({','.join('?' * len(part))})",
                [
                    *(v for c in part for v in (c.turn_id, c.state)),
                    *(v for c in part for v in (c.turn_id, c.now)),
                    *(v for c in part for v in (c.turn_id, c.error)),
                    *(c.turn_id for c in part),
                ],
            )
        latest = max(c.now for c in completions)
        if claims:
            self._evict_old_claims(conn, latest - self.dedupe_window_s)
            self._trim_completed(conn)
        if turns:
            self._prune_turns_in(conn, latest)
        return [None] * len(completions)

    async def release_turn(
        self, handle: ClaimHandle | None, turn_id: int | None, now: float
    ) -> None:
        """One transaction: release the claim and record the turn as ``cancelled``."""

        def release(conn: sqlite3.Connection) -> None:
            if handle is not None:
                self._release_in(conn, handle)
            if turn_id is not None:
                self._finish_in(conn, turn_id, "cancelled", now, None)

        await self._run(release)

    async def turn(self, turn_id: int) -> TurnRecord | None:
        """The record of one turn, if still kept."""

        def select(conn: sqlite3.Connection) -> TurnRecord | None:
            row = conn.execute("SELECT * FROM relay_turns WHERE turn_id = ?", (turn_id,)).fetchone()
            return None if row is None else _turn(row)

        return await self._run(select)

    async def turns(self, state: TurnState | None = None) -> list[TurnRecord]:
        """Kept turn records, oldest first, optionally only those in ``state``."""

        def select(conn: sqlite3.Connection) -> list[TurnRecord]:
            if state is None:
                rows = conn.execute("SELECT * FROM relay_turns ORDER BY turn_id")
            else:
                rows = conn.execute(
                    "SELECT * FROM relay_turns WHERE state = ? ORDER BY turn_id", (state,)
                )
            return [_turn(r) for r in rows]

        return await self._run(select)

    async def prune(self, now: float) -> int:
        """Drop turn results older than 24 h and dedupe claims outside the window.

        Returns the number of turn records removed. (Outbox expiry is :meth:`expire`.)
        """
        window = self.dedupe_window_s

        def prune(conn: sqlite3.Connection) -> int:
            self._evict_old_claims(conn, now - window)
            return self._prune_turns_in(conn, now)

        return await self._run(prune)

    @staticmethod
    def _start_in(
        conn: sqlite3.Connection,
        session_key: str,
        k_msg: MessageKey | None,
        k_buf: str | None,
        now: float,
    ) -> int:
        cur = conn.execute(
            "INSERT INTO relay_turns (session_key, k_msg, k_buf, state, started_at)"
            " VALUES (?, ?, ?, 'running', ?)",
            (session_key, None if k_msg is None else json.dumps(list(k_msg)), k_buf, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    @staticmethod
    def _finish_in(
        conn: sqlite3.Connection, turn_id: int, state: str, now: float, error: str | None
    ) -> bool:
        cur = conn.execute(
            "UPDATE relay_turns SET state = ?, ended_at = ?, error = ?"
            " WHERE turn_id = ? AND state = 'running'",
            (state, now, error, turn_id),
        )
        StateDB._prune_turns_in(conn, now)
        return cur.rowcount > 0

    @staticmethod
    def _prune_turns_in(conn: sqlite3.Connection, now: float) -> int:
        cur = conn.execute(
            "DELETE FROM relay_turns WHERE ended_at IS NOT NULL AND ended_at <= ?",
            (now - TURN_RESULT_TTL_S,),
        )
        return cur.rowcount


def _check_end_state(state: str) -> None:
    if state not in TURN_END_STATES:
        raise StateError(f"turn end state must be one of {sorted(TURN_END_STATES)}, got {state!r}")
