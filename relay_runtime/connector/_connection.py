"""What the reference connector holds per socket and per gateway instance.

:class:`Connection` is one accepted gateway socket (tests read it); :class:`Instance` is one
gateway id's delivery state (its buffer, the idle flip, its live connection); :class:`Chaos`
is the seeded random-drop schedule. Plus the two ways a socket is ended without a handshake.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from collections.abc import Awaitable, Callable

import attrs
import trio
from trio_websocket import WebSocketConnection

from protocol._frames import ConnectorFrame, Hello, Outbound
from relay_runtime.connector._buffer import DeliveryBuffer, SendCursor


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
    #: How far this connection's replay of its instance's buffer has got.
    cursor: SendCursor = attrs.field(factory=SendCursor, repr=False)
    nursery: trio.Nursery | None = attrs.field(default=None, repr=False)
    # Set by a connector-initiated close; the connection's own task performs it, so the
    # WebSocket close handshake runs while the socket's reader is still alive.
    closing: tuple[int, str | None] | None = attrs.field(default=None, repr=False)
    # While ``corked`` (set by the socket's reader around the frames of one read), frames
    # written to this socket wait in ``outbox`` for one stream write (``_flush``).
    corked: bool = attrs.field(default=False, repr=False)
    outbox: list[tuple[str, ConnectorFrame | None]] = attrs.field(factory=list, repr=False)
    outbox_chars: int = attrs.field(default=0, repr=False)


#: Observer of each ``outbound`` frame received: ``(connection, frame)``.
OutboundObserver = Callable[[Connection, Outbound], None]
#: Awaited for each ``going_idle``; ``True`` if it handled the frame (see the connector).
GoingIdleHook = Callable[[Connection], Awaitable[bool]]
#: Called once per accepted socket, right after the upgrade (a fault-injection point).
AcceptHook = Callable[[Connection], None]


@attrs.define(eq=False)
class Instance:
    """One gateway id's delivery state: the buffer, the idle flip, the live connection."""

    gateway_id: str
    buffer: DeliveryBuffer = attrs.field(factory=DeliveryBuffer)
    buffered_only: bool = False
    poked: bool = False
    current: Connection | None = None
    connections: list[Connection] = attrs.field(factory=list)


@attrs.define
class Chaos:
    """Drop a socket at seeded-random points, about once every ``every`` frames."""

    rng: random.Random
    every: int
    code: int | None
    reason: str | None
    countdown: int = 0

    def rearm(self) -> None:
        # Uniform over [1, 2N-1]: a drop every N frames on average, at unpredictable points.
        self.countdown = self.rng.randint(1, 2 * self.every - 1)


async def abort(stream: trio.abc.Stream) -> None:
    """Close TCP with a reset: no WebSocket close frame, no FIN handshake.

    Any other stream (e.g. an in-memory one) is just closed at once.
    """
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def close_when_cancelled(stream: trio.abc.AsyncResource) -> None:
    """Lives in a socket's nursery; closes ``stream`` when that nursery is cancelled."""
    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)
