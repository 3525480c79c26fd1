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
commits once and wakes every caller with its own result. Unless said otherwise, an
operation's effects are committed before its coroutine returns; a caller cancelled after its
batch started still waits for the (short) commit, and one cancelled while still queued is
not run at all.

The exceptions are records of decisions the in-memory dedupe window (dedupe.py) has already
made: claims, and completions nobody acks. They are written behind: queued in decision
order, committed with the next batch or by :meth:`StateDB.flush` (the dispatcher commits
them within 50 ms), never dropped when a caller is cancelled, committed at close, and if
one fails, its batch fails and they are retried whole, in order.

No wall clock is read in here: every time-dependent call takes ``now`` (seconds, any epoch
the caller uses consistently; the runtime passes ``time.time()``).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs
import trio

from relay_runtime.dedupe import ClaimHandle, ClaimResult, ClaimStatus, DedupeWindow

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
    "InboxRecord",
    "MessageKey",
    "OutboxEntry",
    "OutboxFull",
    "OutboxKind",
    "StateDB",
    "StateError",
    "StorageFailed",
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

OutboxKind = Literal["send", "follow_up"]
TurnEndState = Literal["completed", "failed", "interrupted", "denied", "cancelled", "timed_out"]
TurnState = Literal[
    "running", "completed", "failed", "interrupted", "denied", "cancelled", "timed_out", "crashed"
]
#: States a caller may finish a turn with (``crashed`` is only set by crash recovery).
TURN_END_STATES: Final[frozenset[str]] = frozenset(
    {"completed", "failed", "interrupted", "denied", "cancelled", "timed_out"}
)
#: ``K_msg`` of RC §4.6: ``(platform_raw, chat_id, message_id)``.
MessageKey = tuple[str, str, str]
#: How many times a live delivery left unfinished by a crash or a shutdown is resumed (one
#: more run per restart) before it is given up as one that keeps killing the process.
RESUME_MAX: Final = 3
#: Bytes of the random per-gateway key replies' ``requestId``s are derived with.
REPLY_KEY_BYTES: Final = 32

T = TypeVar("T")


class StateError(Exception):
    """The state database cannot be used (unreadable, newer schema, bad argument)."""


class StorageFailed(StateError):
    """Writing the state database failed for longer than the configured limit."""


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the disk failing (full, I/O error, file-size limit, read-only)."""
    if isinstance(exc, OSError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in _STORAGE_CODES


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


@attrs.frozen
class ClaimRequest:
    """One delivery to claim in :meth:`StateDB.claim_turns`: its session and its keys.

    ``inbound`` is the delivery's frame (JSON) for the durable inbox: kept with its turn
    until the turn ends, so a live delivery a crash or shutdown interrupted is resumed by
    the next process (``None``: not kept, e.g. buffered ones, which the connector replays).
    """

    session_key: str
    k_msg: MessageKey | None
    k_buf: str | None
    inbound: str | None = None


@attrs.frozen
class InboxRecord:
    """A live delivery the previous process admitted and did not finish: to resume."""

    turn_id: int
    session_key: str
    k_msg: MessageKey | None
    inbound: str
    resumes: int


@attrs.frozen
class _Completion:
    """What one :meth:`StateDB.complete_turn` records."""

    claim_id: int | None  # None: no claim to mark (none, or not in flight)
    turn_id: int | None
    state: TurnEndState
    now: float
    error: str | None
    forgotten: list[int]  # claims the window forgot on this completion
    completed_at: float  # the claim's completion time as the window recorded it


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
    # The gateway's reply key (requestIds derived from deliveries) and the durable inbox: a
    # live delivery's frame is kept with its turn until the turn ends.
    """
    CREATE TABLE relay_meta (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE relay_turns ADD COLUMN inbound TEXT;
    ALTER TABLE relay_turns ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0;
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

    def run(self, conn: sqlite3.Connection) -> None:
        """Run ``fn`` alone, keeping its value."""
        self.value = self.fn(conn)


def _run_batch(conn: sqlite3.Connection, ops: list[_Op]) -> None:
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
        for group in _runs(ops):
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
    conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], None]
) -> Exception | None:
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


def _nothing(conn: sqlite3.Connection) -> None:
    """An operation with no effect: waiting for it commits everything queued before it."""


def _chunks(items: Sequence[T], size: int = BULK_ROWS) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _lock_state(path: Path) -> int:
    """Hold ``<db>.lock`` (``flock``) for as long as the returned descriptor is open.

    The dedupe window lives in memory and claim ids are handed out there: two gateways on
    one state dir would collide, so the second is refused. The OS drops the lock when the
    process dies, so a crash never leaves it behind.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(f"cannot create state lock {str(lock_path)!r}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateError(
                f"state database {str(path)!r} is in use by another gateway ({lock_path.name} "
                "is locked); give each running gateway its own state directory"
            ) from None
        raise StateError(f"cannot lock {str(lock_path)!r}: {exc}") from exc
    return fd


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
        dedupe: DedupeWindow | None = None,
        next_turn_id: int = 1,
        lock_fd: int | None = None,
        reply_key: bytes | None = None,
        resumable: Sequence[InboxRecord] = (),
        turns_max: int = 100_000,
    ) -> None:
        self._conn = conn
        self._lock_fd = lock_fd
        self._queue: list[_Op] = []
        self._busy = False  # a batch is in the worker thread
        self._batch_over = trio.Event()
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
        self.path = path
        self.outbox_max = outbox_max
        self.outbox_ttl_s = outbox_ttl_s
        self.dedupe_window_s = dedupe_window_s
        self.dedupe_max = dedupe_max
        #: Decides every claim; the claim tables follow it write-behind (see dedupe.py).
        self._dedupe = dedupe or DedupeWindow(window_s=dedupe_window_s, max_completed=dedupe_max)
        self._next_turn_id = next_turn_id
        #: Turn records kept at most (ended ones beyond it are dropped, oldest first).
        self.turns_max = turns_max
        self._turns_floor = 0
        #: The key the ``requestId``s of replies are derived with (kept in the file).
        self.reply_key = reply_key if reply_key is not None else os.urandom(REPLY_KEY_BYTES)
        self._resumable = list(resumable)

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
        turns_max: int = 100_000,
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
            ("turns_max", turns_max),
        ):
            if value <= 0:
                raise StateError(f"{name} must be > 0, got {value!r}")
        path = Path(state_dir) / DB_FILENAME
        lock_fd = await trio.to_thread.run_sync(_lock_state, path)
        try:
            conn = await trio.to_thread.run_sync(cls._connect, path, now)
            try:
                resumable, reply_key = await trio.to_thread.run_sync(cls._prepare, conn, path, now)
                dedupe = DedupeWindow(window_s=dedupe_window_s, max_completed=dedupe_max)
                next_turn_id = await trio.to_thread.run_sync(cls._load, conn, dedupe, now)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(
            conn,
            path,
            lock_fd=lock_fd,
            outbox_max=outbox_max,
            outbox_ttl_s=outbox_ttl_s,
            dedupe_window_s=dedupe_window_s,
            dedupe_max=dedupe_max,
            dedupe=dedupe,
            next_turn_id=next_turn_id,
            reply_key=reply_key,
            resumable=resumable,
            turns_max=turns_max,
        )

    @staticmethod
    def _prepare(
        conn: sqlite3.Connection, path: Path, now: float
    ) -> tuple[list[InboxRecord], bytes]:
        """Recover from a crash; the deliveries to resume and the gateway's reply key."""
        try:
            resumable = StateDB._recover(conn, now)
            row = conn.execute("SELECT value FROM relay_meta WHERE name = 'reply_key'").fetchone()
            if row is not None and len(row[0]) == REPLY_KEY_BYTES:
                return resumable, bytes(row[0])
            key = os.urandom(REPLY_KEY_BYTES)
            conn.execute(
                "INSERT OR REPLACE INTO relay_meta (name, value) VALUES ('reply_key', ?)", (key,)
            )
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state database {str(path)!r} is unusable: {exc}") from exc
        return resumable, key

    @staticmethod
    def _load(conn: sqlite3.Connection, dedupe: DedupeWindow, now: float) -> int:
        """Read the completed claims into ``dedupe`` (trimmed to its bounds in both places);
        return the next turn id."""
        rows = conn.execute(
            "SELECT c.claim_id, c.completed_at, k.key FROM relay_dedupe_claims c"
            " LEFT JOIN relay_dedupe_keys k ON k.claim_id = c.claim_id"
            " WHERE c.state = 'completed' ORDER BY c.completed_at, c.claim_id, k.key"
        ).fetchall()
        keys: dict[int, list[str]] = {}
        completed_at: dict[int, float] = {}
        for claim_id, at, key in rows:
            completed_at[claim_id] = at
            keys.setdefault(claim_id, [])
            if key is not None:
                keys[claim_id].append(key)
        for claim_id, claim_keys in keys.items():
            dedupe.load_completed(claim_id, claim_keys, completed_at[claim_id])
        forgotten = dedupe.expire(now)
        while dedupe.completed > dedupe.max_completed:
            forgotten.extend(dedupe.trim_one())
        ids = dict(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        dedupe.skip_to(int(ids.get("relay_dedupe_claims", 0)) + 1)
        if forgotten:
            conn.execute("BEGIN IMMEDIATE")
            try:
                StateDB._delete_claims(conn, forgotten)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return int(ids.get("relay_turns", 0)) + 1

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
    def _recover(conn: sqlite3.Connection, now: float) -> list[InboxRecord]:
        """Turns left ``running`` end ``crashed`` and in-flight claims are released, except
        the live deliveries kept in the inbox: those stay ``running``, returned to resume
        (at most :data:`RESUME_MAX` times each)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            resumable = [
                InboxRecord(
                    turn_id=row["turn_id"],
                    session_key=row["session_key"],
                    k_msg=_turn(row).k_msg,
                    inbound=row["inbound"],
                    resumes=row["resumes"],
                )
                for row in conn.execute(
                    "SELECT * FROM relay_turns WHERE state = 'running' AND inbound IS NOT NULL"
                    " AND k_buf IS NULL AND resumes < ? ORDER BY turn_id",
                    (RESUME_MAX,),
                )
            ]
            given_up = conn.execute(
                "SELECT count(*) FROM relay_turns WHERE state = 'running'"
                " AND inbound IS NOT NULL AND k_buf IS NULL AND resumes >= ?",
                (RESUME_MAX,),
            ).fetchone()[0]
            crashed = conn.execute(
                "UPDATE relay_turns SET state = 'crashed', ended_at = ?, inbound = NULL"
                " WHERE state = 'running'"
                " AND (inbound IS NULL OR k_buf IS NOT NULL OR resumes >= ?)",
                (now, RESUME_MAX),
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
        if given_up:
            logger.error(
                "relay state: %d live message(s) were interrupted %d times; given up, not run"
                " again",
                given_up,
                RESUME_MAX,
            )
        if resumable:
            logger.warning(
                "relay state: %d live message(s) were admitted and not finished; resuming them",
                len(resumable),
            )
        if claims:
            logger.info(
                "relay state: released %d in-flight dedupe claim(s) after a crash", len(claims)
            )
        return resumable

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
                await trio.to_thread.run_sync(self._conn.close)
                if self._lock_fd is not None:
                    os.close(self._lock_fd)  # the next gateway on this state dir may start
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
        *,
        keep: bool = False,
        read: bool = False,
    ) -> T:
        """Run ``fn(conn)`` in the worker thread; its effects are committed on return.

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
            while not op.done:
                if not self._busy:
                    await self._lead_batch()
                else:
                    await self._batch_over.wait()
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
        failed: list[_Op] = []
        for op in batch:
            if not op.keep or op.error is None:
                continue
            if op.orphan:
                failed.append(op)
            else:
                # Its caller gets the error, and the decision is still recorded: a copy
                # nobody waits for is kept to retry like a written-behind record.
                failed.append(_Op(op.fn, op.bulk, op.args, keep=True, orphan=True))
        storage = next(
            (op.error for op in batch if op.error is not None and is_storage_error(op.error)),
            None,
        )
        if failed:
            # Kept, in order, ahead of everything queued since: the file must not skip a
            # decision the window made. flush() reports the failure until a retry succeeds;
            # the awaited operations of the batch failed with it (raised to their callers).
            error = next(op.error for op in batch if op.keep and op.error is not None)
            assert error is not None
            self._behind_error = error
            for op in failed:
                op.taken = op.done = False
                op.value = op.error = None
            self._queue[:0] = failed
            self._queued.set()
            self._storage_failed(storage or error, len(failed))
        else:
            if any(op.orphan for op in batch):
                self._behind_error = None
            if storage is not None:
                self._storage_failed(storage, 0)
            elif any(not op.read and op.error is None for op in batch):
                self._storage_ok()

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

        return await self._run(peek, read=True)

    async def entries(self) -> list[OutboxEntry]:
        """Every queued entry, oldest first (for inspection and tests)."""

        def select(conn: sqlite3.Connection) -> list[OutboxEntry]:
            return [_entry(r) for r in conn.execute("SELECT * FROM relay_outbox ORDER BY id")]

        return await self._run(select, read=True)

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

        return await self._run(count, read=True)

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
    #
    # Decisions come from the in-memory DedupeWindow; the claim tables follow it in the
    # same order through the batch queue (dedupe.py says why that is enough).

    async def claim(self, k_msg: MessageKey | None, k_buf: str | None, now: float) -> ClaimResult:
        """Claim a delivery by its keys (RC §4.6, §7.3); the claim is committed on return.

        ``NEW``: no key is known; an ``IN_FLIGHT`` claim holding both keys was taken and its
        handle returned. ``COMPLETED`` (either key completed within the window) wins over
        ``IN_FLIGHT`` (either key running); the handle then names the existing claim. A
        delivery with neither key is not deduplicated: ``NEW`` with no handle.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        result, write = self._decide([(None, k_msg, k_buf, None)], now)
        await self._run(write, keep=True)
        return result[0][0]

    async def claim_turn(
        self, session_key: str, k_msg: MessageKey | None, k_buf: str | None, now: float
    ) -> tuple[ClaimResult, int | None]:
        """:meth:`claim` and, for a ``NEW`` delivery, :meth:`turn_started`, in one transaction.

        Returns the claim and the new turn's id (``None`` unless ``NEW``). The turn is
        recorded ``running`` from now on, started at ``now``; if it never starts, end it with
        :meth:`release_unstarted`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        results, write = self._decide([(session_key, k_msg, k_buf, None)], now)
        await self._run(write, keep=True)
        return results[0]

    async def claim_turns(
        self, requests: Sequence[ClaimRequest], now: float
    ) -> list[tuple[ClaimResult, int | None]]:
        """:meth:`claim_turn` for each request, in order, without waiting for a commit.

        Results are exactly those of sequential :meth:`claim_turn` calls (a later request
        sharing a key with an earlier ``NEW`` one is ``IN_FLIGHT``) and are final at once:
        the records are written behind, committed with the next batch, before any operation
        queued after this call (see :meth:`flush`). Nothing here waits on the disk, so a
        turn starts without a commit on its path.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not requests:
            return []
        results, write = self._decide(
            [(r.session_key, r.k_msg, r.k_buf, r.inbound) for r in requests], now
        )
        self._write_behind(_Op(write))
        return results

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
                f"state database {str(self.path)!r}: records written behind are not "
                f"committed: {self._behind_error}"
            ) from self._behind_error

    async def wait_queued(self) -> None:
        """Wait until written-behind records are waiting for a commit."""
        while not any(op.orphan for op in self._queue):
            await self._queued.wait()
            self._queued = trio.Event()

    def _decide(
        self,
        requests: Sequence[tuple[str | None, MessageKey | None, str | None, str | None]],
        now: float,
    ) -> tuple[list[tuple[ClaimResult, int | None]], Callable[[sqlite3.Connection], None]]:
        """Claim ``requests`` in memory now; the write that records them (and the turns of
        requests with a session key that are ``NEW``)."""
        results: list[tuple[ClaimResult, int | None]] = []
        claims: list[tuple[int, list[str]]] = []
        turns: list[tuple[int, str, MessageKey | None, str | None, str | None]] = []
        forgotten: list[int] = []
        for session_key, k_msg, k_buf, inbound in requests:
            keys = _claim_keys(k_msg, k_buf)
            result, gone = self._dedupe.claim(keys, now)
            forgotten.extend(gone)
            turn_id = None
            if result.status is ClaimStatus.NEW:
                if result.handle is not None:
                    claims.append((result.handle.claim_id, keys))
                if session_key is not None:
                    turn_id = self._take_turn_id()
                    turns.append((turn_id, session_key, k_msg, k_buf, inbound))
            results.append((result, turn_id))

        def write(conn: sqlite3.Connection) -> None:
            self._delete_claims(conn, forgotten)
            conn.executemany(
                "INSERT INTO relay_dedupe_claims (claim_id, state, created_at)"
                " VALUES (?, 'in_flight', ?)",
                [(claim_id, now) for claim_id, _ in claims],
            )
            # Plain INSERT: the file follows the window exactly, so a key taken here is
            # free there; if not, that is an error to see, not to paper over.
            conn.executemany(
                "INSERT INTO relay_dedupe_keys (key, claim_id) VALUES (?, ?)",
                [(key, claim_id) for claim_id, keys in claims for key in keys],
            )
            for turn_id, session_key, k_msg, k_buf, inbound in turns:
                self._start_in(conn, turn_id, session_key, k_msg, k_buf, now, inbound)

        return results, write

    async def inbox_frames(self, turn_ids: Sequence[int]) -> dict[int, str]:
        """The frames kept in the inbox for ``turn_ids`` (records written behind before
        this call included: it runs after them)."""
        ids = list(turn_ids)

        def select(conn: sqlite3.Connection) -> dict[int, str]:
            out: dict[int, str] = {}
            for chunk in _chunks(ids):
                rows = conn.execute(
                    "SELECT turn_id, inbound FROM relay_turns WHERE inbound IS NOT NULL"
                    f" AND turn_id IN ({','.join('?' * len(chunk))})",
                    list(chunk),
                )
                out.update((int(turn_id), inbound) for turn_id, inbound in rows)
            return out

        return await self._run(select, read=True)

    def take_resumable(self) -> list[InboxRecord]:
        """The live deliveries the previous process left unfinished, oldest first (once)."""
        resumable, self._resumable = self._resumable, []
        return resumable

    async def claim_resumed(self, records: Sequence[InboxRecord], now: float) -> list[ClaimResult]:
        """Claim resumed deliveries again under their own turn ids; count the resume.

        Decided at once, written behind like :meth:`claim_turns`. A delivery whose key
        completed meanwhile (``COMPLETED``) is not run: its turn is recorded ``crashed``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        results: list[ClaimResult] = []
        claims: list[tuple[int, list[str]]] = []
        forgotten: list[int] = []
        resumed: list[int] = []
        dropped: list[int] = []
        for record in records:
            keys = _claim_keys(record.k_msg, None)
            result, gone = self._dedupe.claim(keys, now)
            forgotten.extend(gone)
            if result.status is ClaimStatus.NEW:
                if result.handle is not None:
                    claims.append((result.handle.claim_id, keys))
                resumed.append(record.turn_id)
            else:
                dropped.append(record.turn_id)
            results.append(result)

        def write(conn: sqlite3.Connection) -> None:
            self._delete_claims(conn, forgotten)
            conn.executemany(
                "INSERT INTO relay_dedupe_claims (claim_id, state, created_at)"
                " VALUES (?, 'in_flight', ?)",
                [(claim_id, now) for claim_id, _ in claims],
            )
            conn.executemany(
                "INSERT INTO relay_dedupe_keys (key, claim_id) VALUES (?, ?)",
                [(key, claim_id) for claim_id, keys in claims for key in keys],
            )
            conn.executemany(
                "UPDATE relay_turns SET resumes = resumes + 1 WHERE turn_id = ?",
                [(turn_id,) for turn_id in resumed],
            )
            for turn_id in dropped:
                self._finish_in(conn, turn_id, "crashed", now, "duplicate of a completed delivery")

        self._write_behind(_Op(write))
        return results

    def _take_turn_id(self) -> int:
        turn_id = self._next_turn_id
        self._next_turn_id += 1
        return turn_id

    async def release_unstarted(self, handle: ClaimHandle | None, turn_id: int | None) -> None:
        """One transaction: release the claim and forget the turn record of a turn that
        never started (recorded by :meth:`claim_turn`, then cancelled while queued)."""
        released = self._dedupe.release(handle)

        def release(conn: sqlite3.Connection) -> None:
            if released and handle is not None:
                self._delete_claims(conn, [handle.claim_id])
            if turn_id is not None:
                conn.execute(
                    "DELETE FROM relay_turns WHERE turn_id = ? AND state = 'running'", (turn_id,)
                )

        await self._run(release, keep=True)

    async def complete(self, handle: ClaimHandle | None, now: float) -> bool:
        """Mark a claim ``COMPLETED`` (committed on return); False if it is not in flight."""
        changed, forgotten = self._dedupe.complete(handle, now)
        if not changed:
            return False
        assert handle is not None
        at = self._dedupe.completed_at(handle)
        assert at is not None

        def complete(conn: sqlite3.Connection) -> None:
            self._complete_claims_in(conn, [(handle.claim_id, at)], forgotten)

        await self._run(complete, keep=True)
        return True

    async def release(self, handle: ClaimHandle | None) -> bool:
        """Remove an ``IN_FLIGHT`` claim (shutdown-cancelled or never started).

        A replay of the delivery then runs it. A completed claim is left alone (False).
        """
        if not self._dedupe.release(handle):
            return False
        assert handle is not None
        await self._run(lambda conn: self._delete_claims(conn, [handle.claim_id]), keep=True)
        return True

    async def claim_status(self, k_msg: MessageKey | None, k_buf: str | None) -> ClaimStatus:
        """Read-only lookup: ``NEW`` if neither key is known (expired ones still count)."""
        await trio.lowlevel.checkpoint()
        return self._dedupe.status(_claim_keys(k_msg, k_buf))

    @staticmethod
    def _complete_claims_in(
        conn: sqlite3.Connection, completed: Sequence[tuple[int, float]], forgotten: list[int]
    ) -> None:
        """Mark ``(claim_id, now)`` pairs completed, then delete the ``forgotten`` claims."""
        for chunk in _chunks(completed):
            cases = " ".join(["WHEN ? THEN ?"] * len(chunk))
            conn.execute(
                "UPDATE relay_dedupe_claims SET state = 'completed',"
                f" completed_at = CASE claim_id {cases} END"
                f" WHERE state = 'in_flight' AND claim_id IN ({','.join('?' * len(chunk))})",
                [*(v for pair in chunk for v in pair), *(claim_id for claim_id, _ in chunk)],
            )
        StateDB._delete_claims(conn, forgotten)

    @staticmethod
    def _delete_claims(conn: sqlite3.Connection, claim_ids: Sequence[int]) -> None:
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
        turn_id = self._take_turn_id()
        await self._run(lambda conn: self._start_in(conn, turn_id, session_key, k_msg, k_buf, now))
        return turn_id

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
        *,
        write_behind: bool = False,
    ) -> None:
        """One transaction: mark the claim ``COMPLETED`` and record the turn's end state.

        This is the record RC §7.4 requires to be committed before an ``inbound_ack``: it
        is committed on return. With ``write_behind`` (a delivery nobody acks) it is
        decided at once and committed with the next batch instead (see :meth:`flush`).
        For ``state == "cancelled"`` (shutdown) use :meth:`release_turn` instead.
        Neighbouring calls in a batch are recorded together (same effects, fewer
        statements).
        """
        _check_end_state(state)
        if write_behind:
            await trio.lowlevel.checkpoint()  # before deciding: nothing may come between
        changed, forgotten = self._dedupe.complete(handle, now)
        claim_id = handle.claim_id if changed and handle is not None else None
        at = now if claim_id is None else self._dedupe.completed_at(ClaimHandle(claim_id))
        assert at is not None
        completion = _Completion(claim_id, turn_id, state, now, error, forgotten, at)
        record = functools.partial(self._complete_turns_in, completions=[completion])
        if write_behind:
            self._write_behind(_Op(record, self._complete_turns_in, completion))
            return
        await self._run(record, self._complete_turns_in, completion, keep=True)

    def _write_behind(self, op: _Op) -> None:
        if self._closed:
            raise StateError("state database is closed")
        op.keep = op.orphan = True
        self._queue.append(op)
        self._queued.set()

    def _complete_turns_in(
        self, conn: sqlite3.Connection, completions: Sequence[_Completion]
    ) -> list[None]:
        """Record :meth:`complete_turn` calls: a few statements for all of them (its value,
        one ``None`` each, makes it usable as their ``bulk``)."""
        self._complete_claims_in(
            conn,
            [(c.claim_id, c.completed_at) for c in completions if c.claim_id is not None],
            [claim_id for c in completions for claim_id in c.forgotten],
        )
        turns = [c for c in completions if c.turn_id is not None]
        for part in _chunks(turns):
            cases = " ".join(["WHEN ? THEN ?"] * len(part))
            conn.execute(
                f"UPDATE relay_turns SET state = CASE turn_id {cases} END,"
                f" ended_at = CASE turn_id {cases} END, error = CASE turn_id {cases} END,"
                " inbound = NULL"
                f" WHERE state = 'running' AND turn_id IN ({','.join('?' * len(part))})",
                [
                    *(v for c in part for v in (c.turn_id, c.state)),
                    *(v for c in part for v in (c.turn_id, c.now)),
                    *(v for c in part for v in (c.turn_id, c.error)),
                    *(c.turn_id for c in part),
                ],
            )
        if turns:
            self._prune_turns_in(conn, max(c.now for c in turns))
        return [None] * len(completions)

    async def release_turn(
        self, handle: ClaimHandle | None, turn_id: int | None, now: float
    ) -> None:
        """One transaction: release the claim and record the turn as ``cancelled``."""
        released = self._dedupe.release(handle)

        def release(conn: sqlite3.Connection) -> None:
            if released and handle is not None:
                self._delete_claims(conn, [handle.claim_id])
            if turn_id is not None:
                self._finish_in(conn, turn_id, "cancelled", now, None)

        await self._run(release, keep=True)

    async def turn(self, turn_id: int) -> TurnRecord | None:
        """The record of one turn, if still kept."""

        def select(conn: sqlite3.Connection) -> TurnRecord | None:
            row = conn.execute("SELECT * FROM relay_turns WHERE turn_id = ?", (turn_id,)).fetchone()
            return None if row is None else _turn(row)

        return await self._run(select, read=True)

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

        return await self._run(select, read=True)

    async def prune(self, now: float) -> int:
        """Drop turn results older than 24 h and dedupe claims outside the window.

        Returns the number of turn records removed. (Outbox expiry is :meth:`expire`.)
        """
        forgotten = self._dedupe.expire(now)

        def prune(conn: sqlite3.Connection) -> int:
            self._delete_claims(conn, forgotten)
            return self._prune_turns_in(conn, now)

        return await self._run(prune, keep=True)

    @staticmethod
    def _start_in(
        conn: sqlite3.Connection,
        turn_id: int,
        session_key: str,
        k_msg: MessageKey | None,
        k_buf: str | None,
        now: float,
        inbound: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO relay_turns"
            " (turn_id, session_key, k_msg, k_buf, state, started_at, inbound)"
            " VALUES (?, ?, ?, ?, 'running', ?, ?)",
            (
                turn_id,
                session_key,
                None if k_msg is None else json.dumps(list(k_msg)),
                k_buf,
                now,
                inbound,
            ),
        )

    def _finish_in(
        self, conn: sqlite3.Connection, turn_id: int, state: str, now: float, error: str | None
    ) -> bool:
        cur = conn.execute(
            "UPDATE relay_turns SET state = ?, ended_at = ?, error = ?, inbound = NULL"
            " WHERE turn_id = ? AND state = 'running'",
            (state, now, error, turn_id),
        )
        self._prune_turns_in(conn, now)
        return cur.rowcount > 0

    def _prune_turns_in(self, conn: sqlite3.Connection, now: float) -> int:
        """Drop ended turn records older than 24 h, and beyond the newest ``turns_max``
        (turn ids only grow, so that is a range of the primary key)."""
        cur = conn.execute(
            "DELETE FROM relay_turns WHERE ended_at IS NOT NULL AND ended_at <= ?",
            (now - TURN_RESULT_TTL_S,),
        )
        removed = cur.rowcount
        floor = self._next_turn_id - self.turns_max
        if floor > self._turns_floor:
            cur = conn.execute(
                "DELETE FROM relay_turns WHERE turn_id < ? AND ended_at IS NOT NULL", (floor,)
            )
            removed += cur.rowcount
            self._turns_floor = floor
        return removed


def _check_end_state(state: str) -> None:
    if state not in TURN_END_STATES:
        raise StateError(f"turn end state must be one of {sorted(TURN_END_STATES)}, got {state!r}")
