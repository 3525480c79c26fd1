"""Turn records and the durable inbox.

A turn is recorded ``running`` when its delivery is claimed and ends with its state; a
finished one is kept 24 h (at most ``turns_max``). A live delivery's frame is kept with its
turn until the turn ends, so one a crash or shutdown interrupted is resumed by the next
process (at most :data:`~relay_runtime._state.RESUME_MAX` times).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

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
from relay_runtime._state._sql import _turn, complete_claims_in, delete_claims, insert_claims

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay_runtime._state._batch import DB


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


class _Turns(_Engine):
    """The turn and inbox calls of :class:`~relay_runtime._state.StateDB`."""

    _dedupe: DedupeWindow
    _next_turn_id: int
    _turns_floor: int
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

        def write(conn: DB) -> None:
            delete_claims(conn, forgotten)
            insert_claims(conn, claims, now)
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

    def _complete_turns_in(self, conn: DB, completions: Sequence[_Completion]) -> list[None]:
        """Record :meth:`complete_turn` calls: a few statements for all of them (its value,
        one ``None`` each, makes it usable as their ``bulk``)."""
        complete_claims_in(
            conn,
            [(c.claim_id, c.completed_at) for c in completions if c.claim_id is not None],
            [claim_id for c in completions for claim_id in c.forgotten],
        )
        turns = [c for c in completions if c.turn_id is not None]
        for part in chunks(turns):
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

        def release(conn: DB) -> None:
            if released and handle is not None:
                delete_claims(conn, [handle.claim_id])
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
        forgotten = self._dedupe.expire(now)

        def prune(conn: DB) -> int:
            delete_claims(conn, forgotten)
            return self._prune_turns_in(conn, now)

        return await self._run(prune, keep=True)

    def _finish_in(self, conn: DB, turn_id: int, state: str, now: float, error: str | None) -> bool:
        cur = conn.execute(
            "UPDATE relay_turns SET state = ?, ended_at = ?, error = ?, inbound = NULL"
            " WHERE turn_id = ? AND state = 'running'",
            (state, now, error, turn_id),
        )
        self._prune_turns_in(conn, now)
        return cur.rowcount > 0

    def _prune_turns_in(self, conn: DB, now: float) -> int:
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
