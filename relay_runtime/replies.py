"""The reply policy: what happens to an outbound action when the link is up, down or gone.

:class:`Replies` sits between turns and the supervisor's ``request`` (RC §6.2):

* ``send`` and ``follow_up`` go out directly while the link is live (READY or IDLE_REQUESTED)
  and the outbox is empty. Otherwise they are committed to the durable outbox and the caller
  gets ``queued: true`` with the ``outbox_id`` (R44). A direct ``send`` that failed
  retryably and unambiguously is re-submitted once through the outbox; an egress decline is
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
import json
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

import trio

from protocol.actions import Action, FollowUp, GetChatInfo, Send
from protocol.codec import decode_object, to_json, unstructure
from protocol.descriptor import CapabilityDescriptor
from protocol.events import Identity
from protocol.frames import Outbound
from protocol.results import (
    DISABLED,
    NOT_CONNECTED,
    OUTBOUND_TIMED_OUT,
    OUTBOX_FULL,
    SEND_FAILED_PREFIX,
    TRANSPORT_CLOSED,
    ChatInfo,
    SendResult,
)
from relay_runtime.outbound import new_request_id
from relay_runtime.state import Attempt, OutboxEntry, OutboxFull, OutboxKind

__all__ = ["SWEEP_INTERVAL_S", "OutboxStore", "Replies", "ReplyLink"]

log = logging.getLogger("relay_runtime.replies")

#: How often expired outbox entries are swept between flushes (RC §6.2).
SWEEP_INTERVAL_S: Final = 600.0


class ReplyLink(Protocol):
    """The supervisor as the reply policy sees it."""

    @property
    def state(self) -> str:
        """The lower-case connection state name (``ready``, ``backoff``, ``disabled`` …)."""

    @property
    def live(self) -> bool:
        """Outbound frames may be sent now (READY or IDLE_REQUESTED with a socket)."""

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        """The descriptor in force for ``platform`` (the default one for an unknown one)."""

    async def request(
        self,
        action: Action,
        *,
        platform_raw: str | None = None,
        request_id: str | None = None,
    ) -> SendResult:
        """Send one action and wait for its result; never raises for transport reasons."""


class OutboxStore(Protocol):
    """The part of :class:`~relay_runtime.state.StateDB` the reply policy uses."""

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

    async def peek_next(self, now: float) -> OutboxEntry | None:
        """The oldest live entry."""

    async def delete(self, outbox_id: int) -> bool:
        """Remove an entry."""

    async def bump_attempts(self, outbox_id: int) -> Attempt:
        """Count one failed delivery (the last one deletes the entry)."""

    async def expire(self, now: float) -> list[OutboxEntry]:
        """Delete expired entries."""

    async def count(self) -> int:
        """Entries queued."""


def _is_drop_or_timeout(result: SendResult) -> bool:
    """A local failure after which the connector may not have seen the request."""
    error = result.error or ""
    return (
        (error == TRANSPORT_CLOSED and result.retryable)
        or error == OUTBOUND_TIMED_OUT
        or error.startswith(SEND_FAILED_PREFIX)
    )


def _stored_action(entry: OutboxEntry) -> Action | None:
    """The action an outbox entry holds, or ``None`` (logged) when it cannot be read."""
    try:
        obj = json.loads(entry.action_json)
    except ValueError as exc:
        log.error("relay: outbox entry %d is not JSON (%s); dropped", entry.id, exc)
        return None
    frame = decode_object({"type": "outbound", "requestId": entry.request_id, "action": obj})
    if not isinstance(frame, Outbound):
        log.error("relay: outbox entry %d is unreadable (%s); dropped", entry.id, frame)
        return None
    return frame.action


def _never_left(result: SendResult) -> bool:
    """A fail-fast answer: the request was not written at all."""
    return result.error in (NOT_CONNECTED, DISABLED) or (
        result.error == TRANSPORT_CLOSED and not result.retryable
    )


class Replies:
    """The reply policy over one link and the state database's outbox.

    ``clock`` gives the wall time stamped on outbox entries (seconds; ``time.time`` unless
    a test injects another).
    """

    def __init__(
        self,
        link: ReplyLink,
        db: OutboxStore,
        identities: tuple[Identity, ...],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.db = db
        self.identities = identities
        self.clock = clock
        self._count = 0
        self._emptied = trio.Event()
        self._emptied.set()
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)
        self.sent = 0
        self.queued = 0
        self.resubmitted = 0
        self.flushed = 0
        self.flush_failures = 0

    # ------------------------------------------------------------------ state

    @property
    def outbox_count(self) -> int:
        """Entries in the outbox as last counted (expired ones until the next sweep)."""
        return self._count

    @property
    def live(self) -> bool:
        """Whether outbound frames may go out now."""
        return self.link.live

    def _set_count(self, count: int) -> None:
        self._count = max(0, count)
        if self._count == 0:
            self._emptied.set()
        elif self._emptied.is_set():
            self._emptied = trio.Event()

    async def wait_empty(self) -> None:
        """Wait until the outbox is (as far as this process knows) empty."""
        while self._count:
            await self._emptied.wait()

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        """The descriptor in force for ``platform``."""
        return self.link.descriptor_for(platform)

    def poke(self) -> None:
        """Ask the flusher to look at the outbox (call on every READY)."""
        with contextlib.suppress(trio.WouldBlock):  # a flush is already requested
            self._wake_send.send_nowait(None)

    # ------------------------------------------------------------------ actions

    async def send(self, action: Send | FollowUp, *, platform_raw: str | None) -> SendResult:
        """Send (or queue) a ``send``/``follow_up``; never raises for transport reasons."""
        if self.link.state == "disabled":
            return SendResult.failure(DISABLED)
        if not self.live or self._count > 0:
            return await self._enqueue(action, platform_raw, new_request_id())
        request_id = new_request_id()
        result = await self.link.request(action, platform_raw=platform_raw, request_id=request_id)
        if result.success:
            self.sent += 1
            return result
        if result.error == NOT_CONNECTED:
            # The link went down between our look and the request: the not-READY rule.
            return await self._enqueue(action, platform_raw, request_id)
        if (
            isinstance(action, Send)
            and result.retryable
            and not result.ambiguous
            and result.error_kind is None
        ):
            self.resubmitted += 1
            log.info("relay: re-submitting failed send through the outbox (error=%s)", result.error)
            return await self._enqueue(action, platform_raw, request_id)
        return result

    async def perform(self, action: Action, *, platform_raw: str | None) -> SendResult:
        """Send an action that is never queued (``edit``, ``typing``, ``get_chat_info``)."""
        return await self.link.request(action, platform_raw=platform_raw)

    async def chat_info(self, chat_id: str, *, platform_raw: str | None) -> ChatInfo:
        """The chat's ``{name, type}``; defaults ``(chat_id, "dm")`` on any failure (R16)."""
        result = await self.perform(GetChatInfo(chat_id=chat_id), platform_raw=platform_raw)
        if not result.success and not result.raw.get("chat_info") and "name" not in result.raw:
            return ChatInfo(name=chat_id, type="dm")
        return ChatInfo.from_result(result.raw, chat_id)

    # ------------------------------------------------------------------ outbox

    def _identity_for(self, platform_raw: str | None) -> Identity | None:
        for identity in self.identities:
            if identity.platform == platform_raw:
                return identity
        return None

    async def _enqueue(
        self, action: Send | FollowUp, platform_raw: str | None, request_id: str
    ) -> SendResult:
        if self.db.outbox_max == 0:
            # An outbox of size 0 means "fail fast" (RC §10): answer as if nothing queues.
            return SendResult.failure(NOT_CONNECTED, retryable=True)
        kind: OutboxKind = "send" if isinstance(action, Send) else "follow_up"
        identity = self._identity_for(platform_raw)
        try:
            outbox_id = await self.db.put(
                identity.platform if identity else "",
                identity.bot_id if identity else "",
                to_json(unstructure(action)),
                request_id,
                kind,
                self.clock(),
            )
        except OutboxFull:
            log.error("relay: outbox full (%d entries); %s rejected", self.db.outbox_max, kind)
            return SendResult.failure(OUTBOX_FULL, retryable=True)
        self._set_count(self._count + 1)
        self.queued += 1
        if self.live:
            self.poke()
        return SendResult.queued_result(outbox_id)

    async def run_flusher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush the outbox whenever poked, and sweep expired entries every 10 minutes."""
        self._set_count(await self.db.count())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_forever)
            task_status.started()
            async for _ in self._wake_recv:
                await self.flush()

    async def _sweep_forever(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            await self.sweep()

    async def sweep(self) -> list[OutboxEntry]:
        """Delete expired entries (a WARNING each, from the state db) and recount."""
        expired = await self.db.expire(self.clock())
        self._set_count(await self.db.count())
        return expired

    async def flush(self) -> int:
        """Deliver queued entries in order while the link is live; return how many went."""
        await self.sweep()
        delivered = 0
        configured = {identity.platform for identity in self.identities}
        while self.live:
            entry = await self.db.peek_next(self.clock())
            if entry is None:
                self._set_count(await self.db.count())
                return delivered
            if entry.platform and entry.platform not in configured:
                log.warning(
                    "relay: outbox entry %d targets unconfigured identity %r; dropped",
                    entry.id,
                    entry.platform,
                )
                await self._forget(entry)
                continue
            action = _stored_action(entry)
            if action is None:
                await self._forget(entry)
                continue
            result = await self.link.request(
                action, platform_raw=entry.platform, request_id=entry.request_id
            )
            if _never_left(result):
                return delivered  # link went down or was disabled: keep it for the next READY
            if _is_drop_or_timeout(result):
                self.flush_failures += 1
                attempt = await self.db.bump_attempts(entry.id)
                if attempt.dropped:
                    self._set_count(self._count - 1)
                log.warning(
                    "relay: outbox entry %d not delivered (%s), attempt %d",
                    entry.id,
                    result.error,
                    attempt.attempts,
                )
                return delivered
            await self._forget(entry)
            if result.success:
                delivered += 1
                self.flushed += 1
            else:
                log.warning(
                    "relay: queued %s (outbox entry %d) failed: %s",
                    entry.kind,
                    entry.id,
                    result.error,
                )
        return delivered

    async def _forget(self, entry: OutboxEntry) -> None:
        if await self.db.delete(entry.id):
            self._set_count(self._count - 1)

    def stats(self) -> dict[str, int]:
        """Counters for ``gateway.stats``."""
        return {
            "outbox": self._count,
            "replies_sent": self.sent,
            "replies_queued": self.queued,
            "replies_resubmitted": self.resubmitted,
            "outbox_flushed": self.flushed,
            "outbox_flush_failures": self.flush_failures,
        }
