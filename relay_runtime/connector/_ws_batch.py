"""Batched writes and reads over trio-websocket's connection, for the reference connector.

The connector serves with trio-websocket. Its ``send_message`` writes one message per call
with a checkpoint for its stream lock, and its reader task hands each message over with a
checkpoint: two task steps per message each way. :func:`send_texts` and :func:`eager_reads`
do the same work for a batch through the connection's private attributes, a seam pinned to
the checked versions (:data:`BATCHED_WRITE_VERSIONS`) with a fallback to the public calls
for any other (issue 15: the connector's cost per message). The gateway does not use them:
it has its own client (``relay_runtime._websocket``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio_websocket
from trio_websocket import ConnectionClosed
from wsproto.events import TextMessage

#: trio-websocket versions whose private send path :func:`send_texts` repeats (checked: its
#: ``send_message`` is ``_close_reason`` check, ``_wsproto.send``, ``_stream_lock``,
#: ``_stream.send_all``, ``_abort_web_socket`` on a broken stream).
BATCHED_WRITE_VERSIONS = ("0.12.",)
_SEAM_ATTRIBUTES = ("_close_reason", "_wsproto", "_stream", "_stream_lock", "_abort_web_socket")
_SEAM_VERSION_OK = trio_websocket.__version__.startswith(BATCHED_WRITE_VERSIONS)


def can_batch(ws: object) -> bool:
    """Whether :func:`send_texts` may write ``ws``'s frames in one stream write.

    Only a trio-websocket connection of a checked version (``BATCHED_WRITE_VERSIONS``) that
    has the attributes its own send path uses; anything else (another version, a test
    double) is written one message at a time through ``send_message``.
    """
    return (
        _SEAM_VERSION_OK
        and isinstance(ws, trio_websocket.WebSocketConnection)
        and all(hasattr(ws, name) for name in _SEAM_ATTRIBUTES)
    )


async def send_texts(ws: trio_websocket.WebSocketConnection, texts: list[str]) -> None:
    """Send each of ``texts`` as one WebSocket text message, in order, in one stream write.

    trio-websocket's ``send_message`` sends one message per call: it refuses once the
    connection has a close reason, encodes the message with its wsproto connection, then
    writes the bytes with ``send_all`` under its stream lock (the lock its reader takes for
    pongs and the close), turning a broken stream into an abort and ``ConnectionClosed``.
    This does exactly that for a batch, through the same attributes (a documented seam, pinned
    by :data:`BATCHED_WRITE_VERSIONS` and :func:`can_batch`): the encoded messages are
    joined and written once, so a batch costs one syscall and one task step instead of
    two steps per frame. The lock is taken without a checkpoint when it is free; the
    write's own checkpoint stays. A connection :func:`can_batch` refuses is written one
    ``send_message`` per text.

    Raises:
        ConnectionClosed: the connection is closed or closing, or the stream broke.
    """
    if not can_batch(ws):
        for text in texts:
            await ws.send_message(text)
        return
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    encode = ws._wsproto.send
    data = b"".join([encode(TextMessage(data=text)) for text in texts])
    lock = ws._stream_lock
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        await ws._stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await ws._abort_web_socket()
        assert ws._close_reason is not None
        raise ConnectionClosed(ws._close_reason) from None
    finally:
        lock.release()


class _EagerSend:
    """trio-websocket's message channel, as its reader task sends into it: a message is
    queued without a checkpoint while there is room (see :func:`eager_reads`); it waits
    only when the queue is full."""

    __slots__ = ("_inner",)

    def __init__(self, inner: trio.MemorySendChannel[str | bytes]) -> None:
        self._inner = inner

    async def send(self, message: str | bytes) -> None:
        try:
            self._inner.send_nowait(message)
        except trio.WouldBlock:
            await self._inner.send(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def eager_reads(ws: object) -> Callable[[], str | bytes | None] | None:
    """Let ``ws`` hand every message of one network read over in one task step.

    trio-websocket's reader task sends each message it decodes into a bounded channel with
    a checkpoint per message, and ``get_message`` takes one message per checkpoint: two
    task steps per message. For a connection :func:`can_batch` accepts (the same pinned
    version), its reader task's ``_send_channel`` (looked up per message) is wrapped so a
    send with room does not checkpoint, and the returned function takes a message already
    queued from ``_recv_channel`` without one (``None`` when none is queued; raises
    ``ConnectionClosed`` as ``get_message`` does once the channel is closed). The channel
    stays bounded (the server's ``message_queue_size``): when it is full the reader task
    waits, and so stops reading the socket, as before. ``None`` for any other connection.
    """
    if not can_batch(ws) or not hasattr(ws, "_send_channel") or not hasattr(ws, "_recv_channel"):
        return None
    assert isinstance(ws, trio_websocket.WebSocketConnection)
    channel: Any = ws._send_channel
    if not isinstance(channel, _EagerSend):
        ws._send_channel = _EagerSend(channel)  # type: ignore[assignment]
    receive_nowait = ws._recv_channel.receive_nowait

    def take() -> str | bytes | None:
        try:
            return receive_nowait()
        except trio.WouldBlock:
            return None
        except (trio.ClosedResourceError, trio.EndOfChannel):
            raise ConnectionClosed(ws._close_reason) from None

    return take
