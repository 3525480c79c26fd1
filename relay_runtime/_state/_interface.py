"""The state interface: what the dispatcher, the reply layer and the gateway use.

Every store implements :class:`StateStore` (SQLite: :class:`~relay_runtime._state.StateDB`).
It speaks in records (``_records``) and the dedupe window's claims, never in a database's
types; batching and group commit are the store's business, not the caller's. Every call
that writes is a coroutine; "committed on return" means durable when it returns. Calls
said to be *written behind* decide at once (from memory) and become durable in decision
order with a later batch, at the latest by :meth:`TurnStore.flush`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay_runtime._dedupe import ClaimHandle, ClaimResult
    from relay_runtime._state._records import (
        Attempt,
        ClaimRequest,
        InboxRecord,
        OutboxEntry,
        OutboxKind,
        TurnEndState,
    )


class TurnStore(Protocol):
    """Claims, turn records and the durable inbox: the part the dispatcher uses."""

    async def claim_turns(
        self, requests: Sequence[ClaimRequest], now: float
    ) -> list[tuple[ClaimResult, int | None]]:
        """Claim each delivery in order (RC §7.3) and record a NEW one's turn ``running``:
        the claim and the new turn id (``None`` unless NEW). Decided at once, written
        behind; a later request sharing a key with an earlier NEW one is ``IN_FLIGHT``."""

    async def flush(self) -> None:
        """Commit what was written behind so far; raise :class:`StateError` while a
        written-behind record cannot be committed (nothing that depends on it may go out)."""

    async def wait_queued(self) -> None:
        """Wait until records written behind are waiting for a commit."""

    async def release_unstarted(self, handle: ClaimHandle | None, turn_id: int | None) -> None:
        """Release the claim and forget the record of a turn that never started."""

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
        """Commit the claim as COMPLETED and the turn's end state, in one transaction
        (``write_behind``: decided at once, committed by the next :meth:`flush`)."""

    async def release_turn(
        self, handle: ClaimHandle | None, turn_id: int | None, now: float
    ) -> None:
        """Release the claim and record the turn cancelled, in one transaction."""

    def take_resumable(self) -> list[InboxRecord]:
        """Live deliveries the previous process admitted and did not finish (once)."""

    async def claim_resumed(self, records: Sequence[InboxRecord], now: float) -> list[ClaimResult]:
        """Claim resumed deliveries under their recorded turns; decided at once."""

    async def inbox_frames(self, turn_ids: Sequence[int]) -> dict[int, str]:
        """The frames kept in the inbox for these turns (after what is written behind)."""


class OutboxStore(Protocol):
    """The reply outbox (RC §6.2): the part the reply layer uses."""

    @property
    def outbox_max(self) -> int:
        """The outbox bound (0 = nothing is ever queued)."""

    async def put(
        self,
        identity_platform: str,
        identity_bot_id: str,
        action_json: str,
        request_id: str,
        kind: OutboxKind,
        now: float,
    ) -> int:
        """Commit one entry; raise :class:`OutboxFull` at the bound."""

    async def peek_batch(self, now: float, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` of the oldest live entries, oldest first."""

    async def delete(self, outbox_id: int) -> bool:
        """Remove an entry."""

    async def delete_many(self, outbox_ids: list[int]) -> list[int]:
        """Remove several entries in one transaction; the ids that were there."""

    async def bump_attempts(self, outbox_id: int) -> Attempt:
        """Count one failed delivery (the last one deletes the entry)."""

    async def expire(self, now: float) -> list[OutboxEntry]:
        """Delete expired entries."""

    async def count(self) -> int:
        """Entries queued."""

    async def entries(self) -> list[OutboxEntry]:
        """Every queued entry, oldest first."""


class StateStore(TurnStore, OutboxStore, Protocol):
    """A gateway's whole state: what the gateway opens, watches and closes."""

    @property
    def reply_key(self) -> bytes:
        """The gateway's key replies' ``requestId``s are derived with (kept by the store)."""

    @property
    def location(self) -> str:
        """Where the state lives, for messages (a file path; never a secret)."""

    @property
    def failing_since(self) -> float | None:
        """When (trio clock) the open storage-failure episode began; None: writes work."""

    @property
    def failure_cause(self) -> str | None:
        """What failed first in the current (or last) storage-failure episode."""

    async def wait_failing(self) -> None:
        """Wait until a storage-failure episode is open."""

    async def wait_recovered(self) -> None:
        """Wait until no storage-failure episode is open."""

    async def aclose(self) -> None:
        """Commit what is queued (bounded) and release the store; idempotent."""
