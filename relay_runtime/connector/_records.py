"""What the reference connector remembers, for tests and benchmarks to inspect.

Every record is a frozen value appended to a list the connector exposes read-only; nothing
is ever rewritten, so a test can remember an index and look only at what came after it.
"""

from __future__ import annotations

from typing import Literal

import attrs

from protocol._errors import FrameError
from protocol._events import MessageEvent
from protocol._frames import ConnectorFrame, GatewayFrame


@attrs.frozen
class Received:
    """One frame a gateway sent, with the connection and gateway it came from.

    ``at`` is ``trio.current_time()`` when the frame was decoded (for latency figures).
    """

    connection_id: int
    gateway_id: str
    frame: GatewayFrame
    at: float = 0.0


@attrs.frozen
class Sent:
    """One frame the connector wrote; ``frame`` is ``None`` for raw text (e.g. broken frames)."""

    connection_id: int
    gateway_id: str
    text: str
    frame: ConnectorFrame | None


@attrs.frozen
class BadFrame:
    """A line from a gateway the decoder could not turn into a frame."""

    connection_id: int
    gateway_id: str
    error: FrameError


@attrs.frozen
class Rejection:
    """An upgrade the connector refused: at HTTP (400/401) or by closing 4401 at once."""

    gateway_id: str | None
    reason: str
    status: int
    path: str


@attrs.frozen
class Delivery:
    """What became of one injected frame.

    ``live``: written to the connected gateway without a ``bufferId``; ``buffered``: queued
    under ``buffer_id`` for an ack-gated replay; ``gated``: dropped by the relevance gate;
    ``dropped``: no gateway to deliver to and buffering while disconnected is off.
    """

    outcome: Literal["live", "buffered", "gated", "dropped"]
    buffer_id: str | None = None
    reason: str | None = None


@attrs.frozen
class GatedDrop:
    """An injected message the relevance gate dropped, and why."""

    gateway_id: str
    event: MessageEvent
    reason: str


@attrs.frozen
class SentMessage:
    """A message the gateway posted through ``send`` (or ``follow_up``), as edited since."""

    message_id: str
    chat_id: str
    content: str
    gateway_id: str
    platform: str | None = None
    edits: int = 0


@attrs.frozen
class Post:
    """One message the gateway posted, followed up or edited: an entry of the journal.

    ``seq`` counts from 1 in the order the connector performed the posts; ``at`` is the
    connector's wall clock (Unix seconds). Only performed egress is journalled: a repeated
    ``requestId`` or a scripted failure is not.
    """

    seq: int
    at: float
    gateway_id: str
    platform: str
    op: str
    chat_id: str
    message_id: str
    content: str
    request_id: str

    def to_json(self) -> dict[str, object]:
        """The entry as a JSON object (camelCase keys, like the wire)."""
        return {
            "seq": self.seq,
            "at": self.at,
            "gatewayId": self.gateway_id,
            "platform": self.platform,
            "op": self.op,
            "chatId": self.chat_id,
            "messageId": self.message_id,
            "content": self.content,
            "requestId": self.request_id,
        }
