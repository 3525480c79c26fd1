"""The state directory treated like ``~/.ssh``: checked before anything in it is trusted.

The state directory holds the credentials ``enroll`` wrote (``relay.env``) and the database
with the trust store, the reply outbox and the dedupe window (``relay.db``). Whoever can
write to either can hand the gateway a relay URL of their choosing (and with it the bearer
token minted for every dial) or promote themselves to admin. So, before start-up reads
anything from the directory:

* :func:`check_env_file` — the directory and ``relay.env`` belong to us (or root) and
  nobody else can write them; ``relay.env`` is readable by us only (0600). Called by
  :meth:`relay_runtime.config.GatewayConfig.load` before it reads the file.
* :func:`check_state_dir` — the same for the directory and the ``relay.db`` files, then a
  read-only integrity check of ``relay.db`` (``PRAGMA quick_check`` and our tables), and the
  refusal of an empty or missing database in a directory that has been used before, unless
  the operator asked for fresh state. Called by ``relay-runtime run`` before anything opens
  the database.

Every refusal is a :class:`StateDirError` (a :class:`~relay_runtime.config.ConfigError`, so
exit status 2) whose one-line message names the file and the command that fixes it. Nothing
here modifies or locks anything (see :func:`_check_database` for the one file SQLite may add).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shlex
import sqlite3
import stat
from pathlib import Path
from typing import Final
from urllib.parse import quote

from relay_runtime.config._values import ENV_FILE_NAME, ConfigError

DB_FILE_NAME: Final = "relay.db"
LOCK_SUFFIX: Final = ".lock"
#: SQLite's companions of ``relay.db``, held to the same rule as the database itself.
DB_COMPANIONS: Final = ("-wal", "-shm", LOCK_SUFFIX)
#: The ``run`` option that accepts an empty database in a used state directory.
FRESH_STATE_FLAG: Final = "--fresh-state"
#: Tables whose presence says the file is ours: the state db's and the trust store's.
OUR_TABLES: Final = frozenset({"relay_schema", "trust_meta"})

_GROUP_OTHER_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH
_GROUP_OTHER_ANY: Final = stat.S_IRWXG | stat.S_IRWXO


class StateDirError(ConfigError):
    """The state directory or a file in it must not be used as it is (exit status 2).

    ``name`` is the path at fault; ``problem`` says what is wrong and how to fix it.
    """


def _q(path: Path) -> str:
    return shlex.quote(os.fspath(path))


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat(path)`` (following links), ``None`` when it does not exist."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _check_owner(path: Path, info: os.stat_result, what: str) -> None:
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise StateDirError(
            os.fspath(path),
            f"{what} is owned by {_user(info.st_uid)}, not by {_user(me)}: if you did not put "
            f"it there, remove it; otherwise fix: sudo chown {_user(me)} {_q(path)}",
        )


def _check_dir(path: Path) -> bool:
    """The state directory is ours and not writable by others; ``False`` if it is missing."""
    info = _stat(path)
    if info is None:
        return False
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(os.fspath(path), "the state directory is not a directory")
    _check_owner(path, info, "the state directory")
    if info.st_mode & _GROUP_OTHER_WRITE:
        raise StateDirError(
            os.fspath(path),
            f"the state directory is writable by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); fix: chmod 700 {_q(path)}",
        )
    return True


def _check_file(path: Path, what: str, *, private: bool) -> os.stat_result | None:
    """``path`` is ours, a regular file, not writable (``private``: not accessible) by others."""
    info = _stat(path)
    if info is None:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise StateDirError(os.fspath(path), f"{what} is not a regular file; remove it")
    _check_owner(path, info, what)
    mask = _GROUP_OTHER_ANY if private else _GROUP_OTHER_WRITE
    if info.st_mode & mask:
        whom = "readable or writable" if private else "writable"
        raise StateDirError(
            os.fspath(path),
            f"{what} is {whom} by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"fix: chmod 600 {_q(path)}",
        )
    return info


def check_env_file(state_dir: Path) -> bool:
    """Refuse a ``relay.env`` (and a state directory) anyone but us could have written.

    Returns whether ``<state_dir>/relay.env`` exists (and may be read). The file must be a
    regular file owned by us (or root) with no group/other permission bits (0600 or 0400);
    the directory must be ours and not group/world-writable. ``OSError`` when they cannot
    be examined.
    """
    if not _check_dir(state_dir):
        return False
    path = state_dir / ENV_FILE_NAME
    if path.is_dir():
        return False  # nothing to read; enroll will say it cannot write there
    return _check_file(path, f"{ENV_FILE_NAME} (credentials)", private=True) is not None


def used_before(state_dir: Path) -> bool:
    """Whether a gateway has run on ``state_dir``: its lock file or a WAL file exists.

    Every gateway creates ``relay.db.lock`` when it opens the database and never removes it;
    a ``relay.db-wal`` is written by any use of the database.
    """
    db = state_dir / DB_FILE_NAME
    return any(os.path.lexists(db.with_name(db.name + suffix)) for suffix in (LOCK_SUFFIX, "-wal"))


def check_state_dir(state_dir: Path, *, fresh: bool = False) -> None:
    """Everything ``run`` needs to trust in ``state_dir``, checked without changing it.

    A missing directory is fine (``run`` creates it, mode 0700). Otherwise: the directory,
    ``relay.env`` and the ``relay.db`` files pass the ownership and permission rules; a
    non-empty ``relay.db`` opens read-only, passes ``PRAGMA quick_check`` and holds our
    tables; an empty or missing ``relay.db`` in a directory that has been used before is
    refused unless ``fresh`` (the ``--fresh-state`` option). Raises :class:`StateDirError`.
    """
    try:
        _check_state_dir(state_dir, fresh=fresh)
    except OSError as exc:  # a parent we may not search, an I/O error
        where = exc.filename if exc.filename else state_dir
        raise StateDirError(os.fspath(where), f"cannot be examined ({exc.strerror})") from None


def _check_state_dir(state_dir: Path, *, fresh: bool) -> None:
    if not check_env_file(state_dir) and not state_dir.exists():
        return
    db = state_dir / DB_FILE_NAME
    info = _check_file(db, DB_FILE_NAME, private=False)
    for suffix in DB_COMPANIONS:
        companion = db.with_name(db.name + suffix)
        _check_file(companion, companion.name, private=False)
    wal = _stat(db.with_name(db.name + "-wal"))
    has_wal = wal is not None and wal.st_size > 0
    if info is None or (info.st_size == 0 and not has_wal):
        if used_before(state_dir) and not fresh:
            state = "missing" if info is None else "empty (0 bytes)"
            raise StateDirError(
                os.fspath(db),
                f"the state database is {state}, but this state directory has been used "
                "before: the trust store (clients, admins, invites) and the dedupe window "
                "are gone. Restore relay.db from a backup (docs/operations.md, Backups), or "
                f"run with {FRESH_STATE_FLAG} to start with empty state",
            )
        return
    _check_database(db)


def _check_database(db: Path) -> None:
    """Open ``db`` read-only and check its structure and our tables.

    Without a ``-wal`` file (a clean stop) the file is opened ``immutable``, so SQLite creates
    nothing next to it; with one, the WAL holds committed pages the check must see, and a
    read-only connection may then add the ``-shm`` index the gateway would create anyway.
    """
    uri = f"file:{quote(os.fspath(db))}?mode=ro"
    if not os.path.lexists(db.with_name(db.name + "-wal")):
        uri += "&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as conn:
            verdict = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
    except sqlite3.OperationalError as exc:
        if not os.access(db, os.R_OK):
            raise StateDirError(
                os.fspath(db),
                f"the state database cannot be read ({os.strerror(errno.EACCES)}); "
                f"fix: chmod 600 {_q(db)}",
            ) from None
        if "locked" in str(exc) or "busy" in str(exc):
            return  # a running gateway holds it; opening it will say so in one line
        raise _damaged(db, str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise _damaged(db, str(exc)) from None
    if verdict != ["ok"]:
        raise _damaged(db, "; ".join(str(v) for v in verdict[:2]))
    if not tables & OUR_TABLES:
        raise StateDirError(
            os.fspath(db),
            "is an SQLite database without relay-runtime tables (no relay_schema or "
            "trust_meta): this is not a state database; move it away or point "
            "--state-dir elsewhere",
        )


def _damaged(db: Path, reason: str) -> StateDirError:
    recovered = db.with_name("relay.recovered.db")
    return StateDirError(
        os.fspath(db),
        f"the state database is damaged ({reason}). Stop and restore it from a backup "
        "(docs/operations.md, Backups); with no backup, keep the trust tables by salvaging "
        f"what can be read: sqlite3 {_q(db)} .recover | sqlite3 {_q(recovered)}, then move "
        f"{recovered.name} to {db.name} (remove {db.name}-wal and {db.name}-shm); to start "
        f"empty instead, move {db.name} away and run with {FRESH_STATE_FLAG}",
    )
