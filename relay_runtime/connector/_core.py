"""The reference connector's state and the few internals every part of it uses.

:class:`ConnectorCore` holds what one connector knows (instances, connections, records,
performed ``requestId``s, the journal) and how a frame is written to a socket, how a socket
is dropped and how a change is announced. The parts that act on it are mixins over it:
:mod:`.access` (credentials), :mod:`.answers` (``outbound``), :mod:`.observe` (what tests
read), :mod:`.sockets` (serving sockets); :mod:`.server` puts them together.
"""

from __future__ import annotations

import collections
import itertools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from secrets import token_hex
from typing import Any, Literal, TypeVar

import trio
from trio_websocket import ConnectionClosed

from protocol._codec import encode_frame
from protocol._connection import UNAUTHORIZED
from protocol._frames import ConnectorFrame
from protocol._framing import DEFAULT_MAX_FRAME_BYTES
from protocol._urls import RELAY_PATH
from relay_runtime.connector._connection import (
    AcceptHook,
    Chaos,
    Connection,
    GoingIdleHook,
    Instance,
    OutboundObserver,
    abort,
)
from relay_runtime.connector._outcomes import OutcomeTable
from relay_runtime.connector._presets import DEFAULT_DESCRIPTORS, DescriptorSpec
from relay_runtime.connector._records import (
    BadFrame,
    GatedDrop,
    Post,
    Received,
    Rejection,
    Sent,
    SentMessage,
)
from relay_runtime.connector._relevance import RelevancePolicy
from relay_runtime.connector._seams import ControlPlaneLike, WakePokerLike
from relay_runtime.connector._upgrade_auth import DEFAULT_MAX_TOKEN_LIFETIME_S
from relay_runtime.connector._ws_batch import send_texts

log = logging.getLogger("relay.connector")

#: How many performed ``requestId``s the connector remembers for idempotency (LRU).
DEFAULT_REQUEST_ID_MEMORY = 100_000
#: Records of each kind the connector CLI keeps (``keep_records``): the newest 1,000 frames
#: received, sent, posts, ... — enough for the admin routes and a look back, flat memory.
DEFAULT_KEEP_RECORDS = 1_000
#: What a ``buffer_prefix`` may hold: it goes into ``bufferId``s and log lines.
_BUFFER_PREFIX = re.compile(r"[A-Za-z0-9._~-]{1,64}")

T = TypeVar("T")

DescriptorMode = Literal["valid", "invalid", "none"]
RejectMode = Literal["http", "close"]


def _records(keep: int | None) -> MutableSequence[T]:
    """A record list: every record (``None``: tests read them all), else the newest ``keep``."""
    return [] if keep is None else collections.deque(maxlen=keep)


class ConnectorCore:
    """The state of a :class:`~.server.ReferenceConnector` (its arguments are documented there)."""

    def __init__(
        self,
        *,
        secrets: Mapping[str, str | Sequence[str]] | None = None,
        registry: ControlPlaneLike | None = None,
        poker: WakePokerLike | None = None,
        descriptors: Mapping[str, DescriptorSpec] | None = None,
        allow_unauthenticated: bool = False,
        reject_mode: RejectMode = "http",
        buffer_when_disconnected: bool = True,
        always_buffer: bool = False,
        drain_window: int = 1,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        close_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        max_token_lifetime_s: float | None = DEFAULT_MAX_TOKEN_LIFETIME_S,
        request_id_memory: int = DEFAULT_REQUEST_ID_MEMORY,
        buffer_prefix: str | None = None,
        on_outbound: OutboundObserver | None = None,
        on_going_idle: GoingIdleHook | None = None,
        on_accept: AcceptHook | None = None,
        journal_sink: Callable[[Post], None] | None = None,
        keep_records: int | None = None,
    ) -> None:
        if buffer_prefix is None:
            buffer_prefix = token_hex(4)
        elif not isinstance(buffer_prefix, str) or not _BUFFER_PREFIX.fullmatch(buffer_prefix):
            raise ValueError(
                f"buffer_prefix must be 1-64 of A-Z a-z 0-9 . _ ~ -, not {buffer_prefix!r}"
            )
        self._buffer_prefix = buffer_prefix
        if drain_window < 1:
            raise ValueError(f"drain_window must be >= 1, not {drain_window}")
        if keep_records is not None and keep_records < 1:
            raise ValueError(f"keep_records must be >= 1 or None, not {keep_records}")
        if request_id_memory < 1:
            raise ValueError(f"request_id_memory must be >= 1, not {request_id_memory}")
        if max_token_lifetime_s is not None and not max_token_lifetime_s > 0:
            raise ValueError(f"max_token_lifetime_s must be > 0, not {max_token_lifetime_s}")
        if reject_mode not in ("http", "close"):
            raise ValueError(f"reject_mode must be 'http' or 'close', not {reject_mode!r}")
        self._secrets: dict[str, list[str]] = {}
        for gateway_id, value in (secrets or {}).items():
            self.set_secrets(gateway_id, value)
        self.registry = registry
        on_revoke = getattr(registry, "on_revoke", None)
        if on_revoke is not None:
            # The control plane forgot the gateway's secrets: its live sockets go as well.
            on_revoke(self._close_revoked)
        self.poker = poker
        self.descriptors: dict[str, DescriptorSpec] = dict(
            DEFAULT_DESCRIPTORS if descriptors is None else descriptors
        )
        self.descriptor_mode: DescriptorMode = "valid"
        self.allow_unauthenticated = allow_unauthenticated
        self.reject_mode: RejectMode = reject_mode
        self.buffer_when_disconnected = buffer_when_disconnected
        self.always_buffer = always_buffer
        self.ack_going_idle = True
        self.drain_window = drain_window
        self.max_frame_bytes = max_frame_bytes
        self.close_timeout = close_timeout
        self.clock = clock
        self.max_token_lifetime_s = max_token_lifetime_s
        self.outcomes = OutcomeTable()
        #: chat id -> (name, type) answered to ``get_chat_info``; filled from injected events.
        self.chat_info: dict[str, tuple[str, str]] = {}
        self.policies: dict[tuple[str, str], RelevancePolicy] = {}
        self.on_outbound: OutboundObserver | None = on_outbound
        self.on_going_idle: GoingIdleHook | None = on_going_idle
        self.on_accept: AcceptHook | None = on_accept

        self._revoked: set[str] = set()
        self._instances: dict[str, Instance] = {}
        self._connections: list[Connection] = []
        self.keep_records = keep_records
        self._received: MutableSequence[Received] = _records(keep_records)
        self._sent: MutableSequence[Sent] = _records(keep_records)
        self._bad_frames: MutableSequence[BadFrame] = _records(keep_records)
        self._rejections: MutableSequence[Rejection] = _records(keep_records)
        self._gated: MutableSequence[GatedDrop] = _records(keep_records)
        #: message id -> what was posted, oldest first (edits look messages up here).
        self._messages: OrderedDict[str, SentMessage] = OrderedDict()
        self._pokes: MutableSequence[str] = _records(keep_records)
        self._journal: MutableSequence[Post] = _records(keep_records)
        self._posts = 0  # posts journalled so far: the next Post's seq is one more
        self.journal_sink = journal_sink
        self._ids = itertools.count(1)
        self._buffer_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self.request_id_memory = request_id_memory
        # (gateway id, requestId) -> the result given when the action was performed.
        self._performed: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        #: ``outbound`` frames whose ``requestId`` was already performed for that gateway:
        #: answered with the first result, nothing egressed again.
        self.duplicate_outbounds = 0
        self._chaos: Chaos | None = None
        self.chaos_drops = 0
        self._change = trio.Event()
        self._waiting = 0  # tasks in wait_for
        # Set only by changes the drain depends on (buffer, acks, flips, connections), so
        # that the frames of every message do not wake each connection's drain task.
        self._drain_change = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`serve` started)."""
        if self._port is None:
            raise RuntimeError("the connector is not serving yet")
        return self._port

    @property
    def url(self) -> str:
        """The ``ws://host:port/relay`` URL a gateway dials."""
        return f"ws://{self._host}:{self.port}{RELAY_PATH}"

    @property
    def base_url(self) -> str:
        """The ``ws://host:port`` base (the gateway appends ``/relay`` itself)."""
        return f"ws://{self._host}:{self.port}"

    def set_secrets(self, gateway_id: str, secrets: str | Sequence[str]) -> None:
        """Accept ``gateway_id`` with ``secrets`` (one, or a rotation list, primary first)."""
        if not gateway_id:
            raise ValueError("gateway_id must be non-empty")
        values = [secrets] if isinstance(secrets, str) else list(secrets)
        if not values or not all(isinstance(s, str) and s for s in values):
            raise ValueError(f"gateway {gateway_id!r} needs at least one non-empty secret")
        self._secrets[gateway_id] = values

    def _close_revoked(self, gateway_id: str) -> None:
        """Close ``gateway_id``'s live sockets 4401 ``unauthorized`` (from a sync caller).

        Each connection's own task performs the close; this only asks for it.
        """
        for conn in self._connections:
            if conn.open and conn.gateway_id == gateway_id and conn.nursery is not None:
                conn.close_code, conn.close_reason = UNAUTHORIZED, "unauthorized"
                conn.closing = (UNAUTHORIZED, "unauthorized")
                conn.nursery.cancel_scope.cancel()
        self._changed()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true; it is re-checked after every change.

        Changes are frames in or out, connections opening or closing, rejections, acks,
        gate drops and pokes. Bound the wait with the caller's own cancel scope.
        """
        while not predicate():
            self._waiting += 1
            try:
                await self._change.wait()
            finally:
                self._waiting -= 1

    def _changed(self) -> None:
        """Announce a change the drain may depend on (and wake every :meth:`wait_for`)."""
        self._drain_change.set()
        self._drain_change = trio.Event()
        self._noted()

    def _noted(self) -> None:
        """Announce a new record (a frame in or out): wakes :meth:`wait_for`, not the drain."""
        if self._waiting:  # most records are written with nobody waiting: no new Event
            self._change.set()
            self._change = trio.Event()

    def _resolve(self, gateway_id: str | None) -> str:
        if gateway_id is not None:
            return gateway_id
        known = set(self._secrets) | set(self._instances)
        if len(known) == 1:
            return next(iter(known))
        if not known:
            if self.allow_unauthenticated:
                return ""
            raise ValueError("no gateway is configured or connected; pass gateway_id=")
        names = ", ".join(sorted(repr(k) for k in known))
        raise ValueError(f"several gateways are known ({names}); pass gateway_id=")

    def _instance(self, gateway_id: str) -> Instance:
        inst = self._instances.get(gateway_id)
        if inst is None:
            inst = self._instances[gateway_id] = Instance(gateway_id)
        return inst

    async def _pump(self, inst: Instance) -> None:
        """Send ``inst``'s oldest unsent entries on its current connection, up to the window.

        The drain task's work (:meth:`~.sockets.Sockets._drain`), done inline where an entry
        or a free slot appears (an injection, an ``inbound_ack``) so that a message does not
        wake that task. Order holds however many callers pump at once: an entry is taken and
        its frame queued on the socket (the reader's outbox while it is corked, else
        ``wsproto``, then the socket's FIFO lock) with no checkpoint in between.
        """
        conn = inst.current
        while (
            conn is not None
            and conn.open
            and conn.draining
            and inst.current is conn
            and len(conn.in_flight) < self.drain_window
        ):
            entry = inst.buffer.next_unsent(conn.in_flight, conn.cursor)
            if entry is None:
                return
            assert entry.buffer_id is not None
            conn.in_flight.add(entry.buffer_id)
            if not await self._write(conn, entry):
                return

    async def _write(self, conn: Connection, frame: ConnectorFrame) -> bool:
        return await self._write_text(conn, encode_frame(frame), frame)

    async def _write_text(self, conn: Connection, text: str, frame: ConnectorFrame | None) -> bool:
        """Write ``text`` as one message; ``False`` if the socket is closed.

        While the socket's reader holds ``conn`` corked, or its outbox holds frames (the
        reader writes them before it next waits), the frame joins the outbox instead, behind
        them, and goes out with the reader's next :meth:`_flush` (``True`` then means queued).
        """
        if conn.corked or conn.outbox:
            conn.outbox.append((text, frame))
            conn.outbox_chars += len(text)
            return True
        try:
            await send_texts(conn.ws, [text])
        except ConnectionClosed:
            return False
        self._sent.append(Sent(conn.id, conn.gateway_id, text, frame))
        if self._waiting:  # :meth:`_noted`, inline: a frame is written with nobody waiting
            self._noted()
        if self._chaos is not None:  # no coroutine per frame when no drops are scheduled
            await self._chaos_tick(conn)
        return True

    async def _flush(self, conn: Connection) -> bool:
        """Write the frames corked in ``conn``'s outbox, in order, in one stream write.

        Each is still its own WebSocket message (the wire is the same as one write per
        frame); it is recorded as sent once written. ``False`` if the socket is closed.
        """
        batch = conn.outbox
        if not batch:
            return True
        conn.outbox = []
        conn.outbox_chars = 0
        try:
            await send_texts(conn.ws, [text for text, _ in batch])
        except ConnectionClosed:
            return False
        sent, connection_id, gateway_id = self._sent, conn.id, conn.gateway_id
        for text, frame in batch:
            sent.append(Sent(connection_id, gateway_id, text, frame))
        if self._waiting:
            self._noted()
        return True

    async def _chaos_tick(self, conn: Connection) -> None:
        chaos = self._chaos
        if chaos is None or not conn.open:
            return
        chaos.countdown -= 1
        if chaos.countdown > 0:
            return
        chaos.rearm()
        self.chaos_drops += 1
        await self._drop(conn, chaos.code, chaos.reason)

    async def _drop(self, conn: Connection, code: int | None, reason: str | None) -> None:
        if not conn.open:
            return
        if code is None:
            conn.close_code, conn.close_reason = 1006, "aborted"
            await abort(conn.stream)
            return
        conn.close_code, conn.close_reason = code, reason
        if conn.nursery is None:  # not serving yet: nothing to close gracefully
            await abort(conn.stream)
            return
        conn.closing = (code, reason)
        conn.nursery.cancel_scope.cancel()
        await self.wait_for(lambda: not conn.open)
