"""The normalized inbound message (RC §4.2, §4.3) and the gateway's platform identities."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

#: Platforms hermes knows by name; any other platform's session keys use ``relay`` (RC §4.3).
BUILTIN_PLATFORMS: frozenset[str] = frozenset(
    {
        "local",
        "telegram",
        "discord",
        "whatsapp",
        "whatsapp_cloud",
        "slack",
        "signal",
        "mattermost",
        "matrix",
        "homeassistant",
        "email",
        "sms",
        "dingtalk",
        "api_server",
        "webhook",
        "msgraph_webhook",
        "feishu",
        "wecom",
        "wecom_callback",
        "weixin",
        "bluebubbles",
        "qqbot",
        "yuanbao",
        "relay",
    }
)

#: ``message_type`` values of v1; anything else reads as ``text``.
MESSAGE_TYPES: frozenset[str] = frozenset(
    {"text", "location", "photo", "video", "audio", "voice", "document", "sticker", "command"}
)

#: ``chat_type`` values of v1 (others are carried through unchanged).
CHAT_TYPES: tuple[str, ...] = ("dm", "group", "channel", "thread", "forum")


def absent_if_empty(value: str | None) -> str | None:
    """For optional text that only counts when non-empty: ``""`` is stored as ``None``."""
    return value or None


def key_platform(platform_raw: str) -> str:
    """The platform name used in session keys: a hermes built-in, else ``relay``."""
    return platform_raw if platform_raw in BUILTIN_PLATFORMS else "relay"


@attrs.frozen
class Identity:
    """One platform identity the gateway fronts: a ``hello`` names it, tagging targets it."""

    platform: str
    bot_id: str = ""


def find_identity(identities: Sequence[Identity], platform: str | None) -> Identity | None:
    """The identity of ``identities`` that fronts ``platform``, or ``None`` (RC §3.1).

    The one platform -> identity resolution: the connection asks it for descriptors and
    hellos, the outbound owner for tagging and reply lanes. ``""`` and ``None`` match none.
    """
    if not platform:
        return None
    for identity in identities:
        if identity.platform == platform:
            return identity
    return None


@attrs.frozen
class SessionSource:
    """Where a message came from: the chat, the sender, and the scope (RC §4.3).

    ``platform_raw`` is the platform exactly as the connector named it (stripped and
    lower-cased by the reader; ``""`` when absent); it is also accepted as ``platform=`` in
    the constructor. :attr:`platform` is the *key platform* used for session keys.
    ``is_bot`` is local: it is never emitted and is ignored when received. The optional ids
    from ``user_id_alt`` on count only when non-empty, so ``""`` is stored as ``None``.
    """

    platform_raw: str = attrs.field(default="", alias="platform")
    chat_id: str = ""
    chat_name: str | None = None
    chat_type: str = "dm"
    user_id: str | None = None
    user_name: str | None = None
    thread_id: str | None = None
    chat_topic: str | None = None
    user_id_alt: str | None = attrs.field(default=None, converter=absent_if_empty)
    chat_id_alt: str | None = attrs.field(default=None, converter=absent_if_empty)
    guild_id: str | None = attrs.field(default=None, converter=absent_if_empty)
    parent_chat_id: str | None = attrs.field(default=None, converter=absent_if_empty)
    message_id: str | None = attrs.field(default=None, converter=absent_if_empty)
    profile: str | None = attrs.field(default=None, converter=absent_if_empty)
    is_bot: bool = False

    @property
    def platform(self) -> str:
        """The key platform: ``platform_raw`` if hermes knows it, else ``relay``."""
        return key_platform(self.platform_raw)

    @property
    def participant(self) -> str | None:
        """The preferred participant id: ``user_id_alt`` when set, else ``user_id``."""
        return self.user_id_alt or self.user_id


@attrs.frozen
class MessageEvent:
    """One normalized inbound message (the ``event`` of an ``inbound`` frame).

    ``delivered_via_relay`` is stamped by the frame reader for events that arrived on the
    authenticated connector socket; no wire field can set it, and the trust engine denies
    events without it.
    """

    text: str = ""
    message_type: str = "text"
    source: SessionSource = SessionSource()
    message_id: str | None = None
    reply_to_message_id: str | None = None
    media_urls: tuple[str, ...] = ()
    delivered_via_relay: bool = False

    @property
    def delivery_message_id(self) -> str | None:
        """The message id used for replay dedupe: the event's, else the source's."""
        return self.message_id or self.source.message_id
