"""The reply policy: what happens to an outbound action when the link is up, down or gone.

:class:`Replies` sits between turns and the outbound owner's ``request`` (RC §6.2):

* ``send`` and ``follow_up`` go out directly while the link is live (READY or IDLE_REQUESTED)
  and the outbox is empty. Otherwise they are committed to the durable outbox and the caller
  gets ``queued: true`` with the ``outbox_id`` (R44). One pending when the socket closed (a
  drop, or shutdown) is queued in the outbox under its ``requestId`` (retryable, RC §6.2), and
  so is a direct ``send`` that failed retryably and unambiguously; an egress decline is
  final (R19).
* ``edit``, ``typing`` and ``get_chat_info`` are never queued: they fail fast when the link
  is down (R43), as the supervisor answers them.
* The outbox is flushed on every READY (and whenever something is queued while live): FIFO,
  one entry in flight, reusing the entry's stored ``requestId``. Any ``outbound_result``
  deletes the entry; a drop or timeout counts an attempt and waits for the next READY
  (R45). Expired entries are swept at each flush and every 10 minutes (R46). DISABLED halts
  the flush and keeps the entries.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final, Literal

import trio

from protocol._actions import Action, FollowUp, GetChatInfo, Send
from protocol._codec import to_json, unstructure
from protocol._results import DISABLED, NOT_CONNECTED, OUTBOX_FULL, ChatInfo, ErrorKind, SendResult
from relay_runtime._lanes import Lane, LaneCounts, lane_of, stored_action
from relay_runtime._outbound import OutboundRouter, Retry, new_request_id, retry_for
from relay_runtime._state import (
    OutboxEntry,
    OutboxFull,
    OutboxKind,
    StateError,
)
from relay_runtime._state import (
    OutboxStore as OutboxStore,
)

log = logging.getLogger("relay_runtime.replies")

#: How often expired outbox entries are swept between flushes (RC §6.2).
SWEEP_INTERVAL_S: Final = 600.0
#: Outbox entries in flight at once during a flush (different chats; one per chat).
FLUSH_WINDOW: Final = 32
#: Upper bound on removing answered entries when a flush is cancelled (shutdown).
FORGET_TIMEOUT_S: Final = 5.0
#: First and longest pause between tries to queue a reply while storage fails.
PUT_RETRY_S: Final = 0.1
PUT_RETRY_CAP_S: Final = 2.0
#: Pause before the flusher tries again after a pass that left entries on a live link.
FLUSH_RETRY_S: Final = 1.0


class Replies:
    """The reply policy over the outbound owner and the state database's outbox.

    ``clock`` gives the wall time stamped on outbox entries (seconds; ``time.time`` unless
    a test injects another).
    """

    def __init__(
        self,
        outbound: OutboundRouter,
        db: OutboxStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbound = outbound
        self.db = db
        self.clock = clock
        self._count = 0
        self._emptied = trio.Event()
        self._emptied.set()
        # Set while the outbox has room for another entry; waiting producers park on it.
        self._room = trio.Event()
        self._room.set()
        # Producers waiting for room take it in arrival order (trio.Lock is fair).
        self._room_queue = trio.Lock()
        # Queued entries per lane, known once loaded from the outbox (until then every
        # reply queues while anything is queued).
        self._lanes = LaneCounts()
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)
        self.sent = 0
        self.queued = 0
        self.resubmitted = 0
        self.flushed = 0
        self.flush_failures = 0
        self.waited_for_room = 0
        #: Passes of the flusher task (one per poke it took) that have ended.
        self.flusher_passes = 0
        self._pass_over = trio.Event()

    # ------------------------------------------------------------------ state

    @property
    def outbox_count(self) -> int:
        """Entries in the outbox as last counted (expired ones until the next sweep)."""
        return self._count

    @property
    def live(self) -> bool:
        """Whether outbound frames may go out now."""
        return self.outbound.live

    def _set_count(self, count: int) -> None:
        self._count = max(0, count)
        if self._count == 0:
            self._emptied.set()
        elif self._emptied.is_set():
            self._emptied = trio.Event()
        if self._count < self.db.outbox_max:
            self._room.set()
        elif self._room.is_set():
            self._room = trio.Event()

    async def wait_empty(self) -> None:
        """Wait until the outbox is (as far as this process knows) empty."""
        while self._count:
            await self._emptied.wait()

    def poke(self) -> None:
        """Ask the flusher to look at the outbox (call on every READY)."""
        with contextlib.suppress(trio.WouldBlock):  # a flush is already requested
            self._wake_send.send_nowait(None)

    # ------------------------------------------------------------------ actions

    async def send(
        self,
        action: Send | FollowUp,
        *,
        platform_raw: str | None,
        wait_for_room: bool = False,
        request_id: str | None = None,
    ) -> SendResult:
        """Send (or queue) a ``send``/``follow_up``; never raises for transport reasons.

        With ``wait_for_room``, a full outbox makes the caller wait for room instead of
        answering ``relay outbox full`` at once; see :meth:`send_waiting_for_room`.
        ``request_id`` is the reply's id (a turn derives it from its delivery, so a re-run
        re-sends under the same id); a fresh random one when ``None``. It goes out, or into
        the outbox, unchanged.
        """
        wait = wait_for_room
        outbound = self.outbound
        live = outbound.live
        if not live and outbound.state == "disabled":  # a disabled link is never live
            return SendResult.failure(DISABLED, kind=ErrorKind.DISABLED)
        request_id = request_id or new_request_id()
        if not live or self._behind_queued(action, platform_raw):
            return await self._enqueue(action, platform_raw, request_id, wait=wait)
        result = await outbound.request(action, platform_raw=platform_raw, request_id=request_id)
        if result.success:
            self.sent += 1
            return result
        retry = retry_for(result)
        if retry is Retry.NO or retry is Retry.HALT:
            return result
        if retry is Retry.OUTBOX and not isinstance(action, Send):
            return result  # a follow-up the connector refused is not re-submitted
        if result.error_kind is not ErrorKind.NOT_CONNECTED:
            # It was written (or being written): pending when the socket closed (a drop, or
            # our own shutdown), unanswered on a live link, or refused retryably. The
            # connector may or may not have performed it; it goes to the outbox under the
            # same requestId (RC §6.2), and the connector drops a repeat. The turn returns
            # (and its delivery is acked) only once it is queued (RC §7.4).
            self.resubmitted += 1
            log.info("relay: %s not confirmed (%s); queued in the outbox", action.OP, result.error)
        # Else the link went down between our look and the request: the not-READY rule.
        return await self._enqueue(action, platform_raw, request_id, wait=wait)

    async def send_waiting_for_room(
        self, action: Send | FollowUp, *, platform_raw: str | None, request_id: str | None = None
    ) -> SendResult:
        """Like :meth:`send`, but a full outbox makes the caller wait for room, not fail.

        For producers that can wait, such as turns: a turn waiting here keeps its session's
        slot (further inbound waits in the durable inbox) instead of its reply being dropped
        while its inbound is acked. Waiters take room in arrival order. The wait has no bound
        of its own: the turn's time limit (``turn_timeout_s``) or cancellation (shutdown)
        ends it, and then the turn is recorded as timed out, or not acked and run again on
        replay or resume.
        """
        return await self.send(
            action, platform_raw=platform_raw, wait_for_room=True, request_id=request_id
        )

    async def perform(self, action: Action, *, platform_raw: str | None) -> SendResult:
        """Send an action that is never queued (``edit``, ``typing``, ``get_chat_info``)."""
        return await self.outbound.request(action, platform_raw=platform_raw)

    async def chat_info(self, chat_id: str, *, platform_raw: str | None) -> ChatInfo:
        """The chat's ``{name, type}``; defaults ``(chat_id, "dm")`` on any failure (R16)."""
        result = await self.perform(GetChatInfo(chat_id=chat_id), platform_raw=platform_raw)
        if not result.success and not result.raw.get("chat_info") and "name" not in result.raw:
            return ChatInfo(name=chat_id, type="dm")
        return ChatInfo.from_result(result.raw, chat_id)

    # ------------------------------------------------------------------ outbox

    def _entry_platform(self, platform_raw: str | None) -> str:
        identity = self.outbound.identity_for(platform_raw)
        return identity.platform if identity else ""

    def _behind_queued(self, action: Send | FollowUp, platform_raw: str | None) -> bool:
        """Whether a reply must queue behind entries already in the outbox.

        Order is kept per lane (chat, or follow-up session): a reply queues only behind
        entries of its own lane, so one chat's backlog after a drop does not hold up the
        others (our choice; issue: "in order per session").
        """
        if not self._lanes.holds_any(anything_queued=self._count > 0):
            return False  # the common case: nothing queued, no lane to look up
        lane = lane_of(self._entry_platform(platform_raw), action)
        return self._lanes.holds(lane, anything_queued=True)

    async def load_lanes(self) -> None:
        """Count the outbox's entries per lane (the flusher does this when it starts)."""
        self._lanes.load(await self.db.entries())

    async def _enqueue(
        self,
        action: Send | FollowUp,
        platform_raw: str | None,
        request_id: str,
        *,
        wait: bool = False,
    ) -> SendResult:
        if self.db.outbox_max == 0:
            # An outbox of size 0 means "fail fast" (RC §10): answer as if nothing queues.
            return SendResult.failure(NOT_CONNECTED, retryable=True, kind=ErrorKind.NOT_CONNECTED)
        kind: OutboxKind = "send" if isinstance(action, Send) else "follow_up"
        identity = self.outbound.identity_for(platform_raw)
        entry = (
            identity.platform if identity else "",
            identity.bot_id if identity else "",
            to_json(unstructure(action)),
            request_id,
            kind,
        )
        # Turns already waiting for room come first: a newcomer does not take the entry
        # that a flush freed for the oldest of them.
        queued_behind = wait and self._room_queue.locked()
        outbox_id = None if queued_behind else await self._put(entry)
        if outbox_id is None:
            if not wait:
                log.error("relay: outbox full (%d entries); %s rejected", self.db.outbox_max, kind)
                return SendResult.failure(OUTBOX_FULL, retryable=True, kind=ErrorKind.OUTBOX_FULL)
            self.waited_for_room += 1
            async with self._room_queue:
                while outbox_id is None:
                    while self._count >= self.db.outbox_max:
                        await self._room.wait()
                    outbox_id = await self._put(entry)
        self._set_count(self._count + 1)
        self._lanes.add(lane_of(identity.platform if identity else "", action))
        self.queued += 1
        if self.live:
            self.poke()
        return SendResult.queued_result(outbox_id)

    async def _put(self, entry: tuple[str, str, str, str, OutboxKind]) -> int | None:
        """Commit one entry to the outbox; its id, or ``None`` when the outbox is full."""
        pause = PUT_RETRY_S
        while True:
            try:
                return await self.db.put(*entry, self.clock())
            except OutboxFull:
                self._set_count(self.db.outbox_max)
                return None
            except StateError:
                # Storage fails (logged once per episode by the state db): the reply waits
                # for it, as its turn does; the gateway gives up after its storage limit.
                await trio.sleep(pause)
                pause = min(pause * 2, PUT_RETRY_CAP_S)

    async def run_flusher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush the outbox whenever poked, and sweep expired entries every 10 minutes."""
        self._set_count(await self.db.count())
        await self.load_lanes()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_forever)
            task_status.started()
            async for _ in self._wake_recv:
                try:
                    await self.flush()
                except StateError:
                    # Storage fails (logged by the state db); entries stay for the next pass.
                    self.flush_failures += 1
                finally:
                    self.flusher_passes += 1
                    self._pass_over.set()
                    self._pass_over = trio.Event()
                if self.live and self._count:
                    # Stopped on an entry nobody answered (a timeout on a live link) or on
                    # storage: nothing else pokes until the next READY or enqueue, and a
                    # full outbox has turns waiting for room, so try again after a pause.
                    await trio.sleep(FLUSH_RETRY_S)
                    self.poke()

    async def wait_flusher_pass(self, passes: int) -> None:
        """Wait until the flusher task has ended ``passes`` passes (the first runs at READY)."""
        while self.flusher_passes < passes:
            await self._pass_over.wait()

    async def _sweep_forever(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            with contextlib.suppress(StateError):  # storage fails: the next sweep does it
                await self.sweep()

    async def sweep(self) -> list[OutboxEntry]:
        """Delete expired entries (a WARNING each, from the state db) and recount."""
        expired = await self.db.expire(self.clock())
        for entry in expired:
            self._lanes.left(entry)
        self._set_count(await self.db.count())
        return expired

    async def flush(self) -> int:
        """Deliver queued entries while the link is live; return how many went.

        Entries of one lane (chat, or follow-up session) go strictly in order, one at a
        time; entries of different lanes are in flight together, up to
        :data:`FLUSH_WINDOW` (our choice: the order that matters is per chat, and one entry
        in flight cannot drain the outbox of a busy gateway whose socket keeps dropping).

        A drop or timeout stops the flush; the entries stay for the next READY. Only a
        timeout (no answer on a live connection) counts as a failed attempt of that entry: a
        drop is the connection's failure, and with several entries in flight it cannot be
        pinned on one, so counting it would discard good replies on a flapping link. An entry
        that never gets an answer is still bounded by its TTL.
        """
        await self.sweep()
        delivered = 0
        configured = {identity.platform for identity in self.outbound.identities}
        while self.live:
            batch = await self.db.peek_batch(self.clock(), FLUSH_WINDOW)
            if not batch:
                self._set_count(await self.db.count())
                if self._count == 0:
                    self._lanes.clear()
                return delivered
            items: list[tuple[OutboxEntry, Action]] = []
            for entry in batch:
                if entry.platform and entry.platform not in configured:
                    log.warning(
                        "relay: outbox entry %d targets unconfigured identity %r; dropped",
                        entry.id,
                        entry.platform,
                    )
                    await self._forget(entry)
                    continue
                action = stored_action(entry)
                if action is None:
                    await self._forget(entry)
                    continue
                items.append((entry, action))
            lanes: dict[Lane, list[tuple[OutboxEntry, Action]]] = {}
            for entry, action in items:
                lanes.setdefault(lane_of(entry.platform, action), []).append((entry, action))
            stopped = False
            answered: list[tuple[OutboxEntry, Action]] = []

            async def run_lane(
                items: list[tuple[OutboxEntry, Action]],
                answered: list[tuple[OutboxEntry, Action]],
            ) -> None:
                nonlocal delivered, stopped
                for entry, action in items:
                    if stopped:
                        return
                    outcome = await self._deliver(entry, action)
                    if outcome == "stop":
                        stopped = True
                        return
                    answered.append((entry, action))
                    delivered += outcome == "delivered"

            try:
                async with trio.open_nursery() as nursery:
                    for items in lanes.values():
                        nursery.start_soon(run_lane, items, answered)
            finally:
                # Answered entries leave in one transaction. Should that not happen (a crash),
                # they go again with their stored requestId, which the connector deduplicates.
                with trio.CancelScope(shield=True), trio.move_on_after(FORGET_TIMEOUT_S):
                    await self._forget_many(answered)
            if stopped:
                return delivered
        return delivered

    async def _deliver(
        self, entry: OutboxEntry, action: Action
    ) -> Literal["delivered", "failed", "stop"]:
        """Send one outbox entry with its stored ``requestId``; any connector answer ends it."""
        result = await self.outbound.request(
            action, platform_raw=entry.platform, request_id=entry.request_id
        )
        retry = retry_for(result)
        if retry is Retry.HALT or (
            retry is Retry.AFTER_RECONNECT and result.error_kind is not ErrorKind.DROPPED
        ):
            return "stop"  # not written, or the link is gone: keep it for the next READY
        if retry is Retry.AFTER_RECONNECT:  # dropped while pending: the connection's fault
            self.flush_failures += 1
            log.info("relay: outbox entry %d not delivered (%s)", entry.id, result.error)
            return "stop"
        if retry is Retry.UNANSWERED:
            self.flush_failures += 1
            attempt = await self.db.bump_attempts(entry.id)
            if attempt.dropped:
                self._set_count(self._count - 1)
                self._lanes.left(entry, action)
            log.warning(
                "relay: outbox entry %d not answered (%s), attempt %d",
                entry.id,
                result.error,
                attempt.attempts,
            )
            return "stop"
        if result.success:
            self.flushed += 1
            return "delivered"
        log.warning(
            "relay: queued %s (outbox entry %d) failed: %s", entry.kind, entry.id, result.error
        )
        return "failed"

    async def _forget_many(self, answered: list[tuple[OutboxEntry, Action]]) -> None:
        gone = set(await self.db.delete_many([entry.id for entry, _ in answered]))
        for entry, action in answered:
            if entry.id in gone:
                self._set_count(self._count - 1)
                self._lanes.left(entry, action)

    async def _forget(self, entry: OutboxEntry, action: Action | None = None) -> None:
        if await self.db.delete(entry.id):
            self._set_count(self._count - 1)
            self._lanes.left(entry, action)

    def stats(self) -> dict[str, int]:
        """Counters for ``gateway.stats``."""
        return {
            "outbox": self._count,
            "replies_sent": self.sent,
            "replies_queued": self.queued,
            "replies_resubmitted": self.resubmitted,
            "outbox_flushed": self.flushed,
            "outbox_flush_failures": self.flush_failures,
            "replies_waited_for_outbox_room": self.waited_for_room,
        }
