"""Session keys and delivery keys (RC §4.4, §4.6).

The session key names the conversation a message belongs to; the connector computes the
same key (it binds vault capabilities and routes ``interrupt_inbound`` by it), so the rule
here is fixed and must not drift. The delivery key ``K_msg`` identifies one platform message
for replay dedupe.
"""

from __future__ import annotations

from protocol._events import MessageEvent, SessionSource

#: ``K_msg``: (raw platform, chat id, message id) of one delivered platform message.
MessageKey = tuple[str, str, str]


def build_session_key(
    source: SessionSource,
    *,
    group_sessions_per_user: bool = True,
    thread_sessions_per_user: bool = False,
) -> str:
    """The session key of ``source`` (RC §4.4), e.g. ``agent:main:discord:group:chanA:userX``.

    DMs are keyed by chat (else participant, else thread); other chats by chat and thread,
    plus the participant when groups are per user and the message is not in a shared thread.
    Ids are used exactly as given; ``guild_id`` is not part of the key.
    """
    ns = f"agent:{source.profile}" if source.profile else "agent:main"
    platform = source.platform
    participant = source.participant
    thread_id = source.thread_id
    # The reader maps an absent or empty chat_type to "dm"; a hand-built source may not.
    chat_type = source.chat_type or "dm"

    if chat_type == "dm":
        if source.chat_id or participant:
            key = f"{ns}:{platform}:dm:{source.chat_id or participant}"
            return f"{key}:{thread_id}" if thread_id else key
        if thread_id:
            return f"{ns}:{platform}:dm:{thread_id}"
        return f"{ns}:{platform}:dm"

    parts = [ns, platform, chat_type]
    if source.chat_id:
        parts.append(source.chat_id)
    if thread_id:
        parts.append(thread_id)
    isolate = group_sessions_per_user and not (thread_id and not thread_sessions_per_user)
    if isolate and participant:
        parts.append(participant)
    return ":".join(parts)


session_key = build_session_key


def message_key(event: MessageEvent) -> MessageKey | None:
    """``K_msg`` of ``event`` (RC §4.6), or None when its chat id or message id is empty.

    The message id is the event's, else the source's; the platform is the raw one, so two
    relay-keyed platforms never share a key.
    """
    chat_id = event.source.chat_id
    message_id = event.message_id or event.source.message_id
    if not chat_id or not message_id:
        return None
    return (event.source.platform_raw, chat_id, message_id)
