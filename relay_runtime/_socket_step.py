"""One serve step of the supervisor's loop: dial, serve one socket in its nursery, end (RC §6).

A :class:`SocketStep` is made for each dial and dropped when its socket ended: its nursery
holds the socket's reader, writer, keepalive, rejected-frame log, the connection's timers
and the close watcher, and it ends as a unit. The supervisor hands it what it needs as
callables, so the step knows the transport and nothing of the protocol's states.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio
from trio_websocket import ConnectionRejected, HandshakeError

from protocol._lifecycle import CloseSocket
from relay_runtime._relay_config import RelayConfig, SupervisorStats
from relay_runtime._transport import (
    Dialer,
    DialError,
    OnMessage,
    OnMessageNowait,
    RejectedFrameLog,
    RelaySocket,
    SocketEnd,
    bearer_headers,
    dial,
    message_limit,
)

# The supervisor's logger: operators filter on it, and these lines were always its own.
log = logging.getLogger("relay_runtime.supervisor")


@attrs.define(eq=False)
class SocketStep:
    """One socket from dial to end.

    Attributes:
        config: the socket's limits and keepalive.
        stats: dial, failure and frame counters.
        dialer, url: where and how to dial.
        bearer: mints the upgrade token for this dial (``None``: no credentials).
        opened: the socket is up and :attr:`socket` set; tell the connection. False when
            the connection moved on meanwhile (a stop): the socket is dropped unused.
        dial_failed: the dial produced no socket.
        on_message: decodes one message through the connection and routes its frames;
            may wait (backpressure).
        drain: the going-idle drain window's wait (bounded by the close order).
        timers: the connection's timer task, run in this socket's nursery.
        write_buffer: the writer's queue size.
        on_message_nowait: ``on_message`` as far as it goes without waiting (see
            :class:`~relay_runtime._transport.OnMessageNowait`); ``None``: none.
    """

    config: RelayConfig
    stats: SupervisorStats
    dialer: Dialer
    url: str
    bearer: Callable[[], str | None]
    opened: Callable[[], bool]
    dial_failed: Callable[[DialError], None]
    on_message: OnMessage
    drain: Callable[[], Awaitable[None]]
    timers: Callable[[], Awaitable[object]]
    write_buffer: int
    on_message_nowait: OnMessageNowait | None = None
    socket: RelaySocket | None = None
    #: Why the dial produced no socket, once ``dial_failed`` was told.
    failure: DialError | None = None
    close: CloseSocket | None = None
    close_requested: trio.Event = attrs.field(factory=trio.Event)

    def order_close(self, close: CloseSocket) -> None:
        """Close this socket (or abort its dial); the first order wins."""
        if not self.close_requested.is_set():
            self.close = close
            self.close_requested.set()

    async def run(self) -> SocketEnd | None:
        """Dial and serve until the socket ends; how it ended, ``None`` if there was none."""
        config = self.config
        failed: DialError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self.stats.dials += 1
                dial_scope = trio.CancelScope()
                nursery.start_soon(self._close_watcher, nursery, dial_scope)
                nursery.start_soon(self.timers)
                try:
                    with dial_scope:
                        ws = await dial(
                            self.dialer,
                            nursery,
                            self.url,
                            headers=bearer_headers(self.bearer()),
                            max_message_size=message_limit(config.max_frame_bytes),
                            timeout_s=config.handshake_timeout_s,
                        )
                except DialError as exc:
                    failed = exc
                if failed is not None or dial_scope.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    return None
                socket = self.socket = RelaySocket(
                    ws,
                    max_frame_bytes=config.max_frame_bytes,
                    ping_interval_s=config.ping_interval_s,
                    ping_timeout_s=config.ping_timeout_s,
                    write_buffer=self.write_buffer,
                    rejected_log=RejectedFrameLog(log),
                )
                nursery.start_soon(socket.writer)
                if not self.opened():  # queues the hellos before anything else
                    nursery.cancel_scope.cancel()
                    return None
                nursery.start_soon(socket.keepalive, nursery)
                nursery.start_soon(socket.rejected_log.run)
                ended = await socket.reader(self.on_message, self.on_message_nowait)
                await socket.settle()
                nursery.cancel_scope.cancel()
                return ended
        except* ConnectionRejected as group:
            # A dialer may raise a rejected upgrade from a task of the socket's nursery
            # (trio-websocket's client does) rather than from the dial itself.
            rejected = group.exceptions[0]
            assert isinstance(rejected, ConnectionRejected)
            status = rejected.status_code
            failed = DialError(f"upgrade rejected with HTTP {status}", status)
        except* (HandshakeError, OSError) as group:
            failed = DialError(f"{type(group.exceptions[0]).__name__}: {group.exceptions[0]}")
        finally:
            if self.socket is not None:
                self.stats.frames_out += self.socket.frames_out
            elif failed is not None:
                self.stats.dial_failures += 1
                log.warning("relay: dial failed: %s", failed.reason)
                self.failure = failed
                self.dial_failed(failed)
        # Our close watcher ended the socket's tasks: report the close we sent.
        return self.socket.end_from(None) if self.socket is not None else None

    async def _close_watcher(self, nursery: trio.Nursery, dial_scope: trio.CancelScope) -> None:
        """Carry out the close order: drain, close frame, end the socket's tasks."""
        await self.close_requested.wait()
        args = self.close or CloseSocket(1000, "closing")
        socket = self.socket
        if socket is None:
            dial_scope.cancel()
            return
        if args.drain_s > 0:
            with trio.move_on_after(args.drain_s):
                await self.drain()
        await socket.close(args.code, args.reason)
        nursery.cancel_scope.cancel()


def log_end(ended: SocketEnd, *, orderly: bool) -> None:
    """One line per socket end: INFO for a close we asked for, else a WARNING drop."""
    reason = repr(ended.reason) if ended.reason else "none given"
    if orderly:
        log.info("relay: connection closed (close code %d, reason %s)", ended.code, reason)
    else:
        log.warning(
            "relay: connection dropped (close code %d, reason %s)",
            ended.code,
            reason,
            extra={"close_code": ended.code},
        )
