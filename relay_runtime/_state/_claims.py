"""Claims of the replay-dedupe window (RC §4.6, §7.3).

Decisions come from the in-memory DedupeWindow; the file follows it in the same order
through the batch queue (dedupe.py says why that is enough): an in-flight claim is
written only as its running turn's ``claim_id``, a completed one as a row of
``relay_dedupe`` (see ``_schema``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from relay_runtime._dedupe import ClaimHandle, ClaimResult, ClaimStatus
from relay_runtime._state._batch import _Op
from relay_runtime._state._records import ClaimRequest, _claim_keys
from relay_runtime._state._turns import _ClaimWrite, _Turns, release_claim_in

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay_runtime._state._batch import DB
    from relay_runtime._state._sql import TurnStart


class _Claims(_Turns):
    """The claim calls of :class:`~relay_runtime._state.StateDB`."""

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
        results, write = self._decide(requests, now)
        self._write_behind(write)
        return results

    def _decide(
        self, requests: Sequence[ClaimRequest], now: float
    ) -> tuple[list[tuple[ClaimResult, int | None]], _Op]:
        """Claim ``requests`` in memory now; the write that records them (and the turns of
        requests with a session key that are ``NEW``)."""
        results: list[tuple[ClaimResult, int | None]] = []
        turns: list[TurnStart] = []
        forgotten: list[int] = []
        claim = self._dedupe.claim
        for request in requests:
            k_msg, k_buf = request.k_msg, request.k_buf
            result, gone = claim(_claim_keys(k_msg, k_buf), now)
            if gone:
                forgotten.extend(gone)
            turn_id = None
            if result.status is ClaimStatus.NEW and request.session_key is not None:
                turn_id = self._take_turn_id()
                claim_id = None if result.handle is None else result.handle.claim_id
                turns.append(
                    (turn_id, request.session_key, k_msg, k_buf, now, request.inbound, claim_id)
                )
            results.append((result, turn_id))
        write = _ClaimWrite(self._forget(forgotten), turns, self._reserve_ids())
        return results, _Op(None, self._record_in, write)

    async def release_unstarted(self, handle: ClaimHandle | None, turn_id: int | None) -> None:
        """One transaction: release the claim and forget the turn record of a turn that
        never started (recorded by :meth:`claim_turns`, then cancelled while queued)."""
        released = self._dedupe.release(handle)

        def release(conn: DB) -> None:
            if released and handle is not None:
                release_claim_in(conn, handle.claim_id)
            if turn_id is not None:
                conn.execute(
                    "DELETE FROM relay_turns WHERE turn_id = ? AND state = 'running'", (turn_id,)
                )

        await self._run(release, keep=True)
