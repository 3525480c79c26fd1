"""The agent's handle on one admitted message: :class:`Turn`, and reply chunking.

A :class:`Turn` is what an agent receives (AR §3). It carries the event and what
the runtime knows about it (session key, platform descriptor, trust decision) and the
outbound actions, which go through the reply policy (:mod:`relay_runtime._replies`): they
return a :class:`~protocol._results.SendResult` and never raise for transport reasons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from protocol._actions import Edit, FollowUp, Send, Typing
from protocol._descriptor import CapabilityDescriptor, text_length
from protocol._events import MessageEvent, SessionSource
from protocol._results import SendResult

if TYPE_CHECKING:
    from relay_runtime._outbound import RequestIds
    from relay_runtime._replies import Replies
    from trust._model import Decision


_SEPARATORS = ("\n", " ")


def _is_high_surrogate(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


def _is_low_surrogate(ch: str) -> bool:
    return "\udc00" <= ch <= "\udfff"


def _fit(text: str, limit: int, len_unit: str) -> int:
    """How many code points of ``text`` fit in ``limit`` units (at least one)."""
    if len_unit != "utf16" or text.isascii():
        return max(1, min(len(text), limit))
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) >= 0x10000 else 1
        if used > limit:
            return max(1, i)
    return len(text)


def chunk_text(text: str, limit: int, len_unit: str = "chars") -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` units of ``len_unit`` (RC §3.3).

    A piece ends at the last newline that fits, else the last space, else as many code
    points as fit; the newline or space a split happens at is dropped (it becomes the
    boundary between two messages). A cut never falls inside a surrogate pair (a high
    surrogate followed by a low one, as left by ``surrogatepass`` decoding). Text that fits
    is returned whole, so ``""`` gives ``[""]``.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit!r}")
    pieces: list[str] = []
    rest = text
    while text_length(rest, len_unit) > limit:
        cut = _fit(rest, limit, len_unit)
        window = rest[:cut]
        split = -1
        for sep in _SEPARATORS:
            split = window.rfind(sep)
            if split > 0:
                break
        if split > 0:
            pieces.append(rest[:split])
            rest = rest[split + 1 :]
            continue
        if cut > 1 and _is_high_surrogate(rest[cut - 1]) and _is_low_surrogate(rest[cut]):
            cut -= 1
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    return pieces


@attrs.frozen
class Turn:
    """One admitted inbound message, as the agent sees it.

    ``platform`` is the platform the message arrived on as the connector named it
    (``source.platform_raw``; the primary identity's platform when the connector named
    none), and ``descriptor`` is that platform's current capability descriptor. ``decision``
    is the trust engine's verdict that admitted the message. ``deadline`` is when the turn
    time limit (``turn_timeout_s``) cancels the turn, in trio time (compare it with
    :func:`trio.current_time`), or ``None`` when turns are unlimited. ``request_ids`` names
    this turn's replies after its delivery, so a re-run re-sends under the same
    ``requestId``s (``None``: random ids).
    """

    event: MessageEvent
    session_key: str
    platform: str
    descriptor: CapabilityDescriptor
    decision: Decision
    _replies: Replies = attrs.field(alias="replies", repr=False)
    deadline: float | None = None
    _request_ids: RequestIds | None = attrs.field(default=None, alias="request_ids", repr=False)

    def _next_request_id(self) -> str | None:
        return None if self._request_ids is None else self._request_ids.next()

    @property
    def text(self) -> str:
        """The message text (``""`` for media-only messages)."""
        return self.event.text

    @property
    def source(self) -> SessionSource:
        """Where the message came from (chat, sender, scope)."""
        return self.event.source

    @property
    def chat_id(self) -> str:
        """The chat replies go to."""
        return self.event.source.chat_id

    async def reply(
        self,
        text: str,
        *,
        reply_to: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SendResult:
        """Send ``text`` to the chat, split to the descriptor's ``max_message_length``.

        Returns the last piece's result, or the first piece that failed (later pieces are
        then not sent). A piece queued in the outbox while disconnected counts as sent:
        the rest queue behind it. ``reply_to`` applies to the first piece only.
        """
        replies = self._replies
        platform = self.platform
        chat_id = self.event.source.chat_id
        request_ids = self._request_ids
        descriptor = replies.outbound.descriptor_for(platform)
        result: SendResult | None = None
        for piece in chunk_text(text, descriptor.max_message_length, descriptor.len_unit):
            action = Send(
                chat_id=chat_id,
                content=piece,
                reply_to=reply_to,
                metadata=dict(metadata) if metadata else {},
            )
            reply_to = None  # the first piece only
            result = await replies.send(
                action,
                platform_raw=platform,
                wait_for_room=True,
                request_id=None if request_ids is None else request_ids.next(),
            )
            if not result.success and not result.queued:
                return result
        assert result is not None  # chunk_text gives at least one piece
        return result

    async def edit(self, message_id: str, text: str) -> SendResult:
        """Replace the text of a message sent earlier (fails fast when disconnected)."""
        action = Edit(chat_id=self.chat_id, message_id=message_id, content=text)
        return await self._replies.perform(action, platform_raw=self.platform)

    async def typing(self) -> SendResult:
        """Show a typing indicator in the chat (fails fast when disconnected)."""
        return await self._replies.perform(Typing(chat_id=self.chat_id), platform_raw=self.platform)

    async def follow_up(
        self, kind: str, content: str, metadata: dict[str, Any] | None = None
    ) -> SendResult:
        """Use the connector-held capability of this session (e.g. a Discord interaction)."""
        action = FollowUp(
            session_key=self.session_key, kind=kind, content=content, metadata=dict(metadata or {})
        )
        return await self._replies.send_waiting_for_room(
            action, platform_raw=self.platform, request_id=self._next_request_id()
        )

    async def chat_info(self) -> dict[str, str]:
        """``{name, type}`` of the chat; ``{chat_id, "dm"}`` when unknown or disconnected."""
        info = await self._replies.chat_info(self.chat_id, platform_raw=self.platform)
        return info.to_dict()
