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
class SendCursor:
    """Where one connection's replay of a buffer stands (:meth:`DeliveryBuffer.next_unsent`).

    Every entry appended at or before ``position`` has been sent on the connection or has
    left the buffer, so a search for the oldest unsent entry starts after it.
    """

    position: int = 0


@attrs.define
class DeliveryBuffer:
    """Buffered deliveries of one instance, oldest first, keyed by ``bufferId``."""

    _entries: dict[str, BufferedFrame] = attrs.field(factory=dict, init=False)
    acked: int = attrs.field(default=0, init=False)
    # Each entry's place in append order (1, 2, ...) and back, for the cursor's search.
    _places: dict[str, int] = attrs.field(factory=dict, init=False, repr=False)
    _by_place: dict[int, str] = attrs.field(factory=dict, init=False, repr=False)
    _appended: int = attrs.field(default=0, init=False, repr=False)
    # Every place up to here is gone (acked). Kept instead of looking at the oldest entry:
    # ``next(iter(entries))`` walks past every slot freed since the dict last resized, and
    # entries leave from the front: it was most of the buffer's time at saturation (issue 15).
    _gone: int = attrs.field(default=0, init=False, repr=False)

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
        # What ``attrs.evolve(frame, buffer_id=...)`` makes, without its per-call look-up of
        # the fields (both frame types have exactly these two): a message's own cost.
        stamped: BufferedFrame
        if type(frame) is Inbound:
            stamped = Inbound(frame.event, buffer_id)
        elif type(frame) is PassthroughForwardFrame:
            stamped = PassthroughForwardFrame(frame.forward, buffer_id)
        else:
            stamped = attrs.evolve(frame, buffer_id=buffer_id)
        self._entries[buffer_id] = stamped
        self._appended += 1
        self._places[buffer_id] = self._appended
        self._by_place[self._appended] = buffer_id
        return stamped

    def ack(self, buffer_id: str) -> bool:
        """Drop the entry ``buffer_id``; ``False`` if it is unknown (already acked or never)."""
        if self._entries.pop(buffer_id, None) is None:
            return False
        by_place = self._by_place
        place = self._places.pop(buffer_id)
        del by_place[place]
        if place == self._gone + 1:
            gone, appended = place, self._appended
            while gone < appended and gone + 1 not in by_place:
                gone += 1
            self._gone = gone
        self.acked += 1
        return True

    def next_unsent(
        self, sent: Collection[str], cursor: SendCursor | None = None
    ) -> BufferedFrame | None:
        """The oldest entry whose id is not in ``sent`` (what one connection already got).

        ``sent`` holds buffered ids only, as a connection's in-flight set does (an id leaves
        both on its ack). With the connection's ``cursor`` the search starts after the entries
        it has passed, all sent or gone, and moves it on: the replay costs O(1) per entry
        instead of a scan of the in-flight window per entry (issue 15). Without, it starts at
        the oldest entry. Either way the answer is the same, provided an id leaves ``sent``
        only when its entry leaves the buffer (as an ack does).
        """
        entries = self._entries
        if len(entries) <= len(sent):
            return None
        if cursor is None:
            buffer_id = next(itertools.filterfalse(sent.__contains__, entries), None)
            return None if buffer_id is None else entries[buffer_id]
        # Places before the oldest entry are gone: no need to step through them.
        start = cursor.position if cursor.position > self._gone else self._gone
        by_place = self._by_place
        for place in range(start + 1, self._appended + 1):
            buffer_id = by_place.get(place)
            if buffer_id is None or buffer_id in sent:
                cursor.position = place  # every place up to here is sent or gone
                continue
            return entries[buffer_id]
        return None

    def ids(self) -> list[str]:
        """The buffered ids, oldest first."""
        return list(self._entries)
