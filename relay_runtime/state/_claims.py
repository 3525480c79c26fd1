"""Claims of the replay-dedupe window (RC §4.6, §7.3).

Decisions come from the in-memory DedupeWindow; the claim tables follow it in the same
order through the batch queue (dedupe.py says why that is enough).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from relay_runtime.dedupe import ClaimHandle, ClaimResult, ClaimStatus
from relay_runtime.state._batch import _Op
from relay_runtime.state._records import ClaimRequest, MessageKey, _claim_keys
from relay_runtime.state._sql import delete_claims, insert_claims, start_in
from relay_runtime.state._turns import _Turns

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from relay_runtime.state._batch import DB


class _Claims(_Turns):
    """The claim calls of :class:`~relay_runtime.state.StateDB`."""

    async def claim_turns(
        self, requests: Sequence[ClaimRequest], now: float
    ) -> list[tuple[ClaimResult, int | None]]:
        """Claim each delivery by its keys (RC §4.6, §7.3), in order, and record the turn of
        each ``NEW`` one ``running`` (started at ``now``), without waiting for a commit.

        Per request: the claim and the new turn's id (``None`` unless ``NEW``). ``NEW``: no
        key is known; an ``IN_FLIGHT`` claim holding both keys was taken and its handle
        returned. ``COMPLETED`` (either key completed within the window) wins over
        ``IN_FLIGHT`` (either key running); the handle then names the existing claim. A
        delivery with neither key is not deduplicated: ``NEW`` with no handle. A later
        request sharing a key with an earlier ``NEW`` one is ``IN_FLIGHT``. Results are
        final at once: the records are written behind, committed with the next batch,
        before any operation queued after this call (see :meth:`flush`). Nothing here waits
        on the disk, so a turn starts without a commit on its path. A turn that never starts
        is ended with :meth:`release_unstarted`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not requests:
            return []
        results, write = self._decide(
            [(r.session_key, r.k_msg, r.k_buf, r.inbound) for r in requests], now
        )
        self._write_behind(_Op(write))
        return results

    def _decide(
        self,
        requests: Sequence[tuple[str | None, MessageKey | None, str | None, str | None]],
        now: float,
    ) -> tuple[list[tuple[ClaimResult, int | None]], Callable[[DB], None]]:
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

        def write(conn: DB) -> None:
            delete_claims(conn, forgotten)
            insert_claims(conn, claims, now)
            for turn_id, session_key, k_msg, k_buf, inbound in turns:
                start_in(conn, turn_id, session_key, k_msg, k_buf, now, inbound)

        return results, write

    async def release_unstarted(self, handle: ClaimHandle | None, turn_id: int | None) -> None:
        """One transaction: release the claim and forget the turn record of a turn that
        never started (recorded by :meth:`claim_turns`, then cancelled while queued)."""
        released = self._dedupe.release(handle)

        def release(conn: DB) -> None:
            if released and handle is not None:
                delete_claims(conn, [handle.claim_id])
            if turn_id is not None:
                conn.execute(
                    "DELETE FROM relay_turns WHERE turn_id = ? AND state = 'running'", (turn_id,)
                )

        await self._run(release, keep=True)
