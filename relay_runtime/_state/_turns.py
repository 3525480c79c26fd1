"""Turn records and the durable inbox.

A turn is recorded ``running`` when its delivery is claimed and ends with its state; a
finished one is kept 24 h (at most ``turns_max``). A live delivery's frame is kept with its
turn until the turn ends, so one a crash or shutdown interrupted is resumed by the next
process (at most :data:`~relay_runtime._state.RESUME_MAX` times).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, ClassVar, Final

import attrs
import trio

from relay_runtime._dedupe import ClaimHandle, ClaimResult, ClaimStatus, DedupeWindow
from relay_runtime._state._batch import _Op, chunks
from relay_runtime._state._engine import _Engine
from relay_runtime._state._records import (
    TURN_RESULT_TTL_S,
    InboxRecord,
    TurnEndState,
    TurnRecord,
    TurnState,
    _check_end_state,
    _claim_keys,
)
from relay_runtime._state._sql import (
    DedupeRow,
    Forget,
    TurnStart,
    _turn,
    dedupe_row,
    insert_turns,
    record_dedupe,
    turn_row,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay_runtime._state._batch import DB


#: At most how often (seconds of ``now``) completions expire turn records by their 24 h.
TURN_SWEEP_S: Final = 600.0
#: Claim and turn ids reserved in the file at a time (``claims_reserved``/``turns_reserved``
#: in relay_meta): a restart starts above the reservations, so no id a claim or a turn had in
#: the file is handed out again, with one write per this many ids instead of a counter row
#: updated by every batch (in-flight claims are not written at all).
ID_RESERVE: Final = 1024
#: No completed claim forgotten.
_NOTHING_FORGOTTEN: Final = Forget((), prefix=True)


@attrs.frozen
class _ClaimWrite:
    """What one claim call records: the completed claims the window forgot, and the turns
    of the NEW deliveries, ``running`` (an in-flight claim is written with its turn)."""

    forget: Forget
    turns: Sequence[TurnStart]
    #: Ids reserved with this write (relay_meta name -> last id), when it needs more.
    reserve: Sequence[tuple[str, int]] = ()


@attrs.frozen
class _Completion:
    """What one :meth:`StateDB.complete_turn` records."""

    turn_id: int | None
    state: TurnEndState
    now: float
    error: str | None
    dedupe: DedupeRow | None  # the claim completed now (None: no claim changed)
    forget: Forget  # completed claims the window forgot on this completion


def release_claim_in(conn: DB, claim_id: int) -> None:
    """The in-flight claim ``claim_id`` ends (released, or completed with no turn named):
    the running turn that carries it no longer does."""
    conn.execute(
        "UPDATE relay_turns SET claim_id = NULL WHERE state = 'running' AND claim_id = ?",
        (claim_id,),
    )


class _Turns(_Engine):
    """The turn and inbox calls of :class:`~relay_runtime._state.StateDB`."""

    _dedupe: DedupeWindow
    #: Completed claims kept in the file, oldest completion first: claim id -> seq.
    _seqs: OrderedDict[int, int]
    _next_seq: int
    #: Claim and turn ids up to these are reserved in the file (see :data:`ID_RESERVE`).
    _claims_reserved: int
    _turns_reserved: int
    _put_meta_sql: ClassVar[str]
    _next_turn_id: int
    _turns_floor: int
    #: When (``now``) ended turn records were last expired by their 24 h.
    _turns_swept_at: float = float("-inf")
    _resumable: list[InboxRecord]
    turns_max: int

    async def inbox_frames(self, turn_ids: Sequence[int]) -> dict[int, str]:
        """The frames kept in the inbox for ``turn_ids`` (records written behind before
        this call included: it runs after them)."""
        ids = list(turn_ids)

        def select(conn: DB) -> dict[int, str]:
            out: dict[int, str] = {}
            for chunk in chunks(ids):
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
        forgotten: list[int] = []
        resumed: list[tuple[int | None, int]] = []
        dropped: list[int] = []
        for record in records:
            keys = _claim_keys(record.k_msg, None)
            result, gone = self._dedupe.claim(keys, now)
            forgotten.extend(gone)
            if result.status is ClaimStatus.NEW:
                claim_id = None if result.handle is None else result.handle.claim_id
                resumed.append((claim_id, record.turn_id))
            else:
                dropped.append(record.turn_id)
            results.append(result)
        forget = self._forget(forgotten)
        reserve = self._reserve_ids()

        def write(conn: DB) -> None:
            self._put_reserved_in(conn, reserve)
            record_dedupe(conn, (), forget)
            conn.executemany(
                "UPDATE relay_turns SET resumes = resumes + 1, claim_id = ? WHERE turn_id = ?",
                resumed,
            )
            for turn_id in dropped:
                self._finish_in(conn, turn_id, "crashed", now, "duplicate of a completed delivery")

        self._write_behind(_Op(write))
        return results

    def _reserve_ids(self) -> list[tuple[str, int]]:
        """The reservations to record with the claims and turns just decided: for claim
        and turn ids each, a new one if they went past the one recorded."""
        reserve: list[tuple[str, int]] = []
        if self._dedupe.next_claim_id > self._claims_reserved + 1:
            self._claims_reserved = self._dedupe.next_claim_id + ID_RESERVE
            reserve.append(("claims_reserved", self._claims_reserved))
        if self._next_turn_id > self._turns_reserved + 1:
            self._turns_reserved = self._next_turn_id + ID_RESERVE
            reserve.append(("turns_reserved", self._turns_reserved))
        return reserve

    def _put_reserved_in(self, conn: DB, reserve: Sequence[tuple[str, int]]) -> None:
        for name, last in reserve:
            conn.execute(self._put_meta_sql, (name, str(last).encode()))

    def _forget(self, claim_ids: Sequence[int]) -> Forget:
        """What deleting the completed claims ``claim_ids`` (forgotten by the window, oldest
        first) takes: their numbers, and whether they are all the oldest kept."""
        if not claim_ids:
            return _NOTHING_FORGOTTEN
        seqs = [self._seqs.pop(claim_id) for claim_id in claim_ids if claim_id in self._seqs]
        oldest_kept = next(iter(self._seqs.values()), None)
        return Forget(seqs, prefix=oldest_kept is None or oldest_kept > max(seqs, default=0))

    def _take_turn_id(self) -> int:
        turn_id = self._next_turn_id
        self._next_turn_id += 1
        return turn_id

    # --------------------------------------------------------------- turn results

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
        completed, forgotten = self._dedupe.completion(handle, now)
        row = None
        if completed is not None and handle is not None:
            at, keys = completed
            seq = self._next_seq
            row = dedupe_row(seq, handle.claim_id, at, keys)
            self._seqs[handle.claim_id] = seq
            self._next_seq = seq + 1
        completion = _Completion(turn_id, state, now, error, row, self._forget(forgotten))
        if write_behind:
            self._write_behind(_Op(None, self._record_in, completion))
            return
        await self._run(None, self._record_in, completion, keep=True)

    def _record_in(self, conn: DB, writes: Sequence[_ClaimWrite | _Completion]) -> list[None]:
        """Record claim and completion calls, in decision order, in a few statements for
        all of them (its value, one ``None`` each, makes it usable as their ``bulk``).

        The same rows as recording them one after another, written fewer times: a turn
        started and ended here is inserted ended; a claim completed and forgotten here is
        never written; forgotten claims go in one range DELETE.
        """
        started: dict[int, list[object]] = {}
        ended: set[int] = set()
        updates: list[_Completion] = []
        rows: list[DedupeRow] = []
        orphans: list[int] = []
        reserve: dict[str, int] = {}
        latest: float | None = None
        for write in writes:
            if isinstance(write, _ClaimWrite):
                reserve.update(write.reserve)
                for turn in write.turns:
                    started[turn[0]] = turn_row(turn)
                continue
            if write.dedupe is not None:
                rows.append(write.dedupe)
            if write.turn_id is None:
                if write.dedupe is not None:  # rare: a claim completed with no turn named
                    orphans.append(write.dedupe[1])
                continue
            latest = write.now if latest is None else max(latest, write.now)
            row = started.get(write.turn_id)
            if row is None:
                updates.append(write)
            elif write.turn_id not in ended:  # only a running turn ends
                ended.add(write.turn_id)
                row[4:9] = [write.state, row[5], write.now, write.error, None]
        self._put_reserved_in(conn, list(reserve.items()))
        record_dedupe(conn, rows, Forget.merged([w.forget for w in writes]))
        insert_turns(conn, list(started.values()))
        for claim_id in orphans:
            release_claim_in(conn, claim_id)
        for part in chunks(updates):
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
        if latest is not None:
            self._prune_turns_in(conn, latest)
        return [None] * len(writes)

    async def release_turn(
        self, handle: ClaimHandle | None, turn_id: int | None, now: float
    ) -> None:
        """One transaction: release the claim and record the turn as ``cancelled``."""
        released = self._dedupe.release(handle)

        def release(conn: DB) -> None:
            if released and handle is not None:
                release_claim_in(conn, handle.claim_id)
            if turn_id is not None:
                self._finish_in(conn, turn_id, "cancelled", now, None)

        await self._run(release, keep=True)

    async def turn(self, turn_id: int) -> TurnRecord | None:
        """The record of one turn, if still kept."""

        def select(conn: DB) -> TurnRecord | None:
            row = conn.execute("SELECT * FROM relay_turns WHERE turn_id = ?", (turn_id,)).fetchone()
            return None if row is None else _turn(row)

        return await self._run(select, read=True)

    async def turns(self, state: TurnState | None = None) -> list[TurnRecord]:
        """Kept turn records, oldest first, optionally only those in ``state``."""

        def select(conn: DB) -> list[TurnRecord]:
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
        forget = self._forget(self._dedupe.expire(now))

        def prune(conn: DB) -> int:
            record_dedupe(conn, (), forget)
            return self._prune_turns_in(conn, now, sweep=True)

        return await self._run(prune, keep=True)

    def _finish_in(self, conn: DB, turn_id: int, state: str, now: float, error: str | None) -> bool:
        cur = conn.execute(
            "UPDATE relay_turns SET state = ?, ended_at = ?, error = ?, inbound = NULL"
            " WHERE turn_id = ? AND state = 'running'",
            (state, now, error, turn_id),
        )
        self._prune_turns_in(conn, now)
        return cur.rowcount > 0

    def _prune_turns_in(self, conn: DB, now: float, *, sweep: bool = False) -> int:
        """Drop ended turn records beyond the newest ``turns_max`` (turn ids only grow, so
        that is a range of the primary key), and those ended more than 24 h ago.

        The 24 h expiry reads every kept record (no index on ``ended_at``: one would cost
        its upkeep on every turn), so it runs at most every :data:`TURN_SWEEP_S` unless
        ``sweep`` (an explicit :meth:`prune`); a record may outlive its 24 h by that much.
        """
        removed = 0
        if sweep or now - self._turns_swept_at >= TURN_SWEEP_S:
            cur = conn.execute(
                "DELETE FROM relay_turns WHERE ended_at IS NOT NULL AND ended_at <= ?",
                (now - TURN_RESULT_TTL_S,),
            )
            removed = cur.rowcount
            self._turns_swept_at = now
        floor = self._next_turn_id - self.turns_max
        if floor > self._turns_floor:
            cur = conn.execute(
                "DELETE FROM relay_turns WHERE turn_id < ? AND ended_at IS NOT NULL", (floor,)
            )
            removed += cur.rowcount
            self._turns_floor = floor
        return removed
