"""The one outbound owner: correlation, identities, descriptors, chat memory, retry (RC §3).

:class:`OutboundRouter` turns an action into an ``outbound`` frame, hands it to its
:class:`Link` in one call (the supervisor, which encodes it through the connection and writes
it on the socket) and waits for the matching ``outbound_result``. It never raises for
transport reasons (R20): every local outcome is a ``SendResult`` with the RC §3.4 text and an
:class:`~protocol._results.ErrorKind`, from which :func:`retry_for` tells the reply policy
what to do next. The caller's own cancellation still propagates.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final, NoReturn, Protocol

import attrs
import trio

from protocol._actions import Action, Edit, GetChatInfo, Send, Typing
from protocol._auth import RequestIdKey
from protocol._descriptor import CapabilityDescriptor
from protocol._events import Identity, MessageEvent
from protocol._events import find_identity as find_identity
from protocol._frames import Frame, Outbound, OutboundResult
from protocol._relay_connection import RelayProtocolError
from protocol._results import (
    DISABLED,
    FRAME_TOO_LARGE,
    NOT_CONNECTED,
    OP_NOT_SUPPORTED_PREFIX,
    OUTBOUND_TIMED_OUT,
    SEND_FAILED_PREFIX,
    TRANSPORT_CLOSED,
    ErrorKind,
    SendResult,
)
from relay_runtime._state._records import _buf_key_text, _msg_key_text

log = logging.getLogger("relay_runtime.outbound")

#: How many chats the scope/platform memory keeps (RC §7.7, our choice).
CHAT_MEMORY_SIZE = 10_000


def new_request_id() -> str:
    """A fresh ``requestId``: ``uuid4().hex``, 32 lowercase hex digits (R9)."""
    return uuid.uuid4().hex


class RequestIds:
    """The ``requestId``s of one turn's replies, derived from its delivery (RC §6.2).

    The n-th ``send``/``follow_up`` a turn makes (n counted from 0, each chunk of a split
    reply once) gets ``HMAC-SHA256(key, delivery || n)`` cut to 32 lowercase hex digits,
    where ``delivery`` names the delivery by its ``K_msg`` (else its ``K_buf``) and ``key``
    is the gateway's reply key (random, kept in its state db). A re-run of the same
    delivery after a crash or a replay therefore re-sends under the same ids, and the
    connector, which deduplicates by ``(gateway id, requestId)``, drops the repeat: the
    first reply stands, even when the re-run (an LLM) wrote different text.
    """

    __slots__ = ("_delivery", "_key", "_next")

    def __init__(self, key: bytes | RequestIdKey, delivery: str) -> None:
        self._key = key if isinstance(key, RequestIdKey) else RequestIdKey(key)
        self._delivery = delivery.encode()
        self._next = 0

    def next(self) -> str:
        """The id of the turn's next reply."""
        ordinal = self._next
        self._next += 1
        return self._key.derive(self._delivery, ordinal)


def reply_ids_for(
    key: bytes | RequestIdKey, k_msg: tuple[str, str, str] | None, k_buf: str | None
) -> RequestIds | None:
    """The :class:`RequestIds` of a delivery, or ``None`` (random ids) when it has no key.

    ``K_msg`` counts only with a chat and a message id (as for dedupe, RC §4.6); it is
    preferred over ``K_buf`` because a message keeps it whether it came live or replayed.
    """
    # The delivery's claim key: the same compact JSON text as the state db keeps.
    if k_msg is not None and k_msg[1] and k_msg[2]:
        delivery = _msg_key_text(k_msg)
    elif k_buf:
        delivery = _buf_key_text(k_buf)
    else:
        return None
    return RequestIds(key, delivery)


class Queued(enum.Enum):
    """What ``Link.send`` returns for a frame queued, not yet written (see :data:`QUEUED`)."""

    QUEUED = "queued"


#: ``Link.send``'s answer for a frame handed to a writer task that reports the write to
#: :meth:`OutboundRouter.write_done` (the supervisor's socket writer): the requester then
#: waits once, for the result, and its timeout starts when the writer has written the frame.
QUEUED: Final = Queued.QUEUED


class FrameTooLarge(Exception):
    """An encoded frame is over ``max_frame_bytes`` (RC §2): it can never go out as is."""


class FrameNotEncodable(Exception):
    """A frame the codec cannot encode (a value JSON cannot hold): it can never go out."""


class Link(Protocol):
    """The supervisor, the socket writer, as the outbound owner sees it: the one link."""

    @property
    def live(self) -> bool:
        """Outbound may be sent (READY or IDLE_REQUESTED, or a going-idle drain window)."""

    @property
    def state(self) -> str:
        """The lower-case connection state name."""

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        """The descriptor in force for ``platform``; the default for ``""`` or unknown."""

    async def send(self, frame: Outbound) -> str | Queued | None:
        """Encode ``frame`` through the connection, which checks it may go now, and write it.

        ``None`` once written; :data:`QUEUED` once handed to a writer that reports the
        write (or why it failed) to :meth:`OutboundRouter.write_done`; else why the write
        failed (retryable).

        Raises:
            RelayProtocolError: the connection does not allow the frame in its state.
            FrameNotEncodable: the codec cannot encode the frame.
            FrameTooLarge: the encoded frame is over the frame limit.
        """

    def send_nowait(self, frame: Frame) -> bool:
        """Queue a fire-and-forget frame for the writer; False when it cannot go now."""


class Retry(enum.Enum):
    """What to do with a reply after one attempt (RC §6.2), from :func:`retry_for`."""

    #: Final: the connector answered (success, or a failure a retry would repeat), or the
    #: frame can never go out.
    NO = "no"
    #: The relay is disabled: a new reply fails, a queued one stays where it is.
    HALT = "halt"
    #: Not written, or pending when the socket closed: send it on a later connection under
    #: the same ``requestId`` (the connector drops a repeat).
    AFTER_RECONNECT = "after_reconnect"
    #: No answer on a live link in time: it may have gone out; again later, same
    #: ``requestId``, and it counts as an unanswered attempt.
    UNANSWERED = "unanswered"
    #: The connector answered retryable and unambiguous: re-submit once through the outbox.
    OUTBOX = "outbox"


_RETRY_BY_KIND: Final[Mapping[ErrorKind, Retry]] = {
    ErrorKind.EGRESS_DECLINED: Retry.NO,
    ErrorKind.REJECTED: Retry.NO,
    ErrorKind.OUTBOX_FULL: Retry.NO,
    ErrorKind.DISABLED: Retry.HALT,
    ErrorKind.NOT_CONNECTED: Retry.AFTER_RECONNECT,
    ErrorKind.CLOSED: Retry.AFTER_RECONNECT,
    ErrorKind.DROPPED: Retry.AFTER_RECONNECT,
    ErrorKind.TIMED_OUT: Retry.UNANSWERED,
}


def retry_for(result: SendResult) -> Retry:
    """How ``result`` may be retried, from its ``error_kind`` (never from its text)."""
    if result.success or result.queued:
        return Retry.NO
    if result.error_kind is None:  # the connector's own answer
        return Retry.OUTBOX if result.retryable and not result.ambiguous else Retry.NO
    return _RETRY_BY_KIND[result.error_kind]


@attrs.frozen
class ChatFacts:
    """What the last inbound event of a chat told us."""

    guild_id: str | None
    platform_raw: str


class ChatMemory:
    """LRU memory ``chat_id -> (guild_id, platform_raw)`` fed from every inbound event."""

    def __init__(self, size: int = CHAT_MEMORY_SIZE) -> None:
        self.size = size
        self._chats: OrderedDict[str, ChatFacts] = OrderedDict()

    def __len__(self) -> int:
        return len(self._chats)

    def remember(self, event: MessageEvent) -> None:
        """Record the chat's guild and raw platform from an inbound event."""
        source = event.source
        chat_id = source.chat_id
        if not chat_id:
            return
        chats = self._chats
        guild_id = source.guild_id or None
        facts = chats.get(chat_id)
        if facts is None or facts.guild_id != guild_id or facts.platform_raw != source.platform_raw:
            chats[chat_id] = ChatFacts(guild_id, source.platform_raw)
        chats.move_to_end(chat_id)
        while len(chats) > self.size:
            chats.popitem(last=False)

    def get(self, chat_id: str) -> ChatFacts | None:
        """The facts for ``chat_id`` (refreshing its recency), or ``None``."""
        facts = self._chats.get(chat_id)
        if facts is not None:
            self._chats.move_to_end(chat_id)
        return facts


@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: SendResult | None = None
    #: When the frame was written (the timeout counts from here, RC §6.2).
    written_at: float | None = None
    #: The requester's wait for the result in its own cancel scope (no timer running),
    #: once it waits; its deadline is set on write.
    wait: trio.CancelScope | None = None
    #: Its deadline is in the router's timer heap (set on write while the timer runs).
    timed: bool = False
    #: The timer found it unanswered at its deadline.
    expired: bool = False
    #: The requester waits on ``done`` alone (the router's timer counts its deadline).
    bare: bool = False
    #: The requester has left ``_exchange``: the timer forgets it.
    over: bool = False

    def outcome(self) -> SendResult | None:
        # A method, not the attribute: another task may resolve it across an await.
        return self.result

    def resolve(self, result: SendResult) -> None:
        if self.result is None:
            self.result = result
            self.done.set()


def _write_failure(error: str) -> SendResult:
    """A request whose frame was not written (``error`` says why): retry after reconnect."""
    return SendResult.failure(SEND_FAILED_PREFIX + error, retryable=True, kind=ErrorKind.DROPPED)


#: The actions addressed to a chat, and those of them the chat's scope is injected into
#: (tuples made once: ``A | B`` in an ``isinstance`` builds a union on every call).
_TO_A_CHAT: Final = (Send, Edit, Typing, GetChatInfo)
_SCOPED: Final = (Send, Edit, Typing)


def _chat_id(action: Action) -> str | None:
    if isinstance(action, _TO_A_CHAT):
        return action.chat_id
    return None


class OutboundRouter:
    """The one owner of outbound: every frame the gateway sends goes through it (RC §3).

    It resolves a platform to its identity, looks up descriptors, keeps the chat memory
    (fed once per inbound, by the dispatcher), builds, tags and scopes ``outbound`` frames,
    writes them through its :class:`Link` (the supervisor) and correlates each
    ``outbound_result`` with its request by ``requestId``. The reply policy
    (:class:`~relay_runtime._replies.Replies`) and the dispatcher call it; the supervisor
    hands it results (:meth:`resolve`) and fails pending requests when a socket ends
    (:meth:`fail_all`).
    """

    def __init__(
        self,
        link: Link,
        *,
        identities: tuple[Identity, ...],
        outbound_timeout_s: float,
        memory: ChatMemory | None = None,
    ) -> None:
        self.link = link
        self.identities = identities
        self.outbound_timeout_s = outbound_timeout_s
        self.memory = memory if memory is not None else ChatMemory()
        self._pending: dict[str, _Pending] = {}
        self._drained = trio.Event()
        self._drained.set()
        #: Set by :meth:`stop`: a request refused now is told the transport closed for good.
        self.stopped = False
        self.timeouts = 0
        self.late_results = 0
        #: Deadlines of written requests, ``(at, n, pending)``, while :meth:`run_timer` runs.
        self._deadlines: list[tuple[float, int, _Pending]] = []
        self._deadline_numbers = itertools.count()
        self._timer_running = False
        #: When the timer wakes next (``inf``: when a deadline is added), and its wake-up.
        self._timer_at = math.inf
        self._timer_wake = trio.Event()

    # ---- the link, as callers see it ----------------------------------------------------

    @property
    def state(self) -> str:
        """The lower-case connection state name (``ready``, ``backoff``, ``disabled`` …)."""
        return self.link.state

    @property
    def live(self) -> bool:
        """Whether outbound frames may go out now."""
        return self.link.live

    def stop(self) -> None:
        """The gateway is stopping for good: refusals say the transport closed (RC §3.4)."""
        self.stopped = True

    @property
    def pending_count(self) -> int:
        """Requests written (or being written) whose result has not arrived."""
        return len(self._pending)

    async def wait_drained(self) -> None:
        """Wait until no request is pending."""
        while self._pending:
            await self._drained.wait()

    # ---- identities, descriptors, chats -------------------------------------------------

    def identity_for(self, platform_raw: str | None) -> Identity | None:
        """The configured identity for ``platform_raw``, or ``None``.

        Resolved by :func:`protocol._events.find_identity`, as the connection resolves its own.
        """
        return find_identity(self.identities, platform_raw)

    def reply_platform(self, platform_raw: str | None) -> str:
        """The platform a turn replies on: as the connector named it, else the primary one."""
        return platform_raw or self.identities[0].platform

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        """The descriptor in force for ``platform``; the default for ``""`` or unknown.

        The connection keeps the descriptors and decides (``RelayConnection.descriptor_for``).
        """
        return self.link.descriptor_for(platform)

    def remember(self, event: MessageEvent) -> None:
        """Feed the chat memory used for tagging and scope injection (RC §7.7)."""
        self.memory.remember(event)

    # ---- results from the reader --------------------------------------------------------

    def resolve(self, frame: OutboundResult) -> bool:
        """Resolve the request ``frame`` answers; unknown (or late) ids are ignored (R10)."""
        pending = self._pending.get(frame.request_id)
        if pending is None:
            self.late_results += 1
            log.debug("relay: outbound_result for unknown requestId %s ignored", frame.request_id)
            return False
        pending.resolve(SendResult.from_wire(frame.result))
        return True

    def write_done(self, request_id: str, error: str | None) -> bool:
        """The writer wrote request ``request_id``'s frame (``error`` is ``None``), or not.

        A link whose ``send`` answered :data:`QUEUED` reports the write here: written, the
        request's timeout starts now (RC §6.2: counted from the finished write); not
        written, the request ends as a failed write would (``relay send failed: <error>``,
        retryable, ``DROPPED``). Unknown or answered ids: ignored (False).
        """
        pending = self._pending.get(request_id)
        if pending is None or pending.result is not None:
            return False
        if error is not None:
            pending.resolve(_write_failure(error))
            return True
        self._written(pending, trio.current_time())
        return True

    def _written(self, pending: _Pending, now: float) -> None:
        """``pending``'s frame was written at ``now``: its timeout starts (RC §6.2)."""
        pending.written_at = now
        at = now + self.outbound_timeout_s
        if pending.wait is not None:
            pending.wait.deadline = at
        elif self._timer_running:
            pending.timed = True
            heap = self._deadlines
            # Answered or abandoned requests at the top leave now (answers come back
            # roughly in write order), so the heap holds about what is in flight.
            while heap and ((top := heap[0][2]).result is not None or top.over):
                heapq.heappop(heap)
            heapq.heappush(heap, (at, next(self._deadline_numbers), pending))
            if at < self._timer_at:
                self._timer_wake.set()
        elif pending.bare:
            # Waiting for the timer, which stopped since: wake it to wait on its own.
            pending.done.set()

    async def run_timer(self) -> NoReturn:
        """Time out written requests (RC §6.2) for as long as it runs, in the owner's nursery.

        While it runs a reply waits for its result on the request's ``trio.Event`` alone,
        instead of in a cancel scope of its own whose deadline is the timeout (entering and
        leaving a scope is ~50 Python calls per reply). The deadlines, counted from each
        finished write, are kept in a heap; the timer sleeps until the earliest and ends
        the requests still unanswered then. When it stops, a request still waiting goes
        back to waiting in its own scope, with the same deadline.
        """
        if self._timer_running:
            raise RuntimeError("the outbound timer is already running")
        self._timer_running = True
        heap = self._deadlines
        try:
            while True:
                now = trio.current_time()
                while heap:
                    at, _, pending = heap[0]
                    if pending.result is not None or pending.over:
                        heapq.heappop(heap)
                    elif at <= now:
                        heapq.heappop(heap)
                        pending.expired = True
                        pending.done.set()
                    else:
                        break
                self._timer_at = heap[0][0] if heap else math.inf
                self._timer_wake = wake = trio.Event()
                with trio.move_on_at(self._timer_at):
                    await wake.wait()
        finally:
            self._timer_running = False
            self._timer_at = math.inf
            for _, _, pending in heap:
                pending.timed = False
                if pending.bare:
                    pending.done.set()
            heap.clear()

    def fail_all(self, error: str, *, retryable: bool) -> int:
        """Resolve every pending request at once with a local failure (R41).

        ``error`` is the machine's text: ``relay disabled``, or ``relay transport closed``
        (retryable after a drop, not at our own shutdown).
        """
        if error == DISABLED:
            kind = ErrorKind.DISABLED
        else:
            kind = ErrorKind.DROPPED if retryable else ErrorKind.CLOSED
        failure = SendResult.failure(error, retryable=retryable, kind=kind)
        count = 0
        for pending in list(self._pending.values()):
            if pending.result is None:
                pending.resolve(failure)
                count += 1
        return count

    # ---- building frames ----------------------------------------------------------------

    def target(self, action: Action, platform_raw: str | None) -> Identity | None:
        """The identity a frame goes out as: ``None`` when untagged (RC §3.1)."""
        if len(self.identities) < 2:
            return None
        if platform_raw is None:
            chat = _chat_id(action)
            facts = self.memory.get(chat) if chat else None
            platform_raw = facts.platform_raw if facts else None
        return self.identity_for(platform_raw)

    def with_scope(self, action: Action) -> Action:
        """Inject the remembered ``guild_id``/``scope_id`` into send/edit/typing (RC §3.3)."""
        if not isinstance(action, _SCOPED) or action.metadata.get("guild_id"):
            return action
        facts = self.memory.get(action.chat_id)
        if facts is None or not facts.guild_id:
            return action
        metadata: dict[str, Any] = dict(action.metadata)
        metadata["guild_id"] = facts.guild_id
        if not metadata.get("scope_id"):
            metadata["scope_id"] = facts.guild_id
        return attrs.evolve(action, metadata=metadata)

    def build(self, action: Action, *, request_id: str, platform_raw: str | None) -> Outbound:
        """The ``outbound`` frame for ``action`` (scope injected, tagged if resolved)."""
        return self._build(action, request_id, self.target(action, platform_raw))

    def _build(self, action: Action, request_id: str, identity: Identity | None) -> Outbound:
        return Outbound(
            request_id=request_id,
            action=self.with_scope(action),
            platform=identity.platform if identity else None,
            bot_id=(identity.bot_id or None) if identity else None,
        )

    # ---- sending ------------------------------------------------------------------------

    def send_nowait(self, frame: Frame) -> bool:
        """Queue a fire-and-forget frame (``inbound_ack``, ``interrupt``); False if not live."""
        return self.link.send_nowait(frame)

    def refusal(self) -> SendResult | None:
        """The fail-fast answer when outbound is not live, else ``None`` (RC §3.4)."""
        link = self.link
        if link.live:
            return None
        if link.state == "disabled":
            return SendResult.failure(DISABLED, kind=ErrorKind.DISABLED)
        if self.stopped or link.state == "closed":
            return SendResult.failure(TRANSPORT_CLOSED, kind=ErrorKind.CLOSED)
        return SendResult.failure(NOT_CONNECTED, retryable=True, kind=ErrorKind.NOT_CONNECTED)

    async def request(
        self,
        action: Action,
        *,
        platform_raw: str | None = None,
        request_id: str | None = None,
    ) -> SendResult:
        """Send ``action`` and wait for its result; never raises for transport reasons.

        ``request_id`` is the reply's id when the caller has one (a turn's replies, an
        outbox entry); a fresh random one otherwise.
        """
        if not self.link.live:
            refused = self.refusal()
            if refused is not None:
                return refused
        identity = self.target(action, platform_raw)
        descriptor = self.link.descriptor_for(identity.platform if identity else "")
        if not descriptor.allows(action.OP):
            return SendResult.failure(OP_NOT_SUPPORTED_PREFIX + action.OP, kind=ErrorKind.REJECTED)
        rid = request_id or new_request_id()
        return await self._exchange(rid, self._build(action, rid, identity))

    async def _exchange(self, rid: str, frame: Outbound) -> SendResult:
        # Registered before the write: the result may arrive before ``send`` returns.
        pending = self._pending[rid] = _Pending()
        if self._drained.is_set():  # else the unset one is kept: its waiters stay woken
            self._drained = trio.Event()
        try:
            try:
                error = await self.link.send(frame)
            except RelayProtocolError as exc:  # the connection's gate (RC §3.4) closed first
                log.info("relay: outbound %s not sent: %s", rid, exc)
                return self.refusal() or SendResult.failure(
                    NOT_CONNECTED, retryable=True, kind=ErrorKind.NOT_CONNECTED
                )
            except FrameTooLarge:
                return SendResult.failure(FRAME_TOO_LARGE, kind=ErrorKind.REJECTED)
            except FrameNotEncodable as exc:
                return SendResult.failure(
                    f"{SEND_FAILED_PREFIX}cannot encode frame ({exc})", kind=ErrorKind.REJECTED
                )
            result = pending.outcome()
            if result is not None:
                return result
            if isinstance(error, str):
                return _write_failure(error)
            if error is None:  # written: the timeout starts now
                self._written(pending, trio.current_time())
            # Queued: the writer's ``write_done`` starts the timeout once it has written.
            result = await self._result(pending)
            if result is not None:
                return result
            self.timeouts += 1
            log.warning("relay: outbound %s timed out after %g s", rid, self.outbound_timeout_s)
            return SendResult.failure(OUTBOUND_TIMED_OUT, ambiguous=True, kind=ErrorKind.TIMED_OUT)
        finally:
            pending.over = True
            del self._pending[rid]
            if not self._pending:
                self._drained.set()

    async def _result(self, pending: _Pending) -> SendResult | None:
        """Wait for ``pending``'s result; ``None`` when its timeout passed first."""
        if self._timer_running and (pending.timed or pending.written_at is None):
            # The router's timer counts the deadline (or will, once it is written).
            pending.bare = True
            try:
                await pending.done.wait()
            finally:
                pending.bare = False
            result = pending.outcome()
            if result is not None or pending.expired:
                return result
            # The timer stopped before the deadline: wait on in a scope of our own.
            pending.done = trio.Event()
            pending.timed = False
        with trio.CancelScope() as wait:
            if pending.written_at is not None:
                wait.deadline = pending.written_at + self.outbound_timeout_s
            pending.wait = wait
            try:
                await pending.done.wait()
            finally:
                pending.wait = None
        return pending.outcome()
