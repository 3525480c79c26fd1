"""Opening a state store and its crash recovery (:class:`_Store`, shared by every store),
and the SQLite store :class:`StateDB`."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import trio

from relay_runtime._dedupe import DedupeWindow
from relay_runtime._state._claims import _Claims
from relay_runtime._state._outbox import _Outbox
from relay_runtime._state._records import (
    DB_FILENAME,
    REPLY_KEY_BYTES,
    RESUME_MAX,
    InboxRecord,
    StateError,
)
from relay_runtime._state._schema import connect, lock_state
from relay_runtime._state._sql import Forget, _turn, record_dedupe

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay_runtime._state._batch import DB

logger = logging.getLogger("relay_runtime.state")


def check_sizes(outbox_max: int, **positive: float) -> None:
    """Refuse sizes and windows out of range (:class:`StateError`)."""
    if outbox_max < 0:
        raise StateError(f"outbox_max must be >= 0, got {outbox_max!r}")
    for name, value in positive.items():
        if value <= 0:
            raise StateError(f"{name} must be > 0, got {value!r}")


class _Store(_Claims, _Outbox):
    """A state store on one connection (:class:`DB`): the calls of the interface, crash
    recovery and loading at open. Each store adds how it connects (``open``).

    Sizes and windows come from the configuration (RC §10): ``outbox_max`` (0 = every put
    fails fast), ``outbox_ttl_s`` (TTL of a queued ``send``), ``dedupe_window_s`` and
    ``dedupe_max`` (completed deliveries remembered; each delivery's ``K_msg`` and ``K_buf``
    together count once).
    """

    #: Stores (or replaces) the reply key, its one parameter.
    _put_reply_key_sql: ClassVar[str] = (
        "INSERT OR REPLACE INTO relay_meta (name, value) VALUES ('reply_key', ?)"
    )
    #: Stores (or replaces) a value of relay_meta: its name and value.
    _put_meta_sql: ClassVar[str] = "INSERT OR REPLACE INTO relay_meta (name, value) VALUES (?, ?)"

    def __init__(
        self,
        conn: DB,
        location: str,
        *,
        outbox_max: int,
        outbox_ttl_s: float,
        dedupe_window_s: float,
        dedupe_max: int,
        dedupe: DedupeWindow | None = None,
        seqs: OrderedDict[int, int] | None = None,
        next_turn_id: int = 1,
        lock_fd: int | None = None,
        reply_key: bytes | None = None,
        resumable: Sequence[InboxRecord] = (),
        turns_max: int = 100_000,
    ) -> None:
        super().__init__(conn, location, lock_fd)
        self.outbox_max = outbox_max
        self.outbox_ttl_s = outbox_ttl_s
        self.dedupe_window_s = dedupe_window_s
        self.dedupe_max = dedupe_max
        #: Decides every claim; the file follows it write-behind (see dedupe.py).
        self._dedupe = dedupe or DedupeWindow(window_s=dedupe_window_s, max_completed=dedupe_max)
        #: The completed claims in the file (claim id -> seq, oldest completion first).
        self._seqs = seqs if seqs is not None else OrderedDict()
        self._next_seq = 1 + max(self._seqs.values(), default=0)
        self._claims_reserved = self._dedupe.next_claim_id - 1
        self._turns_reserved = next_turn_id - 1
        self._next_turn_id = next_turn_id
        #: Turn records kept at most (ended ones beyond it are dropped, oldest first).
        self.turns_max = turns_max
        self._turns_floor = 0
        #: The key the ``requestId``s of replies are derived with (kept in the file).
        self.reply_key = reply_key if reply_key is not None else os.urandom(REPLY_KEY_BYTES)
        self._resumable = list(resumable)

    @classmethod
    async def _opened(
        cls, conn: DB, location: str, now: float, dedupe_window_s: float, dedupe_max: int
    ) -> dict[str, Any]:
        """Recover and load an open connection: the constructor's arguments it yields."""
        resumable, reply_key = await trio.to_thread.run_sync(cls._prepare, conn, location, now)
        dedupe = DedupeWindow(window_s=dedupe_window_s, max_completed=dedupe_max)
        seqs: OrderedDict[int, int] = OrderedDict()
        next_turn_id = await trio.to_thread.run_sync(cls._load, conn, dedupe, seqs, now)
        return {
            "dedupe": dedupe,
            "seqs": seqs,
            "next_turn_id": next_turn_id,
            "reply_key": reply_key,
            "resumable": resumable,
        }

    @classmethod
    def _prepare(cls, conn: DB, location: str, now: float) -> tuple[list[InboxRecord], bytes]:
        """Recover from a crash; the deliveries to resume and the gateway's reply key."""
        try:
            resumable = cls._recover(conn, now)
            row = conn.execute("SELECT value FROM relay_meta WHERE name = 'reply_key'").fetchone()
            if row is not None and len(row[0]) == REPLY_KEY_BYTES:
                return resumable, bytes(row[0])
            key = os.urandom(REPLY_KEY_BYTES)
            conn.execute(cls._put_reply_key_sql, (key,))
        except cls._db_errors as exc:
            raise StateError(f"state database {location!r} is unusable: {exc}") from exc
        return resumable, key

    @classmethod
    def _load(cls, conn: DB, dedupe: DedupeWindow, seqs: OrderedDict[int, int], now: float) -> int:
        """Read the completed claims into ``dedupe`` and ``seqs`` (trimmed to the window's
        bounds in both places and in the file); return the next turn id."""
        rows = conn.execute(
            "SELECT seq, claim_id, completed_at, key1, key2 FROM relay_dedupe ORDER BY seq"
        ).fetchall()
        for seq, claim_id, completed_at, *keys in rows:
            dedupe.load_completed(claim_id, [k for k in keys if k is not None], completed_at)
            seqs[claim_id] = seq
        forgotten = dedupe.expire(now)
        while dedupe.completed > dedupe.max_completed:
            forgotten.extend(dedupe.trim_one())
        reserved = {
            name: int(bytes(value))
            for name, value in conn.execute(
                "SELECT name, value FROM relay_meta"
                " WHERE name IN ('claims_reserved', 'turns_reserved')"
            )
        }
        dedupe.skip_to(max(cls._last_claim_id(conn), reserved.get("claims_reserved", 0)) + 1)
        if forgotten:
            gone = [seqs.pop(claim_id) for claim_id in forgotten]
            oldest_kept = next(iter(seqs.values()), None)
            forget = Forget(gone, prefix=oldest_kept is None or oldest_kept > max(gone))
            conn.execute("BEGIN IMMEDIATE")
            try:
                record_dedupe(conn, (), forget)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return max(cls._last_turn_id(conn), reserved.get("turns_reserved", 0)) + 1

    @staticmethod
    def _last_claim_id(conn: DB) -> int:
        """The highest claim id the file holds (of a completed claim, or a running turn's);
        the reservation in relay_meta covers the others (see ``CLAIM_ID_RESERVE``)."""
        completed = conn.execute("SELECT max(claim_id) FROM relay_dedupe").fetchone()[0]
        running = conn.execute(
            "SELECT max(claim_id) FROM relay_turns WHERE state = 'running'"
        ).fetchone()[0]
        return max(completed or 0, running or 0)

    @staticmethod
    def _last_turn_id(conn: DB) -> int:
        """The highest turn id kept (the reservation in relay_meta covers the others)."""
        row = conn.execute("SELECT max(turn_id) FROM relay_turns").fetchone()
        return int(row[0] or 0)

    @staticmethod
    def _recover(conn: DB, now: float) -> list[InboxRecord]:
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
            claims = conn.execute(
                "SELECT count(*) FROM relay_turns WHERE state = 'running' AND claim_id IS NOT NULL"
            ).fetchone()[0]
            crashed = conn.execute(
                "UPDATE relay_turns SET state = 'crashed', ended_at = ?, inbound = NULL"
                " WHERE state = 'running'"
                " AND (inbound IS NULL OR k_buf IS NOT NULL OR resumes >= ?)",
                (now, RESUME_MAX),
            ).rowcount
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
            logger.info("relay state: released %d in-flight dedupe claim(s) after a crash", claims)
        return resumable

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class StateDB(_Store):
    """The SQLite store: ``<state_dir>/relay.db``. Open with :meth:`open`; use as
    ``async with``."""

    #: The database file.
    path: Path

    _connect = staticmethod(connect)

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
        check_sizes(
            outbox_max,
            outbox_ttl_s=outbox_ttl_s,
            dedupe_window_s=dedupe_window_s,
            dedupe_max=dedupe_max,
            turns_max=turns_max,
        )
        path = Path(state_dir) / DB_FILENAME
        lock_fd = await trio.to_thread.run_sync(lock_state, path)
        try:
            conn = await trio.to_thread.run_sync(cls._connect, path, now)
            try:
                loaded = await cls._opened(conn, str(path), now, dedupe_window_s, dedupe_max)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        db = cls(
            conn,
            str(path),
            lock_fd=lock_fd,
            outbox_max=outbox_max,
            outbox_ttl_s=outbox_ttl_s,
            dedupe_window_s=dedupe_window_s,
            dedupe_max=dedupe_max,
            turns_max=turns_max,
            **loaded,
        )
        db.path = path
        return db
