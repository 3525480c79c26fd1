"""What the dispatcher works with: deliveries, the agent and trust seams, its counters.

An ``inbound``/``passthrough_forward`` frame (:data:`~relay_runtime._hand_off.InboundItem`,
handed over by the supervisor) becomes a
:class:`Delivery` once admitted; the :data:`Agent` runs for it if the
:class:`TrustEvaluator` lets it (RC §7, TR §0).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import attrs

from protocol._events import MessageEvent
from relay_runtime._state import ClaimHandle, MessageKey
from relay_runtime._turn import Turn

if TYPE_CHECKING:
    from trust import TrustOutcome


Agent = Callable[[Turn], Awaitable[str | None]]


class TrustEvaluator(Protocol):
    """The trust seam: decides whether the agent runs for one event (TR §0)."""

    async def evaluate(self, event: MessageEvent) -> TrustOutcome:
        """Return the event's outcome; raises nothing but ``trio.Cancelled``."""


@attrs.define(eq=False)
class Delivery:
    """One admitted delivery, from claim to ack."""

    event: MessageEvent
    buffer_id: str | None
    session_key: str
    k_msg: MessageKey | None
    #: The frame, kept in the durable inbox until the turn ends (live deliveries, and any
    #: delivery parked beyond the pending bound).
    inbound: str | None = None
    #: Admitted beyond the pending bound: holds no slot, waits in the durable inbox.
    parked: bool = False
    handle: ClaimHandle | None = None
    turn_id: int | None = None

    @property
    def resumable(self) -> bool:
        """Live and left unfinished: the next process resumes it from the inbox (so
        nothing to release at shutdown: its record stays ``running``)."""
        return self.inbound is not None and not self.buffer_id and self.turn_id is not None


@attrs.define
class DispatchStats:
    """Counters for ``gateway.stats``."""

    received: int = 0
    duplicates: int = 0
    completed: int = 0
    failed: int = 0
    interrupted: int = 0
    denied: int = 0
    empty: int = 0
    cancelled: int = 0
    timed_out: int = 0
    dropped: int = 0
    acked: int = 0
    ack_failures: int = 0
    paused: int = 0
    resumed: int = 0
    parked: int = 0
