"""Inbound dispatch: dedupe, per-session order, bounded concurrency, turns, acks (RC §7).

The supervisor's reader hands every ``inbound`` / ``passthrough_forward`` frame to
:meth:`Dispatcher.run` through a bounded channel and never waits on a turn, so a turn can
await outbound results without deadlock (R58). The dispatcher then

* decodes passthrough forwards (Discord interactions become events; others are dropped,
  acked if buffered: R70, R71);
* claims the delivery on ``K_msg``/``K_buf`` in the state db (R61-R63), recording a new
  delivery's turn with it (started at admission). Frames already waiting in the channel are
  admitted together, in arrival order. The decision is made in memory at once and recorded
  behind (a task of ours commits it right after), so no commit lies on a turn's path;
  completions are committed before any ack. A duplicate of a
  completed delivery is acked at once if buffered; a duplicate of a running one is acked
  when the original completes;
* admits every delivery at once: up to ``max_pending_inbound`` hold a place in memory, and
  beyond that a delivery is parked in the durable inbox and comes back in arrival order as
  places free, so the reader never stops reading the socket (RC §7.2, R60);
* runs the turns of one session key one at a time in arrival order, and different sessions
  concurrently, at most ``max_concurrent_turns`` at once (R59, R60). Session workers exist
  only while their session has work, so tasks are bounded by the pending bound;
* acks a buffered delivery only after the turn completed, its replies were confirmed or
  queued, and the COMPLETED record was committed (R65). A turn cancelled by shutdown is not
  acked and its claim is released so a replay runs it (R64);
* cancels a turn that runs past ``turn_timeout_s`` (a cancel scope with a deadline, which
  the agent reads as ``Turn.deadline``): it ends ``timed_out``, completed and acked like any
  other, so a hung agent never turns its message into a poison loop of replays.

The turns themselves (session workers, trust and agent, completion and acks) run in
:class:`~relay_runtime._sessions.Sessions`; the types it shares with the dispatcher are in
:mod:`relay_runtime._delivery`. Turn tasks live in a nursery the caller owns (the
gateway's), so they outlive a socket.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import attrs
import trio

from protocol._codec import decode_object, encode_frame
from protocol._events import MessageEvent
from protocol._frames import Inbound, PassthroughForwardFrame
from protocol._keys import build_session_key, message_key
from protocol._passthrough import PassthroughError, decode_forward
from relay_runtime._delivery import Agent, Delivery, DispatchStats, TrustEvaluator
from relay_runtime._hand_off import InboundItem
from relay_runtime._outbound import OutboundRouter
from relay_runtime._sessions import Sessions
from relay_runtime._state import (
    ClaimHandle,
    ClaimRequest,
    ClaimResult,
    ClaimStatus,
    StateError,
    TurnStore,
)

if TYPE_CHECKING:
    from relay_runtime._replies import Replies


log = logging.getLogger("relay_runtime.dispatcher")

#: Longest a written-behind claim or completion waits before it is committed.
RECORD_DELAY_S: Final = 0.05
#: First pause after a failed commit of written-behind records (doubling up to the cap).
RECORD_RETRY_S: Final = 0.1
#: Longest pause between tries while storage fails.
RECORD_RETRY_CAP_S: Final = 2.0
#: Most frames already waiting in the hand-off channel admitted (claimed) together.
MAX_ADMIT_BATCH: Final = 64
#: Most deliveries taken back from the durable inbox at once, as slots free up.
UNPARK_BATCH: Final = 256


class Dispatcher:
    """Turns admitted deliveries into agent turns, in order per session, within bounds."""

    def __init__(
        self,
        *,
        agent: Agent | None,
        trust: TrustEvaluator,
        replies: Replies,
        outbound: OutboundRouter,
        db: TurnStore,
        max_concurrent_turns: int = 16,
        max_pending_inbound: int = 1000,
        group_sessions_per_user: bool = True,
        thread_sessions_per_user: bool = False,
        clock: Callable[[], float] = time.time,
        turn_timeout_s: float | None = None,
        reply_key: bytes | None = None,
    ) -> None:
        if max_concurrent_turns < 1 or max_pending_inbound < max_concurrent_turns:
            raise ValueError(
                "need 1 <= max_concurrent_turns <= max_pending_inbound, got "
                f"{max_concurrent_turns} and {max_pending_inbound}"
            )
        self.agent = agent
        self.outbound = outbound
        self.db = db
        self.max_pending_inbound = max_pending_inbound
        self.group_sessions_per_user = group_sessions_per_user
        self.thread_sessions_per_user = thread_sessions_per_user
        self.clock = clock
        self.stats = DispatchStats()
        #: The turns: per-session order, concurrency, interrupts, completion and acks.
        self.sessions = Sessions(
            agent=agent,
            trust=trust,
            replies=replies,
            outbound=outbound,
            db=db,
            stats=self.stats,
            clock=clock,
            max_concurrent_turns=max_concurrent_turns,
            turn_timeout_s=turn_timeout_s,
            reply_key=reply_key,
            free_slot=self._free_slot,
            commit=self._commit,
        )
        #: Pending slots free now: admission never waits for one, so a count does.
        self._free_slots = max_pending_inbound
        self._paused = False
        #: Admitted deliveries beyond the pending bound, oldest first: their frames wait in
        #: the durable inbox (the state db), only ``(turn_id, claim)`` is held here.
        self._parked: deque[tuple[int, ClaimHandle | None]] = deque()
        self._unpark_wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ inspection

    @property
    def pending(self) -> int:
        """Admitted deliveries not yet finished (queued or running)."""
        return self.max_pending_inbound - self._free_slots

    @property
    def running(self) -> int:
        """Turns running now."""
        return self.sessions.running

    @property
    def turn_timeout_s(self) -> float | None:
        """Turn time limit in seconds; ``None``: none."""
        return self.sessions.turn_timeout_s

    @turn_timeout_s.setter
    def turn_timeout_s(self, seconds: float | None) -> None:
        self.sessions.turn_timeout_s = seconds or None

    @property
    def on_turn_end(self) -> Callable[[str, float], None] | None:
        """Called with ``(end state, seconds the turn ran)`` after each turn (an observer)."""
        return self.sessions.on_turn_end

    @on_turn_end.setter
    def on_turn_end(self, observer: Callable[[str, float], None] | None) -> None:
        self.sessions.on_turn_end = observer

    @property
    def queued(self) -> int:
        """Admitted deliveries waiting: for their session, a concurrency slot, or (beyond
        the pending bound) in the durable inbox."""
        return self.pending - self.running + len(self._parked)

    @property
    def parked(self) -> int:
        """Admitted deliveries waiting in the durable inbox (beyond the pending bound)."""
        return len(self._parked)

    async def wait_idle(self) -> None:
        """Wait until no admitted delivery is unfinished."""
        while self.pending or self._parked:
            await self._idle.wait()

    def stats_dict(self) -> dict[str, int]:
        """Counters plus the current pending/running figures."""
        out = attrs.asdict(self.stats)
        out.update(
            pending=self.pending, running=self.running, queued=self.queued, inbox=self.parked
        )
        return out

    # ------------------------------------------------------------------ control

    def interrupt(self, session_key: str, chat_id: str = "") -> bool:
        """Cancel the running turn of exactly ``session_key`` (R67); unknown keys: no-op."""
        return self.sessions.interrupt(session_key, chat_id)

    # ------------------------------------------------------------------ intake

    async def run(
        self,
        inbound: trio.MemoryReceiveChannel[InboundItem],
        turn_nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take frames from ``inbound`` until it closes; turns run in ``turn_nursery``.

        Started once the deliveries resumed from the inbox are queued.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._record_claims)
            await self._resume(turn_nursery)
            nursery.start_soon(self._unpark, turn_nursery)
            task_status.started()
            async with inbound:
                async for item in inbound:
                    batch = [item]
                    # Admission never waits for a slot: beyond the bound, deliveries wait
                    # in the durable inbox, so the reader keeps reading (issue 11).
                    while len(batch) < MAX_ADMIT_BATCH:
                        try:
                            batch.append(inbound.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self.admit_many(batch, turn_nursery)
            # The parked deliveries still come back (the unparker is ours).
            await self.wait_idle()
            nursery.cancel_scope.cancel()

    async def _record_claims(self) -> None:
        """Commit what admission and completion wrote behind, soon, off the turns' path.

        Claims and unacked completions are decided at once and written behind (no turn
        waits for them); this commits them within :data:`RECORD_DELAY_S`, one commit for
        whatever gathered meanwhile, so a crash finds running turns recorded.
        """
        while True:
            await self.db.wait_queued()
            await trio.sleep(RECORD_DELAY_S)
            await self._commit()

    async def _commit(self) -> None:
        """Commit what was written behind, retrying with backoff while storage fails.

        The state db keeps failed records and logs one ERROR per failure episode; acks
        wait here until their records are committed (nothing is acked unrecorded).
        """
        pause = RECORD_RETRY_S
        while True:
            try:
                await self.db.flush()
                return
            except StateError:
                await trio.sleep(pause)
                pause = min(pause * 2, RECORD_RETRY_CAP_S)

    async def _resume(self, turn_nursery: trio.Nursery) -> None:
        """Queue the live deliveries the previous process left unfinished, before anything
        new (they are older), each under its recorded turn: one more run each."""
        records = self.db.take_resumable()
        if not records:
            return
        claims = await self.db.claim_resumed(records, self.clock())
        for record, claim in zip(records, claims, strict=True):
            if claim.status is not ClaimStatus.NEW:
                continue
            item = decode_object(json.loads(record.inbound))
            if not isinstance(item, Inbound | PassthroughForwardFrame):
                log.error("relay: inbox record of turn %d is unreadable; dropped", record.turn_id)
                continue
            event = self._event_of(item)
            if event is None:
                continue
            self.stats.resumed += 1
            if self._parked or not self._take_slot_nowait():
                self._park(record.turn_id, claim.handle)  # its frame is in the inbox
                continue
            delivery = self._delivery(item, event)
            delivery.handle, delivery.turn_id = claim.handle, record.turn_id
            self.sessions.queue(delivery, turn_nursery)
        log.info("relay: resumed %d unfinished live message(s)", self.stats.resumed)

    async def admit(self, item: InboundItem, turn_nursery: trio.Nursery) -> None:
        """Admit one frame: decode, take a pending slot, claim, queue for its session."""
        await self.admit_many([item], turn_nursery)

    async def admit_many(self, items: Sequence[InboundItem], turn_nursery: trio.Nursery) -> None:
        """Admit frames in arrival order, claiming them together; never waits for a slot.

        Each delivery takes a pending slot if one is free and nothing waits in the inbox
        before it; otherwise it is parked: claimed like any other, its frame kept in the
        durable inbox (committed with the claims), and taken back in order as slots free.
        """
        gathered: list[Delivery] = []
        try:
            for item in items:
                self.stats.received += 1
                event = self._event_of(item)
                if event is None:
                    continue
                if self.agent is None:
                    log.debug("relay: no agent registered; inbound not run and not acked")
                    continue
                park = bool(self._parked) or not self._take_slot_nowait()
                try:
                    delivery = self._delivery(item, event, park=park)
                except BaseException:
                    if not park:
                        self._free_slot()
                    raise
                gathered.append(delivery)
            await self._claim_and_queue(gathered, turn_nursery)
        except BaseException:
            # The gathered deliveries were not claimed (or their claim failed): free slots.
            for delivery in gathered:
                if not delivery.parked:
                    self._free_slot()
            raise

    def _delivery(self, item: InboundItem, event: MessageEvent, *, park: bool = False) -> Delivery:
        delivery = Delivery(
            inbound=encode_frame(item) if park or not item.buffer_id else None,
            parked=park,
            event=event,
            buffer_id=item.buffer_id or None,
            session_key=build_session_key(
                event.source,
                group_sessions_per_user=self.group_sessions_per_user,
                thread_sessions_per_user=self.thread_sessions_per_user,
            ),
            k_msg=message_key(event),
        )
        self.outbound.remember(event)  # the chat memory: fed here, once per inbound
        return delivery

    async def _claim_and_queue(
        self, deliveries: list[Delivery], turn_nursery: trio.Nursery
    ) -> None:
        """Claim ``deliveries`` (each holding a slot) in one operation; route each in order.

        On return every slot is either freed or owned by a queued delivery; if it raises,
        the caller still owns them all.
        """
        if not deliveries:
            return
        claims = await self.db.claim_turns(
            [ClaimRequest(d.session_key, d.k_msg, d.buffer_id, d.inbound) for d in deliveries],
            self.clock(),
        )
        # Routed with no await in between: an IN_FLIGHT duplicate is waiting for its ack
        # before the turn it duplicates can look (R65).
        acks = [
            buffer_id
            for delivery, (claim, turn_id) in zip(deliveries, claims, strict=True)
            if (buffer_id := self._route(delivery, claim, turn_id, turn_nursery))
        ]
        deliveries.clear()
        if acks:
            # Duplicates of completed deliveries: the completion may still be written
            # behind, and the ack must follow its commit (R65). Not acked if this fails or
            # is cancelled: the connector replays, and the replay is acked.
            try:
                await self.db.flush()
            except StateError:
                return
            for buffer_id in acks:
                self.sessions.ack(buffer_id)

    def _route(
        self,
        delivery: Delivery,
        claim: ClaimResult,
        turn_id: int | None,
        turn_nursery: trio.Nursery,
    ) -> str | None:
        """Queue (or park) a NEW delivery, register an IN_FLIGHT duplicate's ack; return the
        bufferId of a COMPLETED duplicate, to ack once its completion is committed."""
        if claim.status is ClaimStatus.COMPLETED:
            self.stats.duplicates += 1
            if not delivery.parked:
                self._free_slot()
            return delivery.buffer_id
        if claim.status is ClaimStatus.IN_FLIGHT:
            self.stats.duplicates += 1
            if not delivery.parked:
                self._free_slot()
            if delivery.buffer_id and claim.handle is not None:
                self.sessions.ack_later(claim.handle.claim_id, delivery.buffer_id)
            return None
        delivery.handle = claim.handle
        delivery.turn_id = turn_id
        if delivery.parked:
            assert turn_id is not None
            self._park(turn_id, claim.handle)
        else:
            self.sessions.queue(delivery, turn_nursery)
        return None

    def _park(self, turn_id: int, handle: ClaimHandle | None) -> None:
        if not self._parked and not self._paused:
            self._paused = True
            self.stats.paused += 1
            log.warning(
                "relay: %d inbound deliveries unfinished (max_pending_inbound); further ones "
                "wait in the durable inbox (the reader keeps reading)",
                self.max_pending_inbound,
            )
        self._parked.append((turn_id, handle))
        self.stats.parked += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._unpark_wake.set()

    async def _unpark(self, turn_nursery: trio.Nursery) -> None:
        """Take parked deliveries back from the durable inbox, in order, as slots free."""
        while True:
            while not (self._parked and self._free_slots):
                await self._unpark_wake.wait()
                self._unpark_wake = trio.Event()
            batch = [
                self._parked.popleft()
                for _ in range(min(len(self._parked), self._free_slots, UNPARK_BATCH))
            ]
            self._free_slots -= len(batch)
            queued = 0
            try:
                frames = await self._inbox_frames([turn_id for turn_id, _ in batch])
                for turn_id, handle in batch:
                    item = decode_object(json.loads(frames[turn_id]))
                    assert isinstance(item, Inbound | PassthroughForwardFrame)
                    event = self._event_of(item)
                    assert event is not None  # it was decoded once already
                    delivery = self._delivery(item, event)
                    delivery.handle, delivery.turn_id = handle, turn_id
                    delivery.inbound = delivery.inbound or frames[turn_id]
                    self.sessions.queue(delivery, turn_nursery)
                    queued += 1
            finally:
                for _ in batch[queued:]:
                    self._free_slot()
            if not self._parked and self._paused:
                self._paused = False
                log.info("relay: the durable inbox is drained")

    async def _inbox_frames(self, turn_ids: list[int]) -> dict[int, str]:
        """The parked frames, retrying with backoff while storage fails."""
        pause = RECORD_RETRY_S
        while True:
            try:
                return await self.db.inbox_frames(turn_ids)
            except StateError:
                await trio.sleep(pause)
                pause = min(pause * 2, RECORD_RETRY_CAP_S)

    def _event_of(self, item: InboundItem) -> MessageEvent | None:
        if isinstance(item, Inbound):
            return item.event
        decoded = decode_forward(item.forward)
        if isinstance(decoded, PassthroughError):
            self.stats.dropped += 1
            level = logging.INFO if decoded.severity == "info" else logging.WARNING
            log.log(level, "%s", decoded.message)
            if item.buffer_id:
                self.sessions.ack(item.buffer_id)
            return None
        return decoded

    def _take_slot_nowait(self) -> bool:
        if not self._free_slots:
            return False
        self._free_slots -= 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return True

    def _free_slot(self) -> None:
        free = self._free_slots = self._free_slots + 1
        assert free <= self.max_pending_inbound, "a pending slot freed twice"
        if self._parked:
            self._unpark_wake.set()
        elif free == self.max_pending_inbound:
            self._idle.set()
