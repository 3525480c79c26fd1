"""The reference connector's sockets: listening, the upgrade, reading frames, draining.

One task per accepted socket reads its frames in order (:meth:`Sockets._serve_connection`);
a second, per handshaken connection, replays the instance's buffer (:meth:`Sockets._drain`).
"""

from __future__ import annotations

import logging
import math
import random
import re
import urllib.parse
from collections.abc import Callable

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketRequest,
    wrap_server_stream,
)
from wsproto.utilities import LocalProtocolError

from protocol._codec import to_json
from protocol._connection import UNAUTHORIZED
from protocol._descriptor import CapabilityDescriptor
from protocol._errors import FrameError
from protocol._frames import (
    ConnectorFrame,
    DescriptorFrame,
    Frame,
    GatewayFrame,
    GoingIdle,
    GoingIdleAck,
    Hello,
    InboundAck,
    Interrupt,
    Outbound,
)
from protocol._framing import FrameDecoder
from protocol._urls import RELAY_PATH
from relay_runtime._transport import (
    READ_QUEUE_MESSAGES,
    RECEIVE_BUFFER_BYTES,
    Dialer,
    message_limit,
)
from relay_runtime._websocket import WebSocketClient, wrap_client_stream
from relay_runtime.connector._access import Access
from relay_runtime.connector._answers import Answers
from relay_runtime.connector._connection import (
    Chaos,
    Connection,
    Instance,
    abort,
    close_when_cancelled,
)
from relay_runtime.connector._presets import INVALID_DESCRIPTOR, generic_descriptor
from relay_runtime.connector._records import BadFrame, Received
from relay_runtime.connector._ws_batch import eager_reads

log = logging.getLogger("relay.connector")

#: The frames a gateway may send; anything else decoded from its socket is ignored. A tuple
#: made once: ``isinstance`` against ``A | B | ...`` built a union object per frame.
_GATEWAY_FRAMES = (Hello, Outbound, Interrupt, GoingIdle, InboundAck)
#: The frames whose answers the reader corks (:meth:`Sockets._serve_connection`).
_CORKED_FRAMES = (Outbound, InboundAck)
#: The reader writes its outbox before it holds this many characters.
OUTBOX_FLUSH_CHARS = 256 * 1024
#: An ``inbound_ack`` line as the gateway's codec writes it (compact JSON, ``type`` then
#: ``bufferId``) for an id of characters JSON never escapes (every id this connector makes).
_ACK_LINE = re.compile(r'\{"type":"inbound_ack","bufferId":"([A-Za-z0-9._~-]+)"\}')


class GatewayDecoder(FrameDecoder):
    """The connector's frame decoder: :class:`FrameDecoder` with a shortcut for acks.

    Half the frames a gateway sends at load are ``inbound_ack``. A line that is exactly
    :data:`_ACK_LINE` (within the frame limit) becomes the :class:`InboundAck` that
    :func:`~protocol._codec.decode_line` makes of it, without parsing JSON and running the
    codec's reader; every other line, a ``\\r``-terminated or spaced one included, goes
    through the codec as before (issue 15: the connector's cost per message).
    """

    def _line(self, line: str, out: list[Frame | FrameError]) -> None:
        match = _ACK_LINE.fullmatch(line)
        if match is not None and len(line) <= self.max_frame_bytes:
            out.append(InboundAck(match[1]))
            return
        super()._line(line, out)


class Sockets(Access, Answers):
    """The socket side of a :class:`~.server.ReferenceConnector`."""

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
        stream_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] | None = None,
    ) -> Dialer:
        """A gateway :class:`~relay_runtime._transport.Dialer` that reaches this connector in
        memory.

        Each dial opens a ``stream_pair()`` (:func:`trio.testing.memory_stream_pair` unless
        given) and serves the far end with :meth:`serve_stream` in ``nursery`` (which must
        outlive the gateway's sockets). Pass it as ``run_gateway(..., dialer=...)``; the
        gateway's ``relay_url`` is then only used for the upgrade request's host and path.
        """
        if stream_pair is None:
            # Imported here: trio.testing imports pytest when it is installed, ~1/3 of the
            # connector's import time (issue 15); only in-memory gateways need it.
            import trio.testing

            stream_pair = trio.testing.memory_stream_pair
        pair = stream_pair
        serving = nursery

        async def dial(
            nursery: trio.Nursery,
            url: str,
            *,
            headers: list[tuple[bytes, bytes]],
            max_message_size: int,
        ) -> WebSocketClient:
            parts = urllib.parse.urlsplit(url)
            resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            client, server = pair()
            serving.start_soon(self.serve_stream, server)
            # Like a TCP dial: the client end closes with the socket's nursery, so the
            # connector sees the gateway go however the socket ends.
            nursery.start_soon(close_when_cancelled, client)
            return await wrap_client_stream(
                nursery,
                client,
                parts.netloc or "reference-connector",
                resource,
                extra_headers=headers,
                max_message_size=max_message_size,
            )

        return dial

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
        chaos = Chaos(rng, every, code, reason)
        chaos.rearm()
        self._chaos = chaos

    def stop_dropping(self) -> None:
        """End :meth:`drop_randomly`."""
        self._chaos = None

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
                    # The same message limit, read queue and read size as the gateway's
                    # (RC §2): one network read's messages are handed over together.
                    message_queue_size=READ_QUEUE_MESSAGES,
                    max_message_size=message_limit(self.max_frame_bytes),
                    receive_buffer_size=RECEIVE_BUFFER_BYTES,
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
        if self.on_accept is not None:
            # Deliberately unguarded: an exception here is an error serving this socket,
            # contained by ``_handle_stream`` (the socket closes, the connector goes on).
            self.on_accept(conn)
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
                await abort(stream)
            conn.open = False
            inst.connections.remove(conn)
            self._changed()
            log.info("gateway %r disconnected (connection %d)", gateway_id, conn.id)

    async def _serve_connection(self, conn: Connection) -> None:
        """Read and handle ``conn``'s frames in order until the socket closes.

        The messages trio-websocket has already read are taken without a checkpoint
        (:func:`~relay_runtime.connector._ws_batch.eager_reads`, where its version allows), and the
        frames answering the two frames of every message (``outbound``, ``inbound_ack``)
        are corked: written together, one stream write, before the reader next waits
        (issue 15: the connector's cost per message). The outbox keeps the order the frames
        were made in, and nothing else writes to the socket while it holds any.
        """
        decoder = GatewayDecoder(self.max_frame_bytes)
        take = eager_reads(conn.ws)
        async with trio.open_nursery() as nursery:
            conn.nursery = nursery
            while True:
                try:
                    message = None if take is None else take()
                    if message is None and conn.outbox and take is not None:
                        # One yield before writing the answers: trio-websocket's reader task,
                        # if the same I/O wake-up made it runnable, hands over the peer's
                        # next message first, and its answers join this write. Against a
                        # peer that writes one frame per send, this keeps the connector from
                        # settling into a read and a write per frame (bench_raw: 160 -> 127
                        # µs/msg in that state).
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        message = take()
                    if message is None or conn.outbox_chars >= OUTBOX_FLUSH_CHARS:
                        await self._flush(conn)
                    if message is None:
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
                    if isinstance(item, _CORKED_FRAMES) and self._chaos is None:
                        # Handling these waits for no write to this socket (they queue),
                        # so the outbox keeps the order the frames were made in.
                        conn.corked = True
                        try:
                            await self._on_item(conn, item)
                        finally:
                            conn.corked = False
                    else:
                        await self._flush(conn)
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
        if not isinstance(item, _GATEWAY_FRAMES):
            log.debug("gateway %r sent a connector frame (%s); ignored", conn.gateway_id, item)
            return
        self._received.append(Received(conn.id, conn.gateway_id, item, trio.current_time()))
        # Whether the drain task may ignore this frame (it is only a record for it).
        quiet = False
        try:
            # The two frames of every message first (the frame types are disjoint).
            if isinstance(item, Outbound):
                await self._on_outbound(conn, item)
                quiet = True
            elif isinstance(item, InboundAck):
                quiet = await self._on_inbound_ack(conn, item)
            elif isinstance(item, Hello):
                await self._on_hello(conn, item)
            elif isinstance(item, GoingIdle):
                await self._on_going_idle(conn)
            else:
                quiet = True
        except Exception:  # a bug handling one frame must not end the reader (RC §2)
            log.exception("gateway %r: error handling %s", conn.gateway_id, type(item).__name__)
        if quiet:
            if self._waiting:  # :meth:`_noted`, inline (most frames: nobody waits)
                self._noted()
        else:
            self._changed()
        if self._chaos is not None:
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

    async def _on_going_idle(self, conn: Connection) -> None:
        if self.on_going_idle is not None and await self.on_going_idle(conn):
            return
        inst = self._instance(conn.gateway_id)
        conn.draining = False
        inst.buffered_only = True
        inst.poked = False
        if self.ack_going_idle:
            await self._write(conn, GoingIdleAck())

    async def _on_inbound_ack(self, conn: Connection, ack: InboundAck) -> bool:
        """Drop the acked entry and send what its free slot allows (:meth:`_pump`).

        Returns whether the drain task may ignore the ack: it must look only when the
        buffer emptied while the instance is flipped (the flip is then cleared).
        """
        inst = self._instances.get(conn.gateway_id) or self._instance(conn.gateway_id)
        if not inst.buffer.ack(ack.buffer_id):
            log.debug("gateway %r acked unknown bufferId %r", conn.gateway_id, ack.buffer_id)
        for other in inst.connections:
            other.in_flight.discard(ack.buffer_id)
        await self._pump(inst)
        return not (inst.buffered_only and not len(inst.buffer))

    async def _drain(self, conn: Connection, inst: Instance) -> None:
        """Replay the buffer on ``conn`` in order, at most ``drain_window`` un-acked at once.

        Runs for the connection's life; un-acked entries stay buffered, so the next
        connection redelivers them. When the buffer empties the idle flip is cleared.
        """
        while conn.open:
            if conn.draining and inst.current is conn:
                await self._pump(inst)
                if not len(inst.buffer) and inst.buffered_only:
                    inst.buffered_only = False
                    inst.poked = False
                    self._changed()
            await self._drain_change.wait()
