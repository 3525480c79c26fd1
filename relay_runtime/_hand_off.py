"""Handing inbound frames to the dispatcher with TCP backpressure (RC §7.2).

The socket reader calls :meth:`InboundHandOff.put` for each ``inbound`` and
``passthrough_forward``; while the dispatcher's queue is full the reader waits, so the
connector sees the socket stop reading. Each wait is logged as one episode, not per frame.
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import trio

from protocol._frames import Inbound, PassthroughForwardFrame

# The supervisor's logger: operators filter on it, and these lines were always its own.
log = logging.getLogger("relay_runtime.supervisor")

InboundItem = Inbound | PassthroughForwardFrame


@attrs.define
class _Stall:
    """One backpressure episode: the reader waiting on a full inbound queue."""

    started: float
    resumed: float
    frames: int = 0


class StallCounts(Protocol):
    """Where the episodes are counted (the supervisor's stats)."""

    inbound_stalls: int
    inbound_stalled_frames: int


class InboundHandOff:
    """The reader's side of the dispatcher's bounded inbound queue."""

    def __init__(self, inbound: trio.MemorySendChannel[InboundItem], counts: StallCounts) -> None:
        self._inbound = inbound
        self._stall: _Stall | None = None
        self._counts = counts

    def put_nowait(self, item: InboundItem) -> bool:
        """Give one frame to the dispatcher if its queue has room now; False if it is full
        (the caller then waits in :meth:`put`, which opens the backpressure episode)."""
        stall = self._stall
        if stall is not None:
            queued = self._inbound.statistics()
            if queued.current_buffer_used <= queued.max_buffer_size // 2:
                self.end_stall("the queue has room again")
        try:
            self._inbound.send_nowait(item)
        except trio.WouldBlock:
            return False
        return True

    async def put(self, item: InboundItem) -> None:
        """Give one frame to the dispatcher, waiting (and so not reading) while it is full.

        One ERROR opens a backpressure episode; it ends, with one INFO, at the first hand-off
        that does not wait while the queue is at most half full, or when the socket ends.
        """
        stall = self._stall
        if stall is not None:
            queued = self._inbound.statistics()
            # Hysteresis: a queue hovering at the brim would otherwise open a new episode
            # every few frames.
            if queued.current_buffer_used <= queued.max_buffer_size // 2:
                self.end_stall("the queue has room again")
                stall = None
        try:
            self._inbound.send_nowait(item)
            return
        except trio.WouldBlock:
            pass
        if stall is None:
            now = trio.current_time()
            stall = self._stall = _Stall(started=now, resumed=now)
            self._counts.inbound_stalls += 1
            log.error("relay: inbound queue full; pausing the socket reader (backpressure)")
        stall.frames += 1
        self._counts.inbound_stalled_frames += 1
        try:
            await self._inbound.send(item)
        finally:
            stall.resumed = trio.current_time()

    def end_stall(self, why: str) -> None:
        """Close the open backpressure episode, if any, with its one INFO line."""
        stall, self._stall = self._stall, None
        if stall is None:
            return
        log.info(
            "relay: inbound backpressure ended (%s) after %.3f s; %d frame(s) waited",
            why,
            stall.resumed - stall.started,
            stall.frames,
        )
