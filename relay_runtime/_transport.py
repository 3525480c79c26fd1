"""The connector socket: dialing with a fresh bearer, and the per-socket tasks (RC §2, §6.4).

One :class:`RelaySocket` wraps one open :class:`~relay_runtime._websocket.WebSocketClient`.
Its tasks run in the socket's own nursery (owned by the supervisor): the reader hands each
message to one callback (the supervisor's, which decodes and routes it; it never runs
handlers itself), the single writer is the only task that writes frames, and the
keepalive pings and declares the socket dead when the peer goes quiet.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import attrs
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

from protocol._codec import soft_problems_to
from protocol._errors import FrameError
from protocol._frames import Frame
from protocol._framing import FrameDecoder, exceeds_limit
from relay_runtime._websocket import WebSocketClient, wrap_client_stream

log = logging.getLogger("relay_runtime.transport")

KEEPALIVE_TIMEOUT = "keepalive timeout"
#: The WebSocket message limit is this many times ``max_frame_bytes`` (RC §2, our choice).
MESSAGE_LIMIT_FACTOR = 16
#: Bound on writing the close frame and waiting for the peer's echo.
CLOSE_TIMEOUT_S = 5.0
ABNORMAL_CLOSURE = 1006
#: Handles one WebSocket message: decodes it and routes the frames it completed.
OnMessage = Callable[[str | bytes], Awaitable[None]]
#: Handles one message as far as it can without waiting: ``None`` when done, else the rest
#: to await (in order, before any later message).
OnMessageNowait = Callable[[str | bytes], Callable[[], Awaitable[None]] | None]
#: Rejected-frame lines logged per socket per window before the rest are only counted.
REJECTED_LOG_BUDGET = 10
REJECTED_LOG_WINDOW_S = 10.0
#: Messages the client may hold read but not yet handled (its ``message_queue_size``):
#: a few, so that one network read's messages are handed over together; at most this many
#: times the message limit is held before its reader stops reading the socket.
READ_QUEUE_MESSAGES = 8
#: Bytes asked of the socket per read.
RECEIVE_BUFFER_BYTES = 64 * 1024
#: The writer takes queued frames into one stream write until they hold this many characters.
WRITE_BATCH_CHARS = 256 * 1024


class Dialer(Protocol):
    """Opens a WebSocket to ``url`` whose background tasks run in ``nursery``.

    The production dialer is :func:`websocket_dialer`; tests dial over memory streams.
    """

    async def __call__(
        self,
        nursery: trio.Nursery,
        url: str,
        *,
        headers: list[tuple[bytes, bytes]],
        max_message_size: int,
    ) -> WebSocketClient: ...


async def websocket_dialer(
    nursery: trio.Nursery,
    url: str,
    *,
    headers: list[tuple[bytes, bytes]],
    max_message_size: int,
) -> WebSocketClient:
    """Dial a real ``ws://``/``wss://`` URL (TLS verified with the system defaults).

    The stream is closed however the socket ends: a rejected upgrade or a failed handshake
    closes it here, and a cancelled socket nursery (which never runs the close handshake)
    closes it through :func:`_close_when_cancelled`.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise DialError(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    if secure:
        stream = await trio.open_ssl_over_tcp_stream(
            parts.hostname, port, ssl_context=ssl.create_default_context()
        )
    else:
        stream = await trio.open_tcp_stream(parts.hostname, port)
    nursery.start_soon(_close_when_cancelled, stream)
    try:
        return await wrap_client_stream(
            nursery,
            stream,
            parts.netloc,
            resource,
            extra_headers=headers,
            max_message_size=max_message_size,
            message_queue_size=READ_QUEUE_MESSAGES,
            receive_buffer_size=RECEIVE_BUFFER_BYTES,
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _close_when_cancelled(stream: trio.abc.AsyncResource) -> None:
    """Lives in the socket nursery; closes ``stream`` when that nursery is cancelled."""
    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


def bearer_headers(token: str | None) -> list[tuple[bytes, bytes]]:
    """The upgrade headers: ``Authorization: Bearer <token>`` when there is a token."""
    if token is None:
        return []
    return [(b"authorization", b"Bearer " + token.encode("ascii"))]


class DialError(Exception):
    """A dial that did not produce an open socket; ``http_status`` for a rejected upgrade."""

    def __init__(self, reason: str, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status


async def dial(
    dialer: Dialer,
    nursery: trio.Nursery,
    url: str,
    *,
    headers: list[tuple[bytes, bytes]],
    max_message_size: int,
    timeout_s: float,
) -> WebSocketClient:
    """Dial within ``timeout_s``; every failure becomes a :class:`DialError`."""
    try:
        with trio.fail_after(timeout_s):
            return await dialer(nursery, url, headers=headers, max_message_size=max_message_size)
    except trio.TooSlowError:
        raise DialError(f"dial timed out after {timeout_s:g} s") from None
    except ConnectionRejected as exc:
        raise DialError(f"upgrade rejected with HTTP {exc.status_code}", exc.status_code) from None
    except (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError) as exc:
        raise DialError(f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # a host the resolver cannot encode (UnicodeError), a bad port
        raise DialError(f"cannot dial this URL: {type(exc).__name__}: {exc}") from None


class RejectedFrameLog:
    """Rate limit for one socket's rejected-frame log lines.

    The first ``budget`` rejected frames of a window each get their own line; the rest are
    counted, and :meth:`run` logs one summary line when the window ends (and, for a partial
    window, when the socket ends). The exact totals stay in the supervisor's stats.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        budget: int = REJECTED_LOG_BUDGET,
        window_s: float = REJECTED_LOG_WINDOW_S,
    ) -> None:
        self.logger = logger
        self.budget = budget
        self.window_s = window_s
        self._window_start: float | None = None
        self._logged = 0
        self._suppressed = 0
        self._suppressing = trio.Event()

    def log(self, level: int, message: str) -> bool:
        """Log one rejected frame's line unless the budget is spent; whether it was logged."""
        now = trio.current_time()
        if self._window_start is not None and now >= self._window_start + self.window_s:
            self._end_window(self.window_s)
        if self._window_start is None:
            self._window_start = now
        if self._logged < self.budget:
            self._logged += 1
            self.logger.log(level, "%s", message)
            return True
        self._suppressed += 1
        self._suppressing.set()
        return False

    async def run(self) -> None:
        """Log each window's summary when it ends; runs in the socket's nursery.

        When the nursery is cancelled (the socket ended), the partial window's count is
        logged at once, so nothing suppressed goes unreported.
        """
        try:
            while True:
                await self._suppressing.wait()
                start = self._window_start
                assert start is not None
                await trio.sleep_until(start + self.window_s)
                # A frame arriving at the boundary may already have closed this window.
                if self._window_start == start:
                    self._end_window(self.window_s)
        finally:
            if self._window_start is not None:
                self._end_window(trio.current_time() - self._window_start)

    def _end_window(self, seconds: float) -> None:
        if self._suppressed:
            self.logger.warning(
                "relay: %d more malformed frames suppressed in the last %.3g s",
                self._suppressed,
                seconds,
            )
        self._window_start = None
        self._logged = 0
        self._suppressed = 0
        self._suppressing = trio.Event()


@attrs.frozen
class SocketEnd:
    """How a socket ended: the close code and reason the gateway acts on."""

    code: int
    reason: str = ""


@attrs.define(eq=False)
class WriteJob:
    """One frame queued for the writer; ``error`` is set if it could not be written.

    ``on_done`` (if given) is called once the frame is written (with ``None``) or cannot be
    (with the reason): a caller that does not wait for the write (an ``outbound``, whose
    result it waits for anyway) learns of it there. :meth:`wait` waits for the write itself.
    """

    text: str
    on_done: Callable[[str | None], object] | None = None
    error: str | None = None
    finished: bool = False
    _done: trio.Event | None = None

    def finish(self, error: str | None = None) -> None:
        """Mark the job written (``error is None``) or failed."""
        if self.finished:
            return
        self.finished = True
        self.error = error
        if self.on_done is not None:
            self.on_done(error)
        if self._done is not None:
            self._done.set()

    async def wait(self) -> str | None:
        """Wait until the writer wrote the frame (or gave up on it); the failure, or ``None``."""
        if not self.finished:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        return self.error


class RelaySocket:
    """One open connector socket and its reader, writer and keepalive tasks."""

    def __init__(
        self,
        ws: WebSocketClient,
        *,
        max_frame_bytes: int,
        ping_interval_s: float,
        ping_timeout_s: float,
        write_buffer: int = 64,
        rejected_log: RejectedFrameLog | None = None,
    ) -> None:
        self.ws = ws
        ws.arrived = self._arrived
        #: The reader's callback for a message handled where it arrives (see ``reader``).
        self._on_message_nowait: OnMessageNowait | None = None
        #: The reader waits for a message with none queued: one may be handled inline.
        self._reader_idle = False
        #: What inline handling left to await, oldest first (the reader awaits it next).
        self._rest: collections.deque[Callable[[], Awaitable[None]]] = collections.deque()
        self.max_frame_bytes = max_frame_bytes
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.last_seen = trio.current_time()
        self._send, self._recv = trio.open_memory_channel[WriteJob](write_buffer)
        # Fire-and-forget frames that found the queue full; the writer takes these first.
        self._overflow: collections.deque[WriteJob] = collections.deque()
        self._local_end: SocketEnd | None = None
        self._close_done = trio.Event()
        #: The reader is waiting in its callback: backpressure we apply, not a dead peer.
        self.paused = False
        self.frames_out = 0
        #: Rate-limited log for rejected frames (the socket's owner runs its ``run`` task).
        self.rejected_log = rejected_log if rejected_log is not None else RejectedFrameLog(log)

    # ---- writing ------------------------------------------------------------------------

    def too_large(self, text: str) -> bool:
        """Whether an encoded frame (with its newline) is over ``max_frame_bytes``."""
        return exceeds_limit(text[:-1] if text.endswith("\n") else text, self.max_frame_bytes)

    def enqueue_nowait(self, text: str) -> WriteJob | None:
        """Queue a frame without waiting; ``None`` only once the socket is gone.

        A full queue does not refuse it: a fire-and-forget frame (``inbound_ack``,
        ``going_idle``) has no caller to wait and retry, and the connector replays an
        un-acked delivery only on the next connection. Such frames wait in an overflow the
        writer empties first (small frames, one per delivery acked or request made).
        """
        job = WriteJob(text)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self._overflow.append(job)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return None
        return job

    async def queue(self, text: str, on_done: Callable[[str | None], object]) -> str | None:
        """Queue a frame for the writer, waiting only while the queue is full.

        ``None`` once queued (the writer calls ``on_done`` with ``None`` once it has
        written the frame, or with why it could not), else why it cannot be queued. Unlike
        :meth:`write` it does not wait for the frame to be written: the ``outbound`` path
        waits for the frame's result, and the writer (the only task that writes) writes it
        whole even if this caller is cancelled meanwhile.
        """
        return await self._enqueue(WriteJob(text, on_done))

    async def write(self, text: str) -> str | None:
        """Queue a frame and wait until it is written; the failure reason, or ``None``."""
        job = WriteJob(text)
        refused = await self._enqueue(job)
        return refused if refused is not None else await job.wait()

    async def _enqueue(self, job: WriteJob) -> str | None:
        """Put ``job`` in the writer's queue, waiting only while it is full; why not, or
        ``None`` once queued."""
        try:
            self._send.send_nowait(job)  # no checkpoint on the common path
        except trio.WouldBlock:
            try:
                await self._send.send(job)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return "connection closed"
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return "connection closed"
        return None

    async def writer(self) -> None:
        """The only task that writes frames to the socket; one frame per text message.

        Each wake takes every frame queued by then (the overflow first, up to
        :data:`WRITE_BATCH_CHARS`) and writes them with one stream write
        (:meth:`WebSocketClient.send_texts`): frames never interleave, and a caller's
        cancellation never cuts one short, because no other task writes.
        """
        batch: list[WriteJob] = []
        try:
            while True:
                self._take_queued(batch)
                if not batch:
                    try:
                        batch.append(await self._recv.receive())
                    except trio.EndOfChannel:
                        return
                    self._take_queued(batch)
                try:
                    await self.ws.send_texts([job.text for job in batch])
                except ConnectionClosed:
                    return
                self.frames_out += len(batch)
                done, batch = batch, []
                for job in done:
                    job.finish()
        finally:
            for job in batch:
                job.finish("connection closed")
            # Fail what is still queued before closing the receive side: once it is closed,
            # queued jobs could no longer be drained and their writers would wait forever.
            self._fail_queued()
            self._recv.close()

    def _take_queued(self, batch: list[WriteJob]) -> None:
        """Move queued jobs (the overflow first) into ``batch``, up to the batch bound."""
        size = sum(len(job.text) for job in batch)
        overflow = self._overflow
        while overflow and size < WRITE_BATCH_CHARS:
            job = overflow.popleft()
            batch.append(job)
            size += len(job.text)
        while size < WRITE_BATCH_CHARS:
            try:
                job = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            batch.append(job)
            size += len(job.text)

    def _fail_queued(self) -> None:
        self._send.close()
        while self._overflow:
            self._overflow.popleft().finish("connection closed")
        while True:
            try:
                self._recv.receive_nowait().finish("connection closed")
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    # ---- reading ------------------------------------------------------------------------

    async def reader(
        self, on_message: OnMessage, on_message_nowait: OnMessageNowait | None = None
    ) -> SocketEnd:
        """Read until the socket closes; return how it ended.

        Each message goes to ``on_message`` (the supervisor's, which decodes it through
        its :class:`~protocol._relay_connection.RelayConnection` and routes each frame;
        :func:`frames_to` for an owner without a connection). While it waits the reader is
        ``paused``; an exception from it is logged and the next message is read (RC R7).
        Soft field problems the codec finds are logged through the socket's rate limit,
        so a peer cannot flood the log with them.

        With ``on_message_nowait``, a message that arrives while this reader is idle is
        handled where the client's reader task decoded it (:meth:`_arrived`), in that
        task's step: no task step of ours. What that could not finish without waiting (the
        dispatcher's queue is full) comes back here, ahead of any later message, and is
        awaited ``paused`` as before.
        """
        take = self.ws.take_message
        self._on_message_nowait = on_message_nowait
        try:
            with soft_problems_to(self._soft_problem):
                while True:
                    try:
                        # Every message already read is handled in this task step; the
                        # wait (a step of its own) comes only once none is left.
                        message = take()
                        if message is None:
                            self._reader_idle = True
                            try:
                                message = await self.ws.get_message()
                            finally:
                                self._reader_idle = False
                    except ConnectionClosed as exc:
                        return self.end_from(exc.reason)
                    self.paused = True
                    try:
                        if message is _RESUME:
                            await self._rest.popleft()()
                        else:
                            self.last_seen = trio.current_time()
                            await on_message(message)
                    except Exception:
                        log.exception("relay: error while handling a message; reader continues")
                    finally:
                        self.paused = False
        finally:
            self._on_message_nowait = None

    def _arrived(self, message: str | bytes) -> str | bytes | None:
        """The client's reader task decoded ``message``: handle it here if the reader
        is idle (``None``: handled), else give back what goes into the message queue.

        Runs in that task's step, so it never waits: what the callback leaves to await goes
        to the reader, woken by :data:`_RESUME` in the queue (later messages queue behind
        it, so the order holds). An exception is logged, as the reader logs it.
        """
        handle = self._on_message_nowait
        if handle is None or not self._reader_idle:
            return message
        self.last_seen = trio.current_time()
        try:
            with soft_problems_to(self._soft_problem):
                rest = handle(message)
        except Exception:
            log.exception("relay: error while handling a message; reader continues")
            return None
        if rest is None:
            return None
        self._rest.append(rest)
        # Busy from now on (not when it next runs): later messages queue behind the rest.
        self._reader_idle = False
        return cast("str | bytes", _RESUME)

    def _soft_problem(self, message: str) -> None:
        self.rejected_log.log(logging.WARNING, message)

    def end_from(self, reason: trio_websocket.CloseReason | None) -> SocketEnd:
        """The socket's end: ours if we closed it, else the peer's close frame."""
        if self._local_end is not None:
            return self._local_end
        if reason is None:
            return SocketEnd(ABNORMAL_CLOSURE, "")
        return SocketEnd(reason.code, reason.reason or "")

    # ---- keepalive and closing ----------------------------------------------------------

    async def keepalive(self, nursery: trio.Nursery) -> None:
        """Ping every ``ping_interval_s``; close 1011 after ``ping_timeout_s`` of silence.

        Any received message or pong counts as a sign of life (RC §6.4). While the reader is
        paused by our own backpressure, the client stops processing pongs too, so that
        time counts as alive: the peer is not the one who went quiet.
        """
        next_ping = trio.current_time() + self.ping_interval_s
        while True:
            deadline = self.last_seen + self.ping_timeout_s
            await trio.sleep_until(min(next_ping, deadline))
            now = trio.current_time()
            if self.paused:
                self.last_seen = now
            if now >= self.last_seen + self.ping_timeout_s:
                log.warning("relay: no pong or message for %g s; closing", self.ping_timeout_s)
                await self.close(1011, KEEPALIVE_TIMEOUT)
                return
            if now >= next_ping:
                nursery.start_soon(self._ping)
                next_ping = now + self.ping_interval_s

    async def _ping(self) -> None:
        try:
            await self.ws.ping()
        except (ConnectionClosed, ValueError):
            return
        self.last_seen = trio.current_time()

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``/``reason`` (bounded; never raises for transport reasons)."""
        if self._local_end is None:
            self._local_end = SocketEnd(code, reason)
        try:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                with contextlib.suppress(
                    ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
                ):
                    await self.ws.aclose(code, reason)
        finally:
            self._close_done.set()

    async def settle(self) -> None:
        """If we started closing, wait (bounded) for the close handshake to finish.

        The reader sees ``ConnectionClosed`` as soon as a local close begins; ending the
        socket's tasks then would drop the peer's close echo and stall the close.
        """
        if self._local_end is not None:
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._close_done.wait()


#: Put in the client's message queue by :meth:`RelaySocket._arrived`: the reader awaits
#: what inline handling left (it is not a message).
_RESUME: Any = object()


def frames_to(
    on_item: Callable[[Frame | FrameError], Awaitable[None]], max_frame_bytes: int
) -> OnMessage:
    """A reader callback that decodes with a decoder of its own and hands each frame or
    frame error to ``on_item`` in order (an exception there is logged, the next frame goes
    on): a socket's owner without a connection (tests, tools) reads with it.
    """
    decoder = FrameDecoder(max_frame_bytes)

    async def on_message(message: str | bytes) -> None:
        if isinstance(message, str):
            items = decoder.feed_text(message)
        else:
            items = decoder.feed_bytes(message)
        for item in items:
            try:
                await on_item(item)
            except Exception:
                log.exception("relay: error while handling a frame; reader continues")

    return on_message


def message_limit(max_frame_bytes: int) -> int:
    """The WebSocket message size limit for a frame limit (16 x, RC §2)."""
    return max(1, min(max_frame_bytes * MESSAGE_LIMIT_FACTOR, 2**62))
