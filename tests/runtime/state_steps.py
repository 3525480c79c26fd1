"""Test steps on a state store's production path (the :class:`StateStore` interface).

The state db used to carry entry points only tests called (``claim``, ``complete``,
``release``, ``turn_started``, ...). These steps do the same through the calls the
dispatcher and the reply layer make, committing before they return, so tests exercise the
path production takes. :func:`claim_status` is the one inspection: it reads the store's
in-memory dedupe window without claiming anything (through ``relay_runtime.testing``).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING

from relay_runtime._state import ClaimRequest, ClaimResult, ClaimStatus, StateDB, TurnStore
from relay_runtime.testing import claim_status as window_status
from tests.pg import PG_DSN

if TYPE_CHECKING:
    from relay_runtime._dedupe import ClaimHandle
    from relay_runtime._state import MessageKey, OutboxEntry, OutboxStore, TurnEndState

#: Every gateway id a test run uses starts with this, so runs never collide.
PG_RUN = f"test-{uuid.uuid4().hex[:10]}-"


def pg_gateway_id(place: object) -> str:
    """A gateway id of this test run for ``place`` (a tmp path: one store per place)."""
    return PG_RUN + hashlib.sha256(str(place).encode()).hexdigest()[:16]


def drop_pg_gateways(prefix: str = PG_RUN) -> None:
    """Delete every row of the gateways whose id starts with ``prefix``."""
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn, conn.transaction():
        for table in ("dedupe", "turns", "outbox", "meta", "lease"):
            conn.execute(
                f"DELETE FROM relay_state_{table} WHERE gateway_id LIKE %s".encode(),
                (prefix + "%",),
            )


#: The session a bare :func:`claim` records its turn under.
CLAIM_SESSION = "test:claim"


async def claim_turn(
    db: TurnStore, session_key: str, k_msg: MessageKey | None, k_buf: str | None, now: float
) -> tuple[ClaimResult, int | None]:
    """Claim one delivery and, if NEW, record its turn ``running``; committed on return."""
    (result,) = await db.claim_turns([ClaimRequest(session_key, k_msg, k_buf)], now)
    await db.flush()
    return result


async def claim(
    db: TurnStore, k_msg: MessageKey | None, k_buf: str | None, now: float
) -> ClaimResult:
    """Claim one delivery (its turn is recorded under :data:`CLAIM_SESSION`)."""
    result, _ = await claim_turn(db, CLAIM_SESSION, k_msg, k_buf, now)
    return result


async def complete(db: TurnStore, handle: ClaimHandle | None, now: float) -> None:
    """Mark a claim COMPLETED (no turn to end); committed on return."""
    await db.complete_turn(handle, None, "completed", now)


async def release(db: TurnStore, handle: ClaimHandle | None) -> None:
    """Release an IN_FLIGHT claim (a completed one is left alone); committed on return."""
    await db.release_unstarted(handle, None)


async def turn_started(db: TurnStore, session_key: str, now: float) -> int:
    """Record a turn ``running`` for a delivery without keys; its turn id."""
    result, turn_id = await claim_turn(db, session_key, None, None, now)
    assert result.status is ClaimStatus.NEW and turn_id is not None
    return turn_id


async def turn_finished(
    db: TurnStore, turn_id: int, state: TurnEndState, now: float, error: str | None = None
) -> None:
    """Record a turn's end state (no claim to complete); committed on return."""
    await db.complete_turn(None, turn_id, state, now, error)


async def peek_next(db: OutboxStore, now: float) -> OutboxEntry | None:
    """The oldest outbox entry not expired at ``now``."""
    batch = await db.peek_batch(now, 1)
    return batch[0] if batch else None


async def claim_status(db: StateDB, k_msg: MessageKey | None, k_buf: str | None) -> ClaimStatus:
    """What a claim of these keys would return now, without claiming (inspection)."""
    return window_status(db, k_msg, k_buf)
