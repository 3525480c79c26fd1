"""The relay connection as h11 shapes one: the codec and the state machine together (RC §6).

:class:`RelayConnection` is what a driver talks to. Bytes and text from the socket go in
through :meth:`RelayConnection.receive_data`, which returns the decoded frames and moves the
state on the frames that drive it (a descriptor, a ``going_idle_ack``); frames to write come
out of :meth:`RelayConnection.send` as text, refused with :class:`RelayProtocolError` when
the state does not allow them. The hellos and ``going_idle`` are the connection's own: it
encodes them into :class:`~protocol._lifecycle.WriteFrames` actions, so "hellos first" and
"send only when live" are decided here, not by the driver.

Like :class:`~protocol._connection.ConnectionMachine` underneath, nothing here does I/O,
reads a clock or draws randomness of its own; the driver carries out the actions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from protocol._backoff import Uniform
from protocol._codec import encode_frame
from protocol._connection import ConnectionMachine
from protocol._descriptor import CapabilityDescriptor, placeholder_descriptor
from protocol._errors import FrameError
from protocol._events import Identity, find_identity
from protocol._frames import (
    DescriptorFrame,
    Frame,
    GoingIdle,
    GoingIdleAck,
    Hello,
    InboundAck,
    Interrupt,
    Outbound,
)
from protocol._framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder
from protocol._lifecycle import (
    Action,
    CloseSocket,
    DescriptorReceived,
    DialSucceeded,
    Event,
    GoingIdleAckReceived,
    SendGoingIdle,
    SendHellos,
    Start,
    State,
    Timing,
    WriteFrames,
)

#: Frames a caller may send once the connection is live (RC §3.1).
_CALLER_FRAMES = (Outbound, Interrupt, InboundAck)
#: The same, for the exact-type test of the common case in :meth:`RelayConnection.send`.
_CALLER_FRAME_TYPES = frozenset(_CALLER_FRAMES)


class RelayProtocolError(Exception):
    """A frame the connection may not send in its current state (h11's LocalProtocolError).

    A caller bug or a race with the connection's state, never a peer's doing; nothing was
    encoded and the connection is unchanged.
    """


class RelayConnection:
    """One gateway's relay connection: its state, codec, hellos and descriptors (RC §4, §6).

    Args:
        identities: the ordered identity set, first = primary; one ``hello`` each per dial.
        has_credentials: both a gatewayId and a secret are configured (RC §5).
        uniform: ``uniform(low, high)`` for the full-jitter ladder.
        timing: durations; RC defaults when omitted.
        exit_on_refused: go DISABLED at the first credentials-refused report.
        max_frame_bytes: the per-frame limit the decoder enforces (RC §2).

    Driver events (dial results, socket ends, timers, stop and suspend) go in through
    :meth:`handle`; each call returns the actions to carry out, in order.
    """

    def __init__(
        self,
        identities: Sequence[Identity],
        *,
        has_credentials: bool,
        uniform: Uniform,
        timing: Timing | None = None,
        exit_on_refused: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if not identities:
            raise ValueError("a relay connection needs at least one identity")
        self.identities = tuple(identities)
        self.max_frame_bytes = max_frame_bytes
        #: The pure state machine (its history fields are read by stats and tests).
        self.machine = ConnectionMachine(
            has_credentials=has_credentials,
            uniform=uniform,
            timing=timing,
            exit_on_refused=exit_on_refused,
        )
        self._decoder = FrameDecoder(max_frame_bytes)
        self._descriptors: dict[str, CapabilityDescriptor] = {}
        self._default: CapabilityDescriptor | None = None
        self._first_of_socket = True
        self._draining = False
        self._received: list[Action] = []

    # ---- state ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The machine's state (RC §6.1)."""
        return self.machine.state

    @property
    def live(self) -> bool:
        """Caller frames may be sent: READY, IDLE_REQUESTED, or a going-idle drain window."""
        return self.machine.live or (self._draining and self.state is State.IDLE_ACKED)

    @property
    def terminal(self) -> bool:
        """CLOSED or DISABLED: nothing will ever be dialled again."""
        return self.machine.terminal

    @property
    def has_socket(self) -> bool:
        """The machine is in a state that has an open socket whose end it waits for."""
        return self.state in (
            State.HELLO_SENT,
            State.READY,
            State.IDLE_REQUESTED,
            State.IDLE_ACKED,
        )

    # ---- descriptors (RC §4.1, §6.3) -----------------------------------------------------

    @property
    def descriptors(self) -> Mapping[str, CapabilityDescriptor]:
        """Every descriptor received, by platform (the latest one of each)."""
        return MappingProxyType(self._descriptors)

    @property
    def default_descriptor(self) -> CapabilityDescriptor:
        """The session default: the first descriptor of the latest handshake."""
        if self._default is not None:
            return self._default
        return placeholder_descriptor(self.identities[0].platform)

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        """The descriptor in force for ``platform``; the default for ``""`` or unknown."""
        if platform in self._descriptors:
            return self._descriptors[platform]
        if not platform:
            return self.default_descriptor
        if find_identity(self.identities, platform) is not None:
            return placeholder_descriptor(platform)
        return self.default_descriptor

    # ---- driver events -------------------------------------------------------------------

    def start(self) -> list[Action]:
        """Begin connecting: the first action is the first dial."""
        return self.handle(Start())

    def handle(self, event: Event) -> list[Action]:
        """Apply a driver event; the actions to carry out, in order.

        Raises:
            ConnectionStateError: the event cannot happen in this state (a driver bug).
        """
        actions = self.machine.handle(event)
        if isinstance(event, DialSucceeded):
            self._new_socket()
        return [self._encode(action) for action in actions]

    def drain_finished(self) -> None:
        """The going-idle close's drain window is over: caller frames are refused again."""
        self._draining = False

    # ---- frames --------------------------------------------------------------------------

    def receive_data(self, data: str | bytes) -> list[Frame | FrameError]:
        """Decode one WebSocket message; the frames and frame errors it completed, in order.

        A bad frame comes back as a :class:`FrameError` and the next one decodes normally.
        Frames that drive the state (a descriptor, an invalid one, ``going_idle_ack``) move
        it here; the actions that follow wait in :meth:`take_actions`.
        """
        if isinstance(data, str):
            items = self._decoder.feed_text(data)
        else:
            items = self._decoder.feed_bytes(data)
        for item in items:
            if isinstance(item, DescriptorFrame):
                self._descriptor(item.descriptor)
            elif isinstance(item, GoingIdleAck):
                self._received += self.handle(GoingIdleAckReceived())
            elif isinstance(item, FrameError) and item.kind == "invalid_descriptor":
                self._received += self.handle(DescriptorReceived(valid=False))
        return items

    def take_actions(self) -> list[Action]:
        """The actions received frames caused since the last call, in order."""
        actions, self._received = self._received, []
        return actions

    def send(self, frame: Frame) -> str:
        """Encode a caller frame (``outbound``, ``interrupt``, ``inbound_ack``) to write.

        Raises:
            RelayProtocolError: the connection is closed or disabled, not live yet (an
                ``outbound`` before READY), or the frame is the connection's own (a
                ``hello``, ``going_idle``) or one only the connector sends.
        """
        if type(frame) in _CALLER_FRAME_TYPES and self.live:
            return encode_frame(frame)  # the common case, checked first
        name = type(frame).TYPE
        if self.terminal:
            raise RelayProtocolError(f"cannot send {name}: the connection is {self.state.value}")
        if isinstance(frame, Hello):
            if find_identity(self.identities, frame.platform) is None:
                raise RelayProtocolError(f"hello for {frame.platform!r}: not an identity here")
            raise RelayProtocolError(
                f"hello for {frame.platform!r}: the connection sends one per identity at "
                "each dial; a second one is not allowed"
            )
        if isinstance(frame, GoingIdle):
            raise RelayProtocolError("going_idle is sent by the connection on stop or suspend")
        if not isinstance(frame, _CALLER_FRAMES):
            raise RelayProtocolError(f"{name} is a connector frame; a gateway never sends it")
        if not self.live:
            raise RelayProtocolError(f"cannot send {name} in state {self.state.value}")
        return encode_frame(frame)

    # ---- internals -----------------------------------------------------------------------

    def _new_socket(self) -> None:
        """A dial succeeded: a fresh decoder, and the next descriptor is the default."""
        self._decoder = FrameDecoder(self.max_frame_bytes)
        self._first_of_socket = True
        self._draining = False

    def _descriptor(self, descriptor: CapabilityDescriptor) -> None:
        self._descriptors[descriptor.platform] = descriptor
        if self._first_of_socket:
            self._first_of_socket = False
            self._default = descriptor
        self._received += self.handle(DescriptorReceived(valid=True))

    def _encode(self, action: Action) -> Action:
        """The machine's send actions as the encoded frames; a drained close opens its window."""
        if isinstance(action, SendHellos):
            return WriteFrames(
                tuple(encode_frame(Hello(i.platform, i.bot_id)) for i in self.identities)
            )
        if isinstance(action, SendGoingIdle):
            return WriteFrames((encode_frame(GoingIdle()),))
        if isinstance(action, CloseSocket) and action.drain_s > 0:
            self._draining = True
        return action
