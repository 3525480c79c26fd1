"""The gateway's WebSocket client: :mod:`protocol._websocket` on a trio stream.

One :class:`WebSocketClient` is one open connection to the connector. Its reader task (in
the nursery the dialer gives it) reads the stream, answers pings, and hands each message to
the ``arrived`` hook (which may handle it where it arrives, RC R7) or into a bounded queue
that :meth:`~WebSocketClient.get_message` takes from. Writes go out whole under one lock,
so frames never interleave; :meth:`~WebSocketClient.send_texts` writes a batch of messages
with one stream write.

Its errors and close reasons are trio-websocket's public ones (``ConnectionClosed``,
``CloseReason``, ``ConnectionRejected``, ``HandshakeError``): the reference connector and the
tests' servers speak trio-websocket, and the runtime handles one vocabulary for both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import trio
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected, HandshakeError

from protocol._websocket import (
    ABNORMAL_CLOSURE,
    Accepted,
    ClientFrames,
    ClientHandshake,
    Closed,
    HandshakeFailed,
    Pong,
    ProtocolStateError,
    Rejected,
)

#: Handles a message where it arrives: ``None`` when handled, else what to queue instead.
Arrived = Callable[[str | bytes], str | bytes | None]


async def wrap_client_stream(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    *,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    max_message_size: int = 1 << 20,
    message_queue_size: int = 8,
    receive_buffer_size: int = 64 * 1024,
) -> WebSocketClient:
    """Do the opening handshake on ``stream`` and start the client's reader in ``nursery``.

    Raises:
        ConnectionRejected: the server answered with an HTTP response (its status).
        HandshakeError: the answer is not a valid WebSocket acceptance, or the stream ended.
    """
    handshake = ClientHandshake(host, resource, extra_headers)
    try:
        await stream.send_all(handshake.request())
        outcome: Accepted | Rejected | None = None
        while outcome is None:
            data = await stream.receive_some(receive_buffer_size)
            outcome = handshake.receive_data(data)
    except HandshakeFailed as exc:
        raise HandshakeError(str(exc)) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        # trio wraps what broke the stream (a TLS certificate refused, a reset): name it.
        cause = exc.__cause__ or exc
        raise HandshakeError(
            f"the stream failed during the handshake: {type(cause).__name__}: {cause}"
        ) from None
    if isinstance(outcome, Rejected):
        raise ConnectionRejected(outcome.status_code, outcome.headers, outcome.body)
    client = WebSocketClient(
        stream,
        ClientFrames(max_message_size, outcome.trailing),
        message_queue_size=message_queue_size,
        receive_buffer_size=receive_buffer_size,
    )
    nursery.start_soon(client._reader)
    return client


class WebSocketClient:
    """One open client WebSocket; see the module docstring."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        frames: ClientFrames,
        *,
        message_queue_size: int,
        receive_buffer_size: int,
    ) -> None:
        self._stream = stream
        self._frames = frames
        self._receive_buffer_size = receive_buffer_size
        self._send_lock = trio.Lock()
        self._queue_in, self._queue_out = trio.open_memory_channel[str | bytes](message_queue_size)
        self._pings: dict[bytes, trio.Event] = {}
        #: Set once the connection is closed or closing: why (sends and reads then fail).
        self._close_reason: CloseReason | None = None
        #: Set when the server's close frame arrived or the stream ended.
        self._closed_by_peer = trio.Event()
        #: Offered each message first, in the reader task (see :data:`Arrived`).
        self.arrived: Arrived | None = None

    @property
    def closed(self) -> CloseReason | None:
        """Why the connection is closed (or closing); ``None`` while it is open."""
        return self._close_reason

    # ---- reading ------------------------------------------------------------------------

    async def get_message(self) -> str | bytes:
        """The next message; raises ``ConnectionClosed`` once none is left and it is closed."""
        try:
            return await self._queue_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self._close_reason) from None

    def take_message(self) -> str | bytes | None:
        """A message already read, without a checkpoint; ``None`` if none is queued."""
        try:
            return self._queue_out.receive_nowait()
        except trio.WouldBlock:
            return None
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self._close_reason) from None

    async def _reader(self) -> None:
        """Read until the connection ends; then close the queue and the stream."""
        frames = self._frames
        data: bytes | bytearray = b""  # first: what came with the handshake's answer
        try:
            while True:
                # A ping's pong is queued in ``frames`` and written after the read's events.
                for event in frames.receive_data(data):
                    if isinstance(event, (str, bytes)):
                        await self._deliver(event)
                    elif isinstance(event, Pong):
                        waiter = self._pings.pop(event.payload, None)
                        if waiter is not None:
                            waiter.set()
                    elif isinstance(event, Closed):
                        # The reason first: a peer gone before our echo is written is
                        # still the close it sent, not an abnormal end.
                        self._end(CloseReason(event.code, event.reason or None))
                        await self._flush_replies()
                        return
                await self._flush_replies()
                try:
                    data = await self._stream.receive_some(self._receive_buffer_size)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self._end(CloseReason(ABNORMAL_CLOSURE, None))
                    return
        finally:
            self._queue_in.close()
            self._closed_by_peer.set()
            await trio.aclose_forcefully(self._stream)

    async def _deliver(self, message: str | bytes) -> None:
        arrived = self.arrived
        if arrived is not None:
            queued = arrived(message)
            if queued is None:
                return
            message = queued
        try:
            self._queue_in.send_nowait(message)
        except trio.WouldBlock:
            # Full: wait, and so stop reading the stream, until the owner takes one.
            await self._queue_in.send(message)

    async def _flush_replies(self) -> None:
        """Write the pongs and close echo the framing queued (a broken stream ends us)."""
        data = self._frames.data_to_send()
        if data:
            with contextlib.suppress(ConnectionClosed):
                await self._write(data)

    def _end(self, reason: CloseReason) -> None:
        if self._close_reason is None:
            self._close_reason = reason
        for waiter in self._pings.values():
            waiter.set()
        self._pings.clear()

    # ---- writing ------------------------------------------------------------------------

    async def send_message(self, message: str | bytes) -> None:
        """Send one message; raises ``ConnectionClosed`` once the connection is closing."""
        if isinstance(message, str):
            await self.send_texts([message])
        else:
            await self._send(lambda: self._frames.encode_bytes(message))

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Send each of ``texts`` as one text message, in order, with one stream write."""
        await self._send(lambda: self._frames.encode_texts(texts))

    async def ping(self, payload: bytes | None = None) -> None:
        """Ping and wait for the matching pong (or the end of the connection)."""
        if payload is None:
            payload = os.urandom(4)
        if payload in self._pings:
            raise ValueError(f"a ping with payload {payload!r} is already in flight")
        waiter = trio.Event()
        self._pings[payload] = waiter
        try:
            await self._send(lambda: self._frames.ping(payload))
        except BaseException:
            self._pings.pop(payload, None)
            raise
        await waiter.wait()
        if self._close_reason is not None:
            # The connection ended (or began closing) while the ping was out.
            raise ConnectionClosed(self._close_reason)

    async def _send(self, encode: Callable[[], bytes]) -> None:
        if self._close_reason is not None:
            raise ConnectionClosed(self._close_reason)
        try:
            data = encode()
        except ProtocolStateError:
            raise ConnectionClosed(self._close_reason) from None
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # no checkpoint when free; send_all has its own
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end(CloseReason(ABNORMAL_CLOSURE, None))
            # Closing the stream ends the reader too (its read fails), as a dead peer would.
            await trio.aclose_forcefully(self._stream)
            raise ConnectionClosed(self._close_reason) from None
        finally:
            lock.release()

    # ---- closing ------------------------------------------------------------------------

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close with ``code``/``reason`` and wait for the server's close frame.

        From the moment it starts, reads and sends raise ``ConnectionClosed`` with this
        reason. Bound it with a cancel scope: a server that never answers is not waited on
        past the caller's deadline, and the stream is closed either way.
        """
        if self._close_reason is not None:
            if not self._closed_by_peer.is_set():
                await self._closed_by_peer.wait()
            return
        self._close_reason = CloseReason(code, reason)
        try:
            data = self._frames.close(code, reason or "")
            try:
                await self._write(data)
            except ConnectionClosed:
                return
            await self._closed_by_peer.wait()
        finally:
            self._queue_in.close()
            await trio.aclose_forcefully(self._stream)
