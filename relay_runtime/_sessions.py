"""Session workers: the turns of admitted deliveries, per session in order (RC §7.3-§7.5).

:class:`Sessions` runs the deliveries of one session key one at a time in arrival order,
and different sessions concurrently, at most ``max_concurrent_turns`` at once (R59, R60). A
worker exists only while its session has work. Each turn runs trust, then the agent, in its
own cancel scope (an interrupt cancels it, R67), whose deadline is the turn's time limit
(``turn_timeout_s``); its completion is recorded, and a buffered delivery acked only after
that record is committed (R65). A turn cancelled by shutdown is not acked and its claim is
released so a replay runs it (R64).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import trio

from protocol._auth import RequestIdKey
from protocol._frames import InboundAck
from relay_runtime._delivery import Agent, Delivery, DispatchStats, TrustEvaluator
from relay_runtime._outbound import OutboundRouter, reply_ids_for
from relay_runtime._state import REPLY_KEY_BYTES, StateError, TurnEndState, TurnStore
from relay_runtime._turn import Turn

if TYPE_CHECKING:
    from relay_runtime._replies import Replies
    from trust import Decision


log = logging.getLogger("relay_runtime.dispatcher")

#: How long shutdown waits for a cancelled turn's claim release to commit.
RELEASE_TIMEOUT_S: Final = 5.0


class Sessions:
    """The dispatcher's turns: per-session order, bounded concurrency, interrupts, acks.

    ``free_slot`` is called as each delivery leaves (it held a pending slot), ``commit``
    commits what was written behind (retrying while storage fails). Acks go out through
    :meth:`ack`, also for the dispatcher's duplicates.
    """

    def __init__(
        self,
        *,
        agent: Agent | None,
        trust: TrustEvaluator,
        replies: Replies,
        outbound: OutboundRouter,
        db: TurnStore,
        stats: DispatchStats,
        clock: Callable[[], float],
        max_concurrent_turns: int,
        turn_timeout_s: float | None,
        reply_key: bytes | None,
        free_slot: Callable[[], None],
        commit: Callable[[], Awaitable[None]],
    ) -> None:
        self.agent = agent
        self.trust = trust
        self.replies = replies
        self.outbound = outbound
        self.db = db
        self.stats = stats
        self.clock = clock
        #: Turn time limit in seconds; ``None`` or 0: none.
        self.turn_timeout_s = turn_timeout_s or None
        #: Called with ``(end state, seconds the turn ran)`` after each turn (an observer:
        #: it must not block or raise). The metrics endpoint's latency histogram.
        self.on_turn_end: Callable[[str, float], None] | None = None
        #: The gateway's key for replies' requestIds (the state db's; random if none given).
        self.reply_key = reply_key if reply_key is not None else os.urandom(REPLY_KEY_BYTES)
        self._reply_ids_key = RequestIdKey(self.reply_key)
        self._free_slot = free_slot
        self._commit = commit
        #: Turn slots free now (``max_concurrent_turns`` in all); a turn that finds none
        #: parks in ``_turn_waiters`` and is handed the slot of the next turn to end, in
        #: arrival order (what ``trio.CapacityLimiter`` does, without its per-task books).
        self._free_turns = max_concurrent_turns
        self._turn_waiters = trio.lowlevel.ParkingLot()
        self._queues: dict[str, deque[Delivery]] = {}
        self._running: dict[str, trio.CancelScope] = {}
        #: Sessions whose running turn an interrupt cancelled (the turn's one scope also
        #: carries its time limit; this tells the two apart).
        self._interrupted: set[str] = set()
        self._waiting_acks: dict[int, list[str]] = {}

    @property
    def running(self) -> int:
        """Turns running now."""
        return len(self._running)

    @property
    def running_sessions(self) -> list[str]:
        """The session keys whose turn is running now."""
        return list(self._running)

    def ack_later(self, claim_id: int, buffer_id: str) -> None:
        """Ack ``buffer_id`` (a duplicate) when the delivery holding ``claim_id`` completes."""
        self._waiting_acks.setdefault(claim_id, []).append(buffer_id)

    def ack(self, buffer_id: str) -> None:
        """Send an ``inbound_ack`` for ``buffer_id`` through the outbound owner, now."""
        if self.outbound.send_nowait(InboundAck(buffer_id=buffer_id)):
            self.stats.acked += 1
        else:
            # Not queued across a drop: the connector redelivers and the replay is acked.
            self.stats.ack_failures += 1

    def queue(self, delivery: Delivery, turn_nursery: trio.Nursery) -> None:
        """Queue a claimed delivery (holding a slot) behind its session's others."""
        queue = self._queues.get(delivery.session_key)
        if queue is None:
            queue = self._queues[delivery.session_key] = deque()
            queue.append(delivery)
            turn_nursery.start_soon(self._session_worker, delivery.session_key, queue)
        else:
            queue.append(delivery)

    def interrupt(self, session_key: str, chat_id: str = "") -> bool:
        """Cancel the running turn of exactly ``session_key`` (R67); unknown keys: no-op.

        Queued deliveries of the session still run. ``chat_id`` is accepted for the
        supervisor's ``on_interrupt`` signature; there is no typing loop to stop.
        """
        scope = self._running.get(session_key)
        if scope is None:
            log.debug("relay: interrupt for %r: no running turn", session_key)
            return False
        log.info("relay: interrupting the running turn of %s", session_key)
        self._interrupted.add(session_key)
        scope.cancel()
        return True

    async def _session_worker(self, session_key: str, queue: deque[Delivery]) -> None:
        """Run one session's deliveries in arrival order; exits when the queue is empty."""
        try:
            while queue:
                delivery = queue.popleft()
                try:
                    await self._run_delivery(delivery)
                finally:
                    self._free_slot()
        finally:
            if self._queues.get(session_key) is queue:
                del self._queues[session_key]
            if queue:
                # Shutdown cancelled us with deliveries never started: release their claims.
                await self._release_unstarted(list(queue))
                for _ in range(len(queue)):
                    self._free_slot()
                queue.clear()

    async def _release_unstarted(self, deliveries: list[Delivery]) -> None:
        with trio.move_on_after(RELEASE_TIMEOUT_S, shield=True):
            for delivery in deliveries:
                self.stats.cancelled += 1
                if delivery.handle is not None:
                    self._waiting_acks.pop(delivery.handle.claim_id, None)
                if not delivery.resumable:  # else kept running for the next process
                    with contextlib.suppress(StateError):  # logged; recovery releases it
                        await self.db.release_unstarted(delivery.handle, delivery.turn_id)

    async def _run_delivery(self, delivery: Delivery) -> None:
        turn_id = delivery.turn_id
        started = False
        try:
            # A free slot is taken without a checkpoint (a task step per turn saved); the
            # turn's own awaits are its checkpoints.
            if self._free_turns:
                self._free_turns -= 1
            else:
                await self._turn_waiters.park()  # woken holding the slot handed over
            try:
                started = True
                began = trio.current_time()
                state, error = await self._run_turn(delivery, began)
                if self.on_turn_end is not None:
                    self.on_turn_end(state, trio.current_time() - began)
                # Only what is acked needs its completion committed first (R65); the rest
                # is recorded behind, off the session's path.
                write_behind = not delivery.buffer_id and not self._acks_waiting_on(delivery)
                try:
                    await self.db.complete_turn(
                        delivery.handle,
                        turn_id,
                        state,
                        self.clock(),
                        error,
                        write_behind=write_behind,
                    )
                except StateError:
                    # Storage fails: the record is kept and retried; the ack waits for it.
                    await self._commit()
            finally:
                if self._turn_waiters:
                    self._turn_waiters.unpark()
                else:
                    self._free_turns += 1
        except trio.Cancelled:
            # Shutdown (an interrupt is caught inside the turn): no ack, claim released,
            # so the connector's replay runs it again (R64). If the turn had finished and
            # only its completion was waiting to commit, that completion stands (it is
            # kept) and the release finds nothing: the replay is acked without running.
            # A live delivery is not released: its inbox record stays running and the
            # next process resumes it (its replies go out under the same requestIds).
            self.stats.cancelled += 1
            with trio.move_on_after(RELEASE_TIMEOUT_S, shield=True):
                if delivery.handle is not None:
                    self._waiting_acks.pop(delivery.handle.claim_id, None)
                with contextlib.suppress(StateError):  # logged; recovery releases it
                    if delivery.resumable:
                        pass
                    elif started:
                        await self.db.release_turn(delivery.handle, turn_id, self.clock())
                    else:
                        await self.db.release_unstarted(delivery.handle, turn_id)
            raise
        setattr(self.stats, state, getattr(self.stats, state) + 1)
        if delivery.buffer_id:
            self.ack(delivery.buffer_id)
        if self._waiting_acks and self._acks_waiting_on(delivery):
            if write_behind:  # a duplicate came while the completion was being decided
                await self._commit()
            assert delivery.handle is not None
            for buffer_id in self._waiting_acks.pop(delivery.handle.claim_id, []):
                self.ack(buffer_id)

    def _acks_waiting_on(self, delivery: Delivery) -> bool:
        """Duplicates of ``delivery`` wait to be acked when it completes."""
        return delivery.handle is not None and delivery.handle.claim_id in self._waiting_acks

    async def _run_turn(self, delivery: Delivery, began: float) -> tuple[TurnEndState, str | None]:
        """Trust, then the agent, in the turn's own cancel scope; returns its end state.

        One scope per turn: an interrupt cancels it (and marks the session interrupted),
        the time limit (counted from ``began``) is its deadline, given to the scope when
        it is made (setting it later costs a deadline update in trio's books).
        """
        event = delivery.event
        session_key = delivery.session_key
        state: TurnEndState = "completed"
        error: str | None = None
        limit = self.turn_timeout_s
        scope = trio.CancelScope() if limit is None else trio.CancelScope(deadline=began + limit)
        self._running[session_key] = scope
        try:
            with scope:
                if not event.text and not event.media_urls:
                    self.stats.empty += 1
                    return "completed", None
                outcome = await self.trust.evaluate(event)
                turn = self._turn(delivery, outcome.decision, scope.deadline)
                if outcome.reply:
                    await turn.reply(outcome.reply)
                if not outcome.run_agent:
                    return "denied", None
                assert self.agent is not None
                answer = await self.agent(turn)
                if isinstance(answer, str) and answer:
                    await turn.reply(answer)
        except Exception as exc:
            log.exception("relay: turn of %s raised; counted completed (no replay)", session_key)
            state, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            del self._running[session_key]
            interrupted = session_key in self._interrupted
            if interrupted:
                self._interrupted.discard(session_key)
        if scope.cancelled_caught:
            if interrupted:
                log.info("relay: turn of %s interrupted", session_key)
                return "interrupted", None
            log.warning(
                "relay: turn of %s (message %s) timed out after %g s (turn_timeout_s); "
                "cancelled, recorded timed_out, its delivery completed",
                session_key,
                event.delivery_message_id or delivery.buffer_id or "without an id",
                self.turn_timeout_s,
            )
            return "timed_out", f"timed out after {self.turn_timeout_s:g} s"
        return state, error

    def _turn(self, delivery: Delivery, decision: Decision, deadline: float) -> Turn:
        source = delivery.event.source
        platform = self.outbound.reply_platform(source.platform_raw)
        return Turn(
            event=delivery.event,
            session_key=delivery.session_key,
            platform=platform,
            descriptor=self.outbound.descriptor_for(platform),
            decision=decision,
            replies=self.replies,
            deadline=None if deadline == math.inf else deadline,
            request_ids=reply_ids_for(self._reply_ids_key, delivery.k_msg, delivery.buffer_id),
        )
