"""TCP-like memory links: a stream pair whose close resets the peer mid-write, and a dialer of
the reference connector over it."""

from __future__ import annotations

import math

import attrs
import trio
import trio.lowlevel
import trio.testing
import trio.to_thread

from relay_runtime._transport import Dialer
from relay_runtime.connector import ReferenceConnector


@attrs.define(eq=False)
class _Wire:
    """What the two ends of one :func:`reset_stream_pair` share: whether it was reset."""

    reset: bool = False


class ResetStream(trio.abc.Stream):
    """One end of :func:`reset_stream_pair`: a memory stream that can be reset like TCP."""

    def __init__(
        self,
        send: trio.testing.MemorySendStream,
        receive: trio.testing.MemoryReceiveStream,
        wire: _Wire,
    ) -> None:
        self._send = send
        self._receive = receive
        self._wire = wire

    @property
    def was_reset(self) -> bool:
        """Whether either end closed abortively."""
        return self._wire.reset

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._wire.reset:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("connection reset by peer")
        await self._send.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._send.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._wire.reset:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("connection reset by peer")
        data = await self._receive.receive_some(max_bytes)
        if self._wire.reset:
            # Bytes that had arrived but were not read yet are gone with the reset.
            raise trio.BrokenResourceError("connection reset by peer")
        return data

    async def aclose(self) -> None:
        # trio.aclose_forcefully() closes inside a cancelled scope: that is the abortive
        # close (SO_LINGER 0), which resets the connection; any other close is a FIN.
        if trio.current_effective_deadline() == -math.inf:
            self._wire.reset = True
        self._send.close()  # the peer's pending receive wakes up (EOF, or the reset)
        self._receive.close()
        await trio.lowlevel.checkpoint()


def reset_stream_pair() -> tuple[ResetStream, ResetStream]:
    """A connected pair of in-memory byte streams whose abortive close behaves like TCP's.

    :func:`trio.testing.memory_stream_pair` delivers every byte written before a close,
    even when the close is :func:`trio.aclose_forcefully`. A TCP abort (RST, e.g. the
    reference connector's drop) does not: bytes still in flight or unread, in either
    direction, are lost, and both ends see ``BrokenResourceError`` (``ECONNRESET``). These
    ends do the same: closing one with ``trio.aclose_forcefully`` resets the pair, and from
    then on every read and write on either end raises ``BrokenResourceError``, whatever was
    buffered. A plain ``aclose`` is a FIN: the peer reads what was sent, then EOF.
    """
    to_b, from_a = trio.testing.memory_stream_one_way_pair()
    to_a, from_b = trio.testing.memory_stream_one_way_pair()
    wire = _Wire()
    return ResetStream(to_b, from_b, wire), ResetStream(to_a, from_a, wire)


def reset_memory_dialer(connector: ReferenceConnector, nursery: trio.Nursery) -> Dialer:
    """Like ``connector.memory_dialer(nursery)``, over :func:`reset_stream_pair` links.

    A connector drop (``drop()``, ``drop_randomly()``) then loses whatever was in flight
    on the socket, both ways, as a TCP reset does: an ``outbound`` the connector had not
    read yet, an ``outbound_result`` or ``inbound`` the gateway had not read yet. Use it
    where a test is about what survives a drop; the plain memory dialer is gentler than
    a network.
    """
    return connector.memory_dialer(nursery, reset_stream_pair)
