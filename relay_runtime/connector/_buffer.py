"""The per-instance delivery buffer: ordered, ack-gated, redelivered after a reconnect.

While an instance is flipped to buffered-only (after ``going_idle``), or has no connected
gateway, the connector appends its inbound here. Each entry gets a ``bufferId``. After the
next handshake the connector replays the entries in order; an entry leaves the buffer only
when the gateway sends ``inbound_ack`` for its id, so a drop mid-drain redelivers exactly the
un-acked tail on the next connection (RC §8 Drain). Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator

import attrs

from protocol._frames import Inbound, PassthroughForwardFrame

#: A frame that can be buffered; its ``buffer_id`` is set when it is appended.
BufferedFrame = Inbound | PassthroughForwardFrame


@attrs.define
class DeliveryBuffer:
    """Buffered deliveries of one instance, oldest first, keyed by ``bufferId``."""

    _entries: dict[str, BufferedFrame] = attrs.field(factory=dict, init=False)
    acked: int = attrs.field(default=0, init=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[BufferedFrame]:
        return iter(self._entries.values())

    def __contains__(self, buffer_id: object) -> bool:
        return buffer_id in self._entries

    def append(self, frame: BufferedFrame, buffer_id: str) -> BufferedFrame:
        """Add ``frame`` under ``buffer_id`` (which must be new); returns the stamped frame."""
        if not buffer_id:
            raise ValueError("buffer_id must be non-empty")
        if buffer_id in self._entries:
            raise ValueError(f"buffer_id {buffer_id!r} is already buffered")
        stamped = attrs.evolve(frame, buffer_id=buffer_id)
        self._entries[buffer_id] = stamped
        return stamped

    def ack(self, buffer_id: str) -> bool:
        """Drop the entry ``buffer_id``; ``False`` if it is unknown (already acked or never)."""
        if self._entries.pop(buffer_id, None) is None:
            return False
        self.acked += 1
        return True

    def next_unsent(self, sent: Collection[str]) -> BufferedFrame | None:
        """The oldest entry whose id is not in ``sent`` (what one connection already got).

        ``sent`` holds buffered ids only, as a connection's in-flight set does (an id leaves
        both on its ack). So the two usual cases of a busy connection, everything sent and
        just the newest entry unsent, are answered without a scan of the buffer.
        """
        unsent = len(self._entries) - len(sent)
        if unsent <= 0:
            return None
        if unsent == 1:
            newest = next(reversed(self._entries))
            if newest not in sent:
                return self._entries[newest]
        buffer_id = next(itertools.filterfalse(sent.__contains__, self._entries), None)
        return None if buffer_id is None else self._entries[buffer_id]

    def ids(self) -> list[str]:
        """The buffered ids, oldest first."""
        return list(self._entries)
