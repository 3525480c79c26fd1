"""The SQLite file: where it is, who may open it, and its versioned schema.

Everything lives in one SQLite file, ``<state_dir>/relay.db`` (WAL, ``synchronous=FULL``,
mode 0600), held by one gateway at a time (``flock`` on ``relay.db.lock``). Our tables are
prefixed ``relay_``; the trust store keeps its own ``trust_`` tables in the same file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import stat
from typing import TYPE_CHECKING, Final

from relay_runtime._state._records import StateError

if TYPE_CHECKING:
    from pathlib import Path

BUSY_TIMEOUT_MS: Final = 5000
_SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")

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
    # Issue 15: the durable record per message in fewer rows. A completed claim is one row
    # of relay_dedupe, written once at completion with its keys, numbered in completion
    # order (seq), so the window forgetting its oldest ones is one range DELETE. An
    # in-flight claim is not written at all (recovery releases it anyway): a running turn
    # carries its claim id, which relay_dedupe_claims (a view now) shows as in flight.
    # The one turn index left holds the running turns (recovery); the 24 h expiry of ended
    # ones scans, rarely (see _turns.TURN_SWEEP_S), instead of indexing every turn's end.
    # relay_turns is rebuilt without AUTOINCREMENT (whose counter row was rewritten by every
    # batch): ids are reserved in relay_meta a block at a time instead (_turns.ID_RESERVE).
    """
    CREATE TABLE relay_dedupe (
        seq          INTEGER PRIMARY KEY,
        claim_id     INTEGER NOT NULL,
        completed_at REAL    NOT NULL,
        key1         TEXT,
        key2         TEXT
    );
    INSERT INTO relay_dedupe (claim_id, completed_at, key1, key2)
        SELECT c.claim_id, c.completed_at,
               (SELECT min(k.key) FROM relay_dedupe_keys k WHERE k.claim_id = c.claim_id),
               (SELECT CASE WHEN count(*) > 1 THEN max(k.key) END FROM relay_dedupe_keys k
                WHERE k.claim_id = c.claim_id)
        FROM relay_dedupe_claims c WHERE c.state = 'completed'
        ORDER BY c.completed_at, c.claim_id;
    INSERT OR REPLACE INTO relay_meta (name, value)
        SELECT name || '_reserved', CAST(CAST(seq AS TEXT) AS BLOB)
        FROM (SELECT CASE name WHEN 'relay_dedupe_claims' THEN 'claims'
                               WHEN 'relay_turns' THEN 'turns' END AS name, seq
              FROM sqlite_sequence)
        WHERE name IS NOT NULL;
    DROP TABLE relay_dedupe_keys;
    DROP TABLE relay_dedupe_claims;
    CREATE TABLE relay_turns_v3 (
        turn_id     INTEGER PRIMARY KEY,
        session_key TEXT    NOT NULL,
        k_msg       TEXT,
        k_buf       TEXT,
        state       TEXT    NOT NULL,
        started_at  REAL    NOT NULL,
        ended_at    REAL,
        error       TEXT,
        inbound     TEXT,
        resumes     INTEGER NOT NULL DEFAULT 0,
        claim_id    INTEGER
    );
    INSERT INTO relay_turns_v3 (turn_id, session_key, k_msg, k_buf, state, started_at,
                                ended_at, error, inbound, resumes)
        SELECT turn_id, session_key, k_msg, k_buf, state, started_at, ended_at, error,
               inbound, resumes
        FROM relay_turns;
    DROP TABLE relay_turns;
    ALTER TABLE relay_turns_v3 RENAME TO relay_turns;
    CREATE INDEX relay_turns_running ON relay_turns (turn_id) WHERE state = 'running';
    CREATE VIEW relay_dedupe_claims (claim_id, state, created_at, completed_at) AS
        SELECT claim_id, 'in_flight', started_at, NULL FROM relay_turns
        WHERE state = 'running' AND claim_id IS NOT NULL
        UNION ALL
        SELECT claim_id, 'completed', NULL, completed_at FROM relay_dedupe;
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


def lock_state(path: Path) -> int:
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


def create_private_file(path: Path) -> None:
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


def connect(path: Path, now: float) -> sqlite3.Connection:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_private_file(path)
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
        migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StateError(f"state database {str(path)!r} is unusable: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: Path) -> None:
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
