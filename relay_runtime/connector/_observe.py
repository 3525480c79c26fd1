"""What tests and benchmarks read from the reference connector, and how they wait for it."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TypeVar

from protocol._frames import GatewayFrame, GoingIdle, Hello, InboundAck, Interrupt, Outbound
from relay_runtime.connector._buffer import BufferedFrame
from relay_runtime.connector._connection import Connection
from relay_runtime.connector._core import ConnectorCore
from relay_runtime.connector._records import (
    BadFrame,
    GatedDrop,
    Post,
    Received,
    Rejection,
    Sent,
    SentMessage,
)

F = TypeVar("F", bound=GatewayFrame)


class Observation(ConnectorCore):
    """Read-only views of a :class:`~.server.ReferenceConnector`'s records, and waits on them."""

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
