"""Outbound actions: what the gateway asks the connector to do on a platform (RC §3.3)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

#: A JSON object as it travels in ``metadata`` (values are whatever JSON allows).
JSONObject = dict[str, Any]


@attrs.frozen
class Send:
    """Post ``content`` to a chat, optionally as a reply."""

    OP: ClassVar[str] = "send"
    chat_id: str
    content: str
    reply_to: str | None = None
    metadata: JSONObject = attrs.field(factory=dict, hash=False)


@attrs.frozen
class Edit:
    """Replace the text of a message the gateway sent earlier."""

    OP: ClassVar[str] = "edit"
    chat_id: str
    message_id: str
    content: str
    metadata: JSONObject = attrs.field(factory=dict, hash=False)


@attrs.frozen
class Typing:
    """Show a typing indicator in a chat."""

    OP: ClassVar[str] = "typing"
    chat_id: str
    metadata: JSONObject = attrs.field(factory=dict, hash=False)


@attrs.frozen
class FollowUp:
    """Act on a shared-identity capability the connector holds for a session.

    The capability itself (e.g. a Discord interaction token) never leaves the connector; the
    gateway names the session and the kind of follow-up, nothing more.
    """

    OP: ClassVar[str] = "follow_up"
    session_key: str
    kind: str
    content: str
    metadata: JSONObject = attrs.field(factory=dict, hash=False)


@attrs.frozen
class GetChatInfo:
    """Ask for a chat's name and type."""

    OP: ClassVar[str] = "get_chat_info"
    chat_id: str


Action = Send | Edit | Typing | FollowUp | GetChatInfo

ACTION_TYPES: dict[str, type[Action]] = {
    cls.OP: cls for cls in (Send, Edit, Typing, FollowUp, GetChatInfo)
}
