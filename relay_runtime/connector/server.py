"""The reference connector's WebSocket side: a real ``/relay`` server on loopback.

A development and test peer for the gateway, not a production connector. It speaks the
connector's half of the relay contract v1 (RC §1-§8) well enough to run a gateway for real:

* ``/relay`` upgrades authenticated with the HMAC bearer (``protocol.auth``), a rotation list
  of secrets per gateway; a refusal is HTTP 401 or an accept-then-close 4401 (switchable);
  any other path gets 400. The gateway id comes from the token, never from a frame.
* ``hello`` -> a per-platform descriptor (or an invalid one, or none, for handshake tests).
* ``outbound`` -> ``outbound_result`` following an :class:`~.outcomes.OutcomeTable`,
  idempotent by ``requestId`` per gateway: the gateway's outbox re-sends a reply with its
  stored ``requestId`` after a drop (RC §6.2), so a repeat is answered with the first result
  and egresses nothing (counted in ``duplicate_outbounds``).
* ``going_idle`` flips the gateway's instance to buffered-only and acks; buffered inbound is
  replayed with ``bufferId``s after the next handshake, advancing only on ``inbound_ack``.
* ``bufferId``s are ``buf-<run prefix>-<n>``: the prefix is random per connector unless set,
  so a gateway whose state dir outlives a connector run never mistakes a new message for a
  replay it already completed (``bufferId`` is a replay-dedupe key, RC §4.6).
* Besides listening on TCP (:meth:`ReferenceConnector.serve`) it serves any already-open
  trio stream (:meth:`ReferenceConnector.serve_stream`), and
  :meth:`ReferenceConnector.memory_dialer` connects a gateway to it over in-memory streams,
  for tests under trio's ``MockClock``.
* Observer hooks: ``on_outbound`` sees every ``outbound`` frame before it is answered, and
  ``on_going_idle`` may take over a ``going_idle`` (e.g. drop the socket instead of acking).
* Test hooks: inject ``inbound`` / ``passthrough_forward`` / ``interrupt_inbound``, revoke or
  expire a gateway (4401), drop connections (TCP abort or a close code, also at seeded random
  points), and observe every frame with :meth:`ReferenceConnector.wait_for`.
* Operator controls (driven over HTTP by :mod:`~relay_runtime.connector.admin`): flip an
  instance to buffered-only (:meth:`ReferenceConnector.hold`), replay its buffer now
  (:meth:`ReferenceConnector.flush`), and the journal of what gateways posted
  (:attr:`ReferenceConnector.journal`, optionally mirrored by a ``journal_sink``).
* Upgrade tokens that never expire or live longer than ``max_token_lifetime_s`` are refused
  (see :mod:`~relay_runtime.connector.upgrade_auth`).

One :class:`ReferenceConnector` serves any number of gateways; each authenticated gateway id
is one *instance* with its own delivery buffer (an unauthenticated dev gateway is instance
``""``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import re
import socket
import struct
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from secrets import token_hex
from typing import Any, Literal, TypeVar

import attrs
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
    wrap_server_stream,
)
from wsproto.utilities import LocalProtocolError

from protocol.actions import Edit, FollowUp, GetChatInfo, Send, Typing
from protocol.codec import encode_frame, to_json
from protocol.connection import UNAUTHORIZED
from protocol.descriptor import CapabilityDescriptor
from protocol.errors import FrameError
from protocol.events import MessageEvent
from protocol.frames import (
    ConnectorFrame,
    DescriptorFrame,
    GatewayFrame,
    GoingIdle,
    GoingIdleAck,
    Hello,
    Inbound,
    InboundAck,
    Interrupt,
    InterruptInbound,
    Outbound,
    OutboundResult,
    PassthroughForward,
    PassthroughForwardFrame,
)
from protocol.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder
from protocol.urls import RELAY_PATH
from relay_runtime.connector.buffer import BufferedFrame, DeliveryBuffer
from relay_runtime.connector.outcomes import (
    Delay,
    Fail,
    NoAnswer,
    Outcome,
    OutcomeTable,
    Reply,
    Succeed,
)
from relay_runtime.connector.presets import (
    DEFAULT_DESCRIPTORS,
    INVALID_DESCRIPTOR,
    DescriptorSpec,
    generic_descriptor,
)
from relay_runtime.connector.records import (
    BadFrame,
    Delivery,
    GatedDrop,
    Post,
    Received,
    Rejection,
    Sent,
    SentMessage,
)
from relay_runtime.connector.relevance import RelevancePolicy, admit
from relay_runtime.connector.seams import ControlPlaneLike, WakePokerLike
from relay_runtime.connector.upgrade_auth import (
    DEFAULT_MAX_TOKEN_LIFETIME_S,
    UpgradeAuth,
    authenticate,
    bearer_token,
)
from relay_runtime.transport import Dialer, message_limit

__all__ = ["Connection", "ReferenceConnector", "open_connector"]

log = logging.getLogger("relay.connector")

#: How many performed ``requestId``s the connector remembers for idempotency (LRU).
DEFAULT_REQUEST_ID_MEMORY = 100_000
#: What a ``buffer_prefix`` may hold: it goes into ``bufferId``s and log lines.
_BUFFER_PREFIX = re.compile(r"[A-Za-z0-9._~-]{1,64}")

DescriptorMode = Literal["valid", "invalid", "none"]
RejectMode = Literal["http", "close"]
F = TypeVar("F", bound=GatewayFrame)


@attrs.define(eq=False)
class Connection:
    """One accepted gateway socket, as the connector sees it (read it, do not change it).

    ``handshaken`` turns true when the first valid descriptor is written; from then on the
    connection is its instance's current one and replays the buffer, until the gateway sends
    ``going_idle`` (``draining`` false) or the socket ends (``open`` false).
    """

    id: int
    gateway_id: str
    ws: WebSocketConnection = attrs.field(repr=False)
    stream: trio.abc.Stream = attrs.field(repr=False)
    hellos: list[Hello] = attrs.field(factory=list)
    handshaken: bool = False
    draining: bool = False
    open: bool = True
    close_code: int | None = None
    close_reason: str | None = None
    in_flight: set[str] = attrs.field(factory=set, repr=False)
    nursery: trio.Nursery | None = attrs.field(default=None, repr=False)
    # Set by a connector-initiated close; the connection's own task performs it, so the
    # WebSocket close handshake runs while the socket's reader is still alive.
    closing: tuple[int, str | None] | None = attrs.field(default=None, repr=False)


#: Observer of each ``outbound`` frame received: ``(connection, frame)``.
OutboundObserver = Callable[[Connection, Outbound], None]
#: Awaited for each ``going_idle``; ``True`` if it handled the frame (see the connector).
GoingIdleHook = Callable[[Connection], Awaitable[bool]]


@attrs.define(eq=False)
class _Instance:
    """One gateway id's delivery state: the buffer, the idle flip, the live connection."""

    gateway_id: str
    buffer: DeliveryBuffer = attrs.field(factory=DeliveryBuffer)
    buffered_only: bool = False
    poked: bool = False
    current: Connection | None = None
    connections: list[Connection] = attrs.field(factory=list)


@attrs.define
class _Chaos:
    rng: random.Random
    every: int
    code: int | None
    reason: str | None
    countdown: int = 0

    def rearm(self) -> None:
        # Uniform over [1, 2N-1]: a drop every N frames on average, at unpredictable points.
        self.countdown = self.rng.randint(1, 2 * self.every - 1)


class ReferenceConnector:
    """A connector peer for gateways under test (see the module docstring).

    Args:
        secrets: gateway id -> its secret, or its rotation list (primary first).
        registry: the control plane's registry; consulted for secrets of gateways not in
            ``secrets``, for relevance policies and for wake URLs.
        poker: pokes a wake URL when a flipped instance gets its first buffered message.
        descriptors: platform -> descriptor (or raw wire object) answered to ``hello``;
            defaults to the discord/telegram/relay presets. Other platforms get
            :func:`~.presets.generic_descriptor`.
        allow_unauthenticated: accept an upgrade *without* a bearer as gateway ``""``
            (development); a bearer that is present is still verified.
        reject_mode: refuse a bad upgrade with HTTP 401 (``"http"``) or by accepting and
            closing 4401 (``"close"``); the gateway treats both alike.
        buffer_when_disconnected: buffer inbound for an instance with no connected gateway
            (else such inbound is dropped and reported as ``dropped``).
        always_buffer: deliver every inbound through the ack-gated buffer (with a
            ``bufferId``), never live; for chaos tests where nothing may be lost.
        drain_window: how many buffered entries may be awaiting ``inbound_ack`` at once on
            one connection (1: strictly one at a time).
        max_frame_bytes: the frame limit for what gateways send (RC §2).
        close_timeout: how long a close handshake may take before the TCP stream is aborted.
        clock: wall clock for token expiry.
        max_token_lifetime_s: refuse (401/4401) a genuine token that never expires
            (``exp=0``) or expires more than this many seconds from now; ``None`` accepts
            such legacy tokens. Default 600 s (the gateway mints 300 s tokens).
        request_id_memory: how many performed ``requestId``s (per connector, keyed by
            gateway) are remembered to answer a repeat without egressing again; the least
            recently seen is forgotten first.
        buffer_prefix: the run prefix of every ``bufferId`` (``buf-<prefix>-<n>``); 1-64
            of ``A-Z a-z 0-9 . _ ~ -``. Default: 8 random hex digits, fresh per connector, so
            ids never repeat across runs (they are replay-dedupe keys, RC §4.6). Set it
            only to get predictable ids, and never reuse one against the same state dir.
        on_outbound: called as ``on_outbound(conn, frame)`` for each ``outbound`` frame
            received, before it is answered (repeats included). An observer: it cannot change
            the answer, and an exception in it is logged and the frame answered anyway.
        journal_sink: called with each :class:`~.records.Post` as it is journalled (e.g. to
            keep the journal on disk); an exception in it is logged and ignored.
        on_going_idle: awaited as ``on_going_idle(conn)`` for each ``going_idle`` before the
            connector handles it. Returning ``True`` means the hook dealt with the frame (for
            instance dropped the socket): the instance is then not flipped to buffered-only
            and no ``going_idle_ack`` is sent. ``False`` lets the connector go on as usual.

    Both hooks are also plain attributes, settable after construction.
    """

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
        journal_sink: Callable[[Post], None] | None = None,
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

        self._revoked: set[str] = set()
        self._instances: dict[str, _Instance] = {}
        self._connections: list[Connection] = []
        self._received: list[Received] = []
        self._sent: list[Sent] = []
        self._bad_frames: list[BadFrame] = []
        self._rejections: list[Rejection] = []
        self._gated: list[GatedDrop] = []
        self._messages: dict[str, SentMessage] = {}
        self._pokes: list[str] = []
        self._journal: list[Post] = []
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
        self._chaos: _Chaos | None = None
        self.chaos_drops = 0
        self._change = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"

    # -- running --------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled; ``nursery.start`` returns the ws URL."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._port = listeners[0].socket.getsockname()[1]
            self._host = host
            try:
                await nursery.start(trio.serve_listeners, self._handle_stream, listeners)
                log.info("reference connector listening on %s", self.url)
                task_status.started(self.url)
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one already-open byte stream as one gateway socket, until it ends.

        The stream gets exactly what a TCP connection gets: the WebSocket upgrade with its
        HMAC check, then frames. Any trio stream works, e.g. one end of
        :func:`trio.testing.memory_stream_pair`, so a gateway and the connector can run
        without sockets under ``MockClock`` (see :meth:`memory_dialer`). Errors end this
        socket only; wake pokes need :meth:`serve` to be running.
        """
        await self._handle_stream(stream)

    def memory_dialer(
        self,
        nursery: trio.Nursery,
        stream_pair: Callable[
            [], tuple[trio.abc.Stream, trio.abc.Stream]
        ] = trio.testing.memory_stream_pair,
    ) -> Dialer:
        """A gateway :class:`~relay_runtime.transport.Dialer` that reaches this connector in memory.

        Each dial opens a ``stream_pair()`` (:func:`trio.testing.memory_stream_pair` unless
        given) and serves the far end with :meth:`serve_stream` in ``nursery`` (which must
        outlive the gateway's sockets). Pass it as ``run_gateway(..., dialer=...)``; the
        gateway's ``relay_url`` is then only used for the upgrade request's host and path.
        """

        serving = nursery

        async def dial(
            nursery: trio.Nursery,
            url: str,
            *,
            headers: list[tuple[bytes, bytes]],
            max_message_size: int,
        ) -> WebSocketConnection:
            parts = urllib.parse.urlsplit(url)
            resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            client, server = stream_pair()
            serving.start_soon(self.serve_stream, server)
            # Like a TCP dial: the client end closes with the socket's nursery, so the
            # connector sees the gateway go however the socket ends.
            nursery.start_soon(_close_when_cancelled, client)
            return await wrap_client_stream(
                nursery,
                client,  # type: ignore[arg-type]  # any trio stream works
                parts.netloc or "reference-connector",
                resource,
                extra_headers=headers,
                max_message_size=max_message_size,
            )

        return dial

    @property
    def buffer_prefix(self) -> str:
        """The run prefix of this connector's ``bufferId``s (``buf-<prefix>-<n>``)."""
        return self._buffer_prefix

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

    # -- credentials ----------------------------------------------------------------------

    def set_secrets(self, gateway_id: str, secrets: str | Sequence[str]) -> None:
        """Accept ``gateway_id`` with ``secrets`` (one, or a rotation list, primary first)."""
        if not gateway_id:
            raise ValueError("gateway_id must be non-empty")
        values = [secrets] if isinstance(secrets, str) else list(secrets)
        if not values or not all(isinstance(s, str) and s for s in values):
            raise ValueError(f"gateway {gateway_id!r} needs at least one non-empty secret")
        self._secrets[gateway_id] = values

    def secrets_for(self, gateway_id: str) -> Sequence[str] | None:
        """The verify list for ``gateway_id``: configured here, else from the registry."""
        configured = self._secrets.get(gateway_id)
        if configured:
            return configured
        if self.registry is not None:
            return self.registry.secrets_for(gateway_id)
        return None

    async def revoke(self, gateway_id: str) -> int:
        """Refuse ``gateway_id`` from now on and close its live sockets 4401 ``unauthorized``.

        Returns how many sockets were closed. :meth:`reinstate` undoes the refusal.
        """
        self._revoked.add(gateway_id)
        self._changed()
        return await self._close_all(gateway_id, UNAUTHORIZED, "unauthorized")

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

    def restore(
        self,
        gateway_id: str,
        *,
        buffered: Sequence[tuple[str, BufferedFrame]] = (),
        performed: Sequence[tuple[str, Mapping[str, Any]]] = (),
    ) -> None:
        """Reload what a restarted connector had in memory, as a durable connector would.

        ``buffered``: ``(bufferId, frame)`` entries not yet acked, oldest first, buffered
        again under their old ids (replayed after the next handshake). ``performed``:
        ``(requestId, result)`` of actions already egressed, so a repeat is answered with
        the first result and egresses nothing. Call it before any gateway connects.
        """
        inst = self._instance(gateway_id)
        for buffer_id, frame in buffered:
            inst.buffer.append(frame, buffer_id)
        for request_id, result in performed:
            self._performed[(gateway_id, request_id)] = dict(result)
        while len(self._performed) > self.request_id_memory:
            self._performed.popitem(last=False)
        self._changed()

    def reinstate(self, gateway_id: str) -> None:
        """Accept ``gateway_id``'s tokens again after :meth:`revoke`."""
        self._revoked.discard(gateway_id)
        self._changed()

    async def expire(self, gateway_id: str) -> int:
        """Close ``gateway_id``'s live sockets 4401 ``expired`` (token aged out, not revoked)."""
        return await self._close_all(gateway_id, UNAUTHORIZED, "expired")

    def is_revoked(self, gateway_id: str) -> bool:
        """Whether :meth:`revoke` refused ``gateway_id``."""
        return gateway_id in self._revoked

    # -- injection ------------------------------------------------------------------------

    async def inject(
        self,
        event: MessageEvent,
        *,
        gateway_id: str | None = None,
        addressed: bool = True,
        from_bot: bool | None = None,
        buffered: bool = False,
    ) -> Delivery:
        """Deliver ``event`` to a gateway as an ``inbound`` frame.

        Passes the relevance gate first (``addressed``: the message mentions or replies to
        the bot; ``from_bot`` defaults to ``event.source.is_bot``). Then goes live to the
        connected gateway, or into the instance's buffer when it is flipped, still draining,
        disconnected, or ``always_buffer`` or ``buffered`` is set (a connected, draining
        gateway then gets it at once through the buffer, with a ``bufferId``).
        """
        inst = self._instance(self._resolve(gateway_id))
        source = event.source
        if source.chat_id:
            self.chat_info.setdefault(
                source.chat_id, (source.chat_name or source.chat_id, source.chat_type)
            )
        policy = self._policy(inst.gateway_id, source.platform_raw or "relay")
        reason = admit(
            policy,
            event,
            addressed=addressed,
            from_bot=source.is_bot if from_bot is None else from_bot,
        )
        if reason is not None:
            self._gated.append(GatedDrop(inst.gateway_id, event, reason))
            self._changed()
            log.info("relevance gate dropped a message for %r: %s", inst.gateway_id, reason)
            return Delivery("gated", reason=reason)
        return await self._deliver(inst, Inbound(event=event), force_buffer=buffered)

    async def inject_passthrough(
        self, forward: PassthroughForward, *, gateway_id: str | None = None
    ) -> Delivery:
        """Deliver a ``passthrough_forward`` (buffered like inbound when flipped)."""
        inst = self._instance(self._resolve(gateway_id))
        return await self._deliver(inst, PassthroughForwardFrame(forward=forward))

    async def inject_interrupt(
        self, session_key: str, chat_id: str = "", *, gateway_id: str | None = None
    ) -> bool:
        """Send ``interrupt_inbound`` to the connected gateway; ``False`` if none (not queued)."""
        inst = self._instance(self._resolve(gateway_id))
        conn = inst.current
        if conn is None or not conn.open:
            return False
        frame = InterruptInbound(session_key=session_key, chat_id=chat_id)
        return await self._write(conn, frame)

    async def send_raw(self, text: str, *, gateway_id: str | None = None) -> bool:
        """Write ``text`` as one message to the connected gateway (malformed-frame tests)."""
        inst = self._instance(self._resolve(gateway_id))
        conn = inst.current
        if conn is None or not conn.open:
            return False
        return await self._write_text(conn, text, None)

    # -- operator controls ----------------------------------------------------------------

    def hold(self, gateway_id: str | None = None) -> None:
        """Flip the instance to buffered-only, as a ``going_idle`` would (no ack is sent).

        Inbound for it is buffered from now on, the live connection (if any) stops
        replaying, and the flip lasts until :meth:`flush` or the next handshake drains the
        buffer empty.
        """
        inst = self._instance(self._resolve(gateway_id))
        inst.buffered_only = True
        inst.poked = False
        if inst.current is not None:
            inst.current.draining = False
        self._changed()

    def flush(self, gateway_id: str | None = None) -> int:
        """Replay the instance's buffer on its live connection now; returns how many wait.

        Entries still leave the buffer only on ``inbound_ack``; once it is empty the
        buffered-only flip is cleared. ``LookupError`` if no gateway is connected (the buffer
        is then replayed after its next handshake anyway).
        """
        gid = self._resolve(gateway_id)
        inst = self._instance(gid)
        conn = inst.current
        if conn is None or not conn.open:
            raise LookupError(f"gateway {gid!r} is not connected")
        conn.draining = True
        self._changed()
        return len(inst.buffer)

    def known_gateways(self) -> list[str]:
        """Every gateway id configured here, in the registry, or seen on a socket, sorted."""
        known = set(self._secrets) | set(self._instances)
        gateways = getattr(self.registry, "gateways", None)
        if isinstance(gateways, Mapping):
            known |= {g for g in gateways if isinstance(g, str)}
        return sorted(known)

    def resolve_gateway(self, gateway_id: str | None = None) -> str:
        """``gateway_id``, or the only gateway known; ``ValueError`` names the choices."""
        return self._resolve(gateway_id)

    # -- drops ----------------------------------------------------------------------------

    async def drop(
        self,
        gateway_id: str | None = None,
        *,
        code: int | None = None,
        reason: str | None = None,
    ) -> int:
        """End the gateway's open sockets: abort TCP (no close frame) or close with ``code``.

        ``gateway_id=None`` drops every open socket. Returns how many were dropped.
        """
        conns = [c for c in self._connections if c.open]
        if gateway_id is not None:
            conns = [c for c in conns if c.gateway_id == gateway_id]
        for conn in conns:
            await self._drop(conn, code, reason)
        return len(conns)

    def drop_randomly(
        self,
        rng: random.Random,
        every: int,
        *,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Drop the socket at seeded-random points, about once every ``every`` frames.

        Frames in both directions count; each drop re-arms at ``rng.randint(1, 2*every-1)``.
        ``code=None`` aborts TCP, else closes with ``code``. :meth:`stop_dropping` ends it.
        """
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        chaos = _Chaos(rng, every, code, reason)
        chaos.rearm()
        self._chaos = chaos

    def stop_dropping(self) -> None:
        """End :meth:`drop_randomly`."""
        self._chaos = None

    # -- observation ----------------------------------------------------------------------

    @property
    def received(self) -> Sequence[Received]:
        """Every frame gateways sent, in arrival order."""
        return self._received

    def frames(self, kind: type[F], gateway_id: str | None = None) -> list[F]:
        """The received frames of one type (optionally from one gateway), in order."""
        return [
            r.frame
            for r in self._received
            if isinstance(r.frame, kind) and (gateway_id is None or r.gateway_id == gateway_id)
        ]

    @property
    def hellos(self) -> list[Hello]:
        """Every ``hello`` received."""
        return self.frames(Hello)

    @property
    def outbounds(self) -> list[Outbound]:
        """Every ``outbound`` received."""
        return self.frames(Outbound)

    @property
    def interrupts(self) -> list[Interrupt]:
        """Every ``interrupt`` received."""
        return self.frames(Interrupt)

    @property
    def going_idles(self) -> list[GoingIdle]:
        """Every ``going_idle`` received."""
        return self.frames(GoingIdle)

    @property
    def inbound_acks(self) -> list[str]:
        """The ``bufferId`` of every ``inbound_ack`` received, in order."""
        return [f.buffer_id for f in self.frames(InboundAck)]

    @property
    def sent(self) -> Sequence[Sent]:
        """Every message the connector wrote to a gateway, in order."""
        return self._sent

    @property
    def bad_frames(self) -> Sequence[BadFrame]:
        """Lines from gateways that were not valid frames."""
        return self._bad_frames

    @property
    def rejections(self) -> Sequence[Rejection]:
        """Refused upgrades."""
        return self._rejections

    @property
    def gated(self) -> Sequence[GatedDrop]:
        """Injected messages the relevance gate dropped."""
        return self._gated

    @property
    def messages(self) -> Mapping[str, SentMessage]:
        """Messages posted through ``send``/``follow_up``, by message id (edits applied)."""
        return self._messages

    @property
    def journal(self) -> Sequence[Post]:
        """What gateways posted (send, follow_up, edit), in the order it was performed."""
        return self._journal

    @property
    def pokes(self) -> Sequence[str]:
        """Wake URLs poked, in order."""
        return self._pokes

    @property
    def connections(self) -> Sequence[Connection]:
        """Every accepted socket, open or not, in accept order."""
        return self._connections

    def current(self, gateway_id: str | None = None) -> Connection | None:
        """The gateway's handshaken, open connection, if any."""
        inst = self._instances.get(self._resolve(gateway_id))
        if inst is None or inst.current is None or not inst.current.open:
            return None
        return inst.current

    def buffered(self, gateway_id: str | None = None) -> list[BufferedFrame]:
        """The instance's buffered, un-acked entries, oldest first."""
        inst = self._instances.get(self._resolve(gateway_id))
        return list(inst.buffer) if inst is not None else []

    def is_buffered_only(self, gateway_id: str | None = None) -> bool:
        """Whether the instance is flipped to buffered-only (``going_idle`` until drained)."""
        inst = self._instances.get(self._resolve(gateway_id))
        return inst is not None and inst.buffered_only

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true; it is re-checked after every change.

        Changes are frames in or out, connections opening or closing, rejections, acks,
        gate drops and pokes. Bound the wait with the caller's own cancel scope.
        """
        while not predicate():
            await self._change.wait()

    async def wait_connected(self, gateway_id: str | None = None) -> Connection:
        """Wait for the gateway's handshaken connection and return it."""
        gid = self._resolve(gateway_id)
        await self.wait_for(lambda: self.current(gid) is not None)
        conn = self.current(gid)
        assert conn is not None
        return conn

    async def wait_frame(self, kind: type[F], *, after: int = 0) -> F:
        """The first received frame of ``kind`` at index ``after`` or later of :attr:`received`."""
        found: list[F] = []

        def seen() -> bool:
            for r in itertools.islice(self._received, after, None):
                if isinstance(r.frame, kind):
                    found.append(r.frame)
                    return True
            return False

        await self.wait_for(seen)
        return found[0]

    def clear_messages(self) -> None:
        """Forget the posted messages (:attr:`messages`); later edits of them then fail."""
        self._messages.clear()

    def clear_records(self) -> None:
        """Forget recorded frames and drops (long benchmark runs); state is kept."""
        self._received.clear()
        self._sent.clear()
        self._bad_frames.clear()
        self._gated.clear()
        self._changed()

    # -- internals: instances -------------------------------------------------------------

    def _changed(self) -> None:
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

    def _instance(self, gateway_id: str) -> _Instance:
        inst = self._instances.get(gateway_id)
        if inst is None:
            inst = self._instances[gateway_id] = _Instance(gateway_id)
        return inst

    def _policy(self, gateway_id: str, platform: str) -> RelevancePolicy | None:
        policy = self.policies.get((gateway_id, platform))
        if policy is None and self.registry is not None:
            policy = RelevancePolicy.coerce(self.registry.policy_for(gateway_id, platform))
        return policy

    async def _deliver(
        self, inst: _Instance, frame: BufferedFrame, *, force_buffer: bool = False
    ) -> Delivery:
        conn = inst.current
        connected = conn is not None and conn.open and conn.draining
        if (
            connected
            and conn is not None
            and not (inst.buffered_only or len(inst.buffer) or self.always_buffer or force_buffer)
        ):
            if await self._write(conn, frame):
                return Delivery("live")
            # The socket died under us: keep the message for the next connection (our choice).
        elif not connected and not self.buffer_when_disconnected and not inst.buffered_only:
            log.info("no gateway connected for %r; dropping an injected frame", inst.gateway_id)
            return Delivery("dropped", reason="no gateway connected")
        buffer_id = f"buf-{self._buffer_prefix}-{next(self._buffer_ids)}"
        inst.buffer.append(frame, buffer_id)
        if inst.buffered_only and not inst.poked:
            inst.poked = True
            self._poke(inst)
        self._changed()
        return Delivery("buffered", buffer_id=buffer_id)

    def _poke(self, inst: _Instance) -> None:
        if self.registry is None or self.poker is None or self._nursery is None:
            return
        url = self.registry.wake_url_for(inst.gateway_id, None)
        if not url:
            return
        self._pokes.append(url)
        self._nursery.start_soon(self._run_poke, self.poker, inst.gateway_id, url)

    @staticmethod
    async def _run_poke(poker: WakePokerLike, key: str, url: str) -> None:
        try:
            await poker.poke(key, url)
        except Exception as exc:  # best effort: a failed poke never hurts delivery (RC §8)
            log.warning("wake poke failed: %s", exc)

    # -- internals: sockets ---------------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        try:
            await self._handle_socket(stream)
        except* LocalProtocolError as group:
            # trio-websocket #184: a ping answered while our close is in flight escapes the
            # socket's reader task. The connection is over either way; the server goes on.
            log.warning("gateway socket ended in a close race: %s", group.exceptions[0])
        except* Exception as group:
            # One client must never take the connector down: log, close that socket, go on.
            log.error("error serving a gateway socket; closing it", exc_info=group)
            await trio.aclose_forcefully(stream)

    async def _handle_socket(self, stream: trio.abc.Stream) -> None:
        async with stream, trio.open_nursery() as ws_nursery:
            request: WebSocketRequest | None = None
            with trio.move_on_after(self.close_timeout):
                request = await wrap_server_stream(
                    ws_nursery,
                    stream,
                    # The same message limit as the gateway's (RC §2).
                    max_message_size=message_limit(self.max_frame_bytes),
                )
            try:
                if request is not None:
                    await self._handle_request(request, stream)
            finally:
                ws_nursery.cancel_scope.cancel()

    async def _handle_request(self, request: WebSocketRequest, stream: trio.abc.Stream) -> None:
        path = request.path.partition("?")[0]
        if path != RELAY_PATH:
            self._reject_record(None, "unknown path", 400, path)
            await request.reject(400, body=b"unknown path; the relay is served at /relay\n")
            return
        auth = self._authenticate(request.headers)
        if not auth.ok:
            self._reject_record(auth.gateway_id, auth.reject or "", 401, path)
            if self.reject_mode == "http":
                await request.reject(401, body=f"{auth.close_reason}\n".encode())
                return
            ws = await request.accept()
            with trio.move_on_after(self.close_timeout):
                await ws.aclose(UNAUTHORIZED, auth.close_reason)
            return
        gateway_id = auth.gateway_id or ""
        ws = await request.accept()
        conn = Connection(id=next(self._ids), gateway_id=gateway_id, ws=ws, stream=stream)
        inst = self._instance(gateway_id)
        inst.connections.append(conn)
        self._connections.append(conn)
        self._changed()
        log.info("gateway %r connected (connection %d)", gateway_id, conn.id)
        try:
            await self._serve_connection(conn)
        finally:
            # A cancelled context means the whole connector is stopping: the socket's reader
            # task is cancelled too, so no close handshake could complete; just close TCP.
            shutting_down = trio.current_effective_deadline() == -math.inf
            conn.draining = False
            if inst.current is conn:
                inst.current = None
            if not shutting_down:
                with trio.move_on_after(self.close_timeout, shield=True) as scope:
                    await ws.aclose(*(conn.closing or (1000, None)))
            if shutting_down or scope.cancelled_caught:
                await _abort(stream)
            conn.open = False
            inst.connections.remove(conn)
            self._changed()
            log.info("gateway %r disconnected (connection %d)", gateway_id, conn.id)

    def _authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> UpgradeAuth:
        token = bearer_token(headers)
        if token is None and self.allow_unauthenticated:
            return UpgradeAuth("")
        return authenticate(
            token,
            self.secrets_for,
            now=self.clock(),
            is_revoked=self.is_revoked,
            max_lifetime_s=self.max_token_lifetime_s,
        )

    def _reject_record(self, gateway_id: str | None, reason: str, status: int, path: str) -> None:
        self._rejections.append(Rejection(gateway_id, reason, status, path))
        self._changed()
        log.info("refused an upgrade (%s, %d)", reason, status)

    async def _serve_connection(self, conn: Connection) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        async with trio.open_nursery() as nursery:
            conn.nursery = nursery
            while True:
                try:
                    message = await conn.ws.get_message()
                except ConnectionClosed as exc:
                    if conn.close_code is None and exc.reason is not None:
                        conn.close_code = exc.reason.code
                        conn.close_reason = exc.reason.reason
                    break
                try:
                    if isinstance(message, str):
                        items = decoder.feed_text(message)
                    else:
                        items = decoder.feed_bytes(message)
                except Exception:  # a decoder bug must not end the reader either (RC R7)
                    log.exception("gateway %r: error decoding a message", conn.gateway_id)
                    continue
                for item in items:
                    await self._on_item(conn, item)
            nursery.cancel_scope.cancel()

    async def _on_item(
        self, conn: Connection, item: GatewayFrame | ConnectorFrame | FrameError
    ) -> None:
        if isinstance(item, FrameError):
            self._bad_frames.append(BadFrame(conn.id, conn.gateway_id, item))
            self._changed()
            log.warning("gateway %r: %s", conn.gateway_id, item.message)
            return
        if not isinstance(item, Hello | Outbound | Interrupt | GoingIdle | InboundAck):
            log.debug("gateway %r sent a connector frame (%s); ignored", conn.gateway_id, item)
            return
        self._received.append(Received(conn.id, conn.gateway_id, item, trio.current_time()))
        try:
            if isinstance(item, Hello):
                await self._on_hello(conn, item)
            elif isinstance(item, Outbound):
                await self._on_outbound(conn, item)
            elif isinstance(item, GoingIdle):
                await self._on_going_idle(conn)
            elif isinstance(item, InboundAck):
                self._on_inbound_ack(conn, item)
        except Exception:  # a bug handling one frame must not end the reader (RC §2)
            log.exception("gateway %r: error handling %s", conn.gateway_id, type(item).__name__)
        self._changed()
        await self._chaos_tick(conn)

    async def _on_hello(self, conn: Connection, hello: Hello) -> None:
        conn.hellos.append(hello)
        mode = self.descriptor_mode
        if mode == "none":
            return
        if mode == "invalid":
            text = to_json({"type": "descriptor", "descriptor": dict(INVALID_DESCRIPTOR)}) + "\n"
            await self._write_text(conn, text, None)
            return
        spec = self.descriptors.get(hello.platform) or generic_descriptor(hello.platform)
        if isinstance(spec, CapabilityDescriptor):
            ok = await self._write(conn, DescriptorFrame(descriptor=spec))
        else:
            text = to_json({"type": "descriptor", "descriptor": dict(spec)}) + "\n"
            ok = await self._write_text(conn, text, None)
        if ok and not conn.handshaken and conn.open:
            conn.handshaken = True
            conn.draining = True
            inst = self._instance(conn.gateway_id)
            inst.current = conn
            assert conn.nursery is not None
            conn.nursery.start_soon(self._drain, conn, inst)

    async def _on_outbound(self, conn: Connection, frame: Outbound) -> None:
        if self.on_outbound is not None:
            try:
                self.on_outbound(conn, frame)
            except Exception:
                log.exception("on_outbound observer failed; answering the frame anyway")
        first = self._repeat_result(conn, frame)
        if first is not None:
            # A repeat answers at once and takes no outcome: the table scripts egress.
            await self._write(conn, OutboundResult(request_id=frame.request_id, result=first))
            return
        outcome = self.outcomes.take(frame.action.OP)
        if isinstance(outcome, NoAnswer):
            return
        if isinstance(outcome, Delay):
            assert conn.nursery is not None
            conn.nursery.start_soon(self._answer_later, conn, frame, outcome)
            return
        await self._answer(conn, frame, outcome)

    async def _answer_later(self, conn: Connection, frame: Outbound, delay: Delay) -> None:
        await trio.sleep(delay.seconds)
        await self._answer(conn, frame, delay.then)

    async def _answer(self, conn: Connection, frame: Outbound, outcome: Outcome) -> None:
        result = self._perform(conn, frame, outcome)
        await self._write(conn, OutboundResult(request_id=frame.request_id, result=result))

    def _perform(self, conn: Connection, frame: Outbound, outcome: Outcome) -> dict[str, Any]:
        if isinstance(outcome, Fail):
            return outcome.result()
        if isinstance(outcome, Reply):
            return dict(outcome.result)
        if isinstance(outcome, Delay | NoAnswer):  # only reached for a nested Delay
            raise TypeError(f"cannot answer with {outcome!r}")
        action = frame.action
        if isinstance(action, Send | FollowUp | Edit):
            # Checked again here: a repeat may arrive while the first is delayed.
            first = self._repeat_result(conn, frame)
            if first is not None:
                return first
            result = self._egress(conn, frame, outcome)
            if result.get("success") is True:
                self._remember_performed(conn, frame, result)
            return result
        if isinstance(action, Typing):
            return {"success": True}
        assert isinstance(action, GetChatInfo)
        name, kind = self.chat_info.get(action.chat_id, (action.chat_id, "dm"))
        return {"chat_info": {"name": name, "type": kind}}

    def _egress(self, conn: Connection, frame: Outbound, outcome: Succeed) -> dict[str, Any]:
        """Post or edit a message as ``frame`` asks; the result to answer with."""
        action = frame.action
        if isinstance(action, Send | FollowUp):
            message_id = outcome.message_id or f"m-{next(self._message_ids)}"
            chat_id = action.chat_id if isinstance(action, Send) else action.session_key
            self._messages[message_id] = SentMessage(
                message_id=message_id,
                chat_id=chat_id,
                content=action.content,
                gateway_id=conn.gateway_id,
                platform=frame.platform,
            )
            self._journal_post(conn, frame, chat_id, message_id)
            return {"success": True, "message_id": message_id}
        assert isinstance(action, Edit)
        known = self._messages.get(action.message_id)
        if known is None or known.chat_id != action.chat_id:
            return {
                "success": False,
                "error": f"unknown message {action.message_id!r} in chat {action.chat_id!r}",
            }
        self._messages[action.message_id] = attrs.evolve(
            known, content=action.content, edits=known.edits + 1
        )
        self._journal_post(conn, frame, action.chat_id, action.message_id)
        return {"success": True}

    def _journal_post(
        self, conn: Connection, frame: Outbound, chat_id: str, message_id: str
    ) -> None:
        action = frame.action
        assert isinstance(action, Send | FollowUp | Edit)
        post = Post(
            seq=len(self._journal) + 1,
            at=self.clock(),
            gateway_id=conn.gateway_id,
            platform=frame.platform or "",
            op=action.OP,
            chat_id=chat_id,
            message_id=message_id,
            content=action.content,
            request_id=frame.request_id,
        )
        self._journal.append(post)
        if self.journal_sink is not None:
            try:
                self.journal_sink(post)
            except Exception:
                log.exception("journal sink failed; the post is journalled in memory only")

    def _repeat_result(self, conn: Connection, frame: Outbound) -> dict[str, Any] | None:
        """The first result of an action already performed under this ``requestId``, if any.

        A hit counts as a duplicate. Only performed (successful) egress is remembered: a
        failed attempt egressed nothing, so a retry under the same id is performed afresh.
        """
        key = (conn.gateway_id, frame.request_id)
        first = self._performed.get(key)
        if first is None:
            return None
        self._performed.move_to_end(key)
        self.duplicate_outbounds += 1
        log.info(
            "gateway %r: repeated requestId %r (%s); answering with the first result",
            conn.gateway_id,
            frame.request_id,
            frame.action.OP,
        )
        return dict(first)

    def _remember_performed(
        self, conn: Connection, frame: Outbound, result: dict[str, Any]
    ) -> None:
        self._performed[(conn.gateway_id, frame.request_id)] = dict(result)
        while len(self._performed) > self.request_id_memory:
            self._performed.popitem(last=False)

    async def _on_going_idle(self, conn: Connection) -> None:
        if self.on_going_idle is not None and await self.on_going_idle(conn):
            return
        inst = self._instance(conn.gateway_id)
        conn.draining = False
        inst.buffered_only = True
        inst.poked = False
        if self.ack_going_idle:
            await self._write(conn, GoingIdleAck())

    def _on_inbound_ack(self, conn: Connection, ack: InboundAck) -> None:
        inst = self._instance(conn.gateway_id)
        if not inst.buffer.ack(ack.buffer_id):
            log.debug("gateway %r acked unknown bufferId %r", conn.gateway_id, ack.buffer_id)
        for other in inst.connections:
            other.in_flight.discard(ack.buffer_id)

    async def _drain(self, conn: Connection, inst: _Instance) -> None:
        """Replay the buffer on ``conn`` in order, at most ``drain_window`` un-acked at once.

        Runs for the connection's life; un-acked entries stay buffered, so the next
        connection redelivers them. When the buffer empties the idle flip is cleared.
        """
        while conn.open:
            if conn.draining and inst.current is conn:
                if len(conn.in_flight) < self.drain_window:
                    entry = inst.buffer.next_unsent(conn.in_flight)
                    if entry is not None:
                        assert entry.buffer_id is not None
                        conn.in_flight.add(entry.buffer_id)
                        await self._write(conn, entry)
                        continue
                if not len(inst.buffer) and inst.buffered_only:
                    inst.buffered_only = False
                    inst.poked = False
                    self._changed()
            await self._change.wait()

    async def _write(self, conn: Connection, frame: ConnectorFrame) -> bool:
        return await self._write_text(conn, encode_frame(frame), frame)

    async def _write_text(self, conn: Connection, text: str, frame: ConnectorFrame | None) -> bool:
        try:
            await conn.ws.send_message(text)
        except ConnectionClosed:
            return False
        self._sent.append(Sent(conn.id, conn.gateway_id, text, frame))
        self._changed()
        await self._chaos_tick(conn)
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

    async def _close_all(self, gateway_id: str, code: int, reason: str) -> int:
        conns = [c for c in self._connections if c.open and c.gateway_id == gateway_id]
        for conn in conns:
            await self._drop(conn, code, reason)
        return len(conns)

    async def _drop(self, conn: Connection, code: int | None, reason: str | None) -> None:
        if not conn.open:
            return
        if code is None:
            conn.close_code, conn.close_reason = 1006, "aborted"
            await _abort(conn.stream)
            return
        conn.close_code, conn.close_reason = code, reason
        if conn.nursery is None:  # not serving yet: nothing to close gracefully
            await _abort(conn.stream)
            return
        conn.closing = (code, reason)
        conn.nursery.cancel_scope.cancel()
        await self.wait_for(lambda: not conn.open)


async def _abort(stream: trio.abc.Stream) -> None:
    """Close TCP with a reset: no WebSocket close frame, no FIN handshake.

    Any other stream (e.g. an in-memory one) is just closed at once.
    """
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def _close_when_cancelled(stream: trio.abc.AsyncResource) -> None:
    """Lives in a socket's nursery; closes ``stream`` when that nursery is cancelled."""
    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


@contextlib.asynccontextmanager
async def open_connector(
    host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[ReferenceConnector]:
    """Run a :class:`ReferenceConnector` (``options`` are its arguments) for a ``with`` block."""
    connector = ReferenceConnector(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, host, port)
        yield connector
        nursery.cancel_scope.cancel()
