"""Reply lanes: the unit of order in the durable outbox (RC §6.2).

Replies are delivered in order within a lane, an identity and a chat (or, for a follow-up,
a session); lanes are independent of each other. :class:`LaneCounts` knows how many outbox
entries wait in each lane, so a new reply queues only behind its own lane's backlog.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterable

from protocol._actions import Action, FollowUp
from protocol._codec import decode_object
from protocol._frames import Outbound
from relay_runtime._state import OutboxEntry

log = logging.getLogger("relay_runtime.replies")

Lane = tuple[str, str]


def lane_of(platform: str, action: Action) -> Lane:
    """The ordering lane of a reply: its identity and chat (or, for a follow-up, session)."""
    if isinstance(action, FollowUp):
        return platform, f"session:{action.session_key}"
    return platform, f"chat:{getattr(action, 'chat_id', '')}"


def stored_action(entry: OutboxEntry, *, quiet: bool = False) -> Action | None:
    """The action an outbox entry holds, or ``None`` (logged unless ``quiet``) if unreadable."""
    try:
        obj = json.loads(entry.action_json)
    except ValueError as exc:
        if not quiet:
            log.error("relay: outbox entry %d is not JSON (%s); dropped", entry.id, exc)
        return None
    frame = decode_object({"type": "outbound", "requestId": entry.request_id, "action": obj})
    if not isinstance(frame, Outbound):
        if not quiet:
            log.error("relay: outbox entry %d is unreadable (%s); dropped", entry.id, frame)
        return None
    return frame.action


class LaneCounts:
    """Outbox entries waiting per lane, once loaded from the outbox.

    Until :meth:`load` ran, the counts are unknown and :meth:`holds` answers for every lane
    whether anything at all is queued (the caller passes that).
    """

    def __init__(self) -> None:
        self._counts: collections.Counter[Lane] = collections.Counter()
        self.loaded = False

    def load(self, entries: Iterable[OutboxEntry]) -> None:
        """Count ``entries`` (the whole outbox) per lane; unreadable ones are not counted."""
        counts: collections.Counter[Lane] = collections.Counter()
        for entry in entries:
            action = stored_action(entry, quiet=True)
            if action is not None:
                counts[lane_of(entry.platform, action)] += 1
        self._counts = counts
        self.loaded = True

    def holds_any(self, *, anything_queued: bool) -> bool:
        """Whether any lane may hold a new reply up (a quick look before :meth:`holds`)."""
        return bool(self._counts) if self.loaded else anything_queued

    def holds(self, lane: Lane, *, anything_queued: bool) -> bool:
        """Whether a new reply in ``lane`` must queue behind entries already there."""
        if not self.loaded:
            return anything_queued
        return self._counts[lane] > 0

    def add(self, lane: Lane) -> None:
        """An entry was queued in ``lane``."""
        self._counts[lane] += 1

    def left(self, entry: OutboxEntry, action: Action | None = None) -> None:
        """An entry left the outbox (delivered, failed for good, expired or unreadable)."""
        if action is None:
            action = stored_action(entry, quiet=True)
        if action is None:
            return
        lane = lane_of(entry.platform, action)
        if self._counts[lane] > 1:
            self._counts[lane] -= 1
        else:
            self._counts.pop(lane, None)

    def clear(self) -> None:
        """The outbox is empty."""
        self._counts.clear()
