"""Session keys (RC §4.4, R28) and delivery keys (RC §4.6, R29)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import (
    Inbound,
    MessageEvent,
    SessionSource,
    build_session_key,
    message_key,
    session_key,
)
from protocol._codec import decode_line

GROUP = SessionSource(platform="discord", chat_id="chanA", chat_type="group", user_id="userX")

# -- R28: the 11 rows of RC §4.4 -----------------------------------------------------------

ROWS: list[tuple[int, SessionSource, dict[str, bool], str]] = [
    (1, GROUP, {}, "agent:main:discord:group:chanA:userX"),
    (
        2,
        SessionSource(
            platform="discord",
            chat_id="chanA",
            chat_type="thread",
            thread_id="thr9",
            user_id="userX",
        ),
        {},
        "agent:main:discord:thread:chanA:thr9",
    ),
    (
        3,
        SessionSource(platform="telegram", chat_id="12345", chat_type="dm"),
        {},
        "agent:main:telegram:dm:12345",
    ),
    (
        4,
        SessionSource(
            platform="telegram", chat_id="-1007", chat_type="forum", thread_id="42", user_id="u1"
        ),
        {},
        "agent:main:telegram:forum:-1007:42",
    ),
    (
        5,
        SessionSource(platform="signal", chat_type="dm", user_id="+155", user_id_alt="uuid-1"),
        {},
        "agent:main:signal:dm:uuid-1",
    ),
    (
        6,
        SessionSource(platform="telegram", chat_id="g1", chat_type="group"),
        {},
        "agent:main:telegram:group:g1",
    ),
    (
        7,
        SessionSource(
            platform="discord",
            chat_id="chanA",
            chat_type="group",
            user_id="userX",
            profile="ops",
        ),
        {},
        "agent:ops:discord:group:chanA:userX",
    ),
    (
        8,
        SessionSource(platform="agentschat", chat_id="c1", chat_type="dm"),
        {},
        "agent:main:relay:dm:c1",
    ),
    (9, SessionSource(), {}, "agent:main:relay:dm"),
    (10, GROUP, {"group_sessions_per_user": False}, "agent:main:discord:group:chanA"),
    (
        11,
        SessionSource(platform="discord", chat_type="dm", user_id="userX", thread_id="t5"),
        {},
        "agent:main:discord:dm:userX:t5",
    ),
]


@pytest.mark.parametrize(
    ("source", "knobs", "expected"), [r[1:] for r in ROWS], ids=[f"row{r[0]}" for r in ROWS]
)
def test_R28_session_key_table(
    source: SessionSource, knobs: dict[str, bool], expected: str
) -> None:
    assert build_session_key(source, **knobs) == expected
    assert session_key(source, **knobs) == expected


def test_R28_row4_any_forum_user_shares_the_thread_session() -> None:
    u1 = SessionSource(
        platform="telegram", chat_id="-1007", chat_type="forum", thread_id="42", user_id="u1"
    )
    u2 = SessionSource(
        platform="telegram", chat_id="-1007", chat_type="forum", thread_id="42", user_id="u2"
    )
    assert build_session_key(u1) == build_session_key(u2)


def test_R28_thread_sessions_per_user_isolates_thread_participants() -> None:
    source = SessionSource(
        platform="discord", chat_id="chanA", chat_type="thread", thread_id="thr9", user_id="x"
    )
    assert build_session_key(source, thread_sessions_per_user=True) == (
        "agent:main:discord:thread:chanA:thr9:x"
    )


def test_R28_dm_rules_beyond_the_table() -> None:
    dm_chat_thread = SessionSource(platform="slack", chat_id="D1", user_id="U1", thread_id="t")
    assert build_session_key(dm_chat_thread) == "agent:main:slack:dm:D1:t"
    only_thread = SessionSource(platform="slack", thread_id="t")
    assert build_session_key(only_thread) == "agent:main:slack:dm:t"
    # Per-user knobs never change a DM key.
    assert build_session_key(dm_chat_thread, group_sessions_per_user=False) == (
        "agent:main:slack:dm:D1:t"
    )


def test_R28_guild_id_is_not_in_the_key() -> None:
    in_guild = SessionSource(
        platform="discord", chat_id="chanA", chat_type="group", user_id="userX", guild_id="G"
    )
    assert build_session_key(in_guild) == build_session_key(GROUP)


def test_R28_keys_from_the_wire_use_the_key_platform() -> None:
    frame = decode_line(
        json.dumps(
            {
                "type": "inbound",
                "event": {
                    "text": "hi",
                    "source": {
                        "platform": " Discord ",
                        "chat_id": "chanA",
                        "chat_type": "group",
                        "user_id": "userX",
                    },
                },
            }
        )
    )
    assert isinstance(frame, Inbound)
    assert build_session_key(frame.event.source) == "agent:main:discord:group:chanA:userX"


# -- R29: numbers and strings are the same id -------------------------------------------------


def _inbound(source: dict[str, Any], message_id: Any = None) -> MessageEvent:
    event: dict[str, Any] = {"text": "hi", "source": source}
    if message_id is not None:
        event["message_id"] = message_id
    frame = decode_line(json.dumps({"type": "inbound", "event": event}))
    assert isinstance(frame, Inbound), frame
    return frame.event


def test_R29_number_and_string_ids_give_equal_keys() -> None:
    numeric = _inbound(
        {"platform": "telegram", "chat_id": 12345, "chat_type": "group", "user_id": 777},
        message_id=42,
    )
    text = _inbound(
        {"platform": "telegram", "chat_id": "12345", "chat_type": "group", "user_id": "777"},
        message_id="42",
    )
    assert build_session_key(numeric.source) == "agent:main:telegram:group:12345:777"
    assert build_session_key(numeric.source) == build_session_key(text.source)
    assert message_key(numeric) == ("telegram", "12345", "42")
    assert message_key(numeric) == message_key(text)


def test_R29_negative_and_large_numeric_ids() -> None:
    numeric = _inbound({"platform": "telegram", "chat_id": -1001234567890123}, message_id=2**53)
    text = _inbound({"platform": "telegram", "chat_id": "-1001234567890123"}, message_id=str(2**53))
    assert build_session_key(numeric.source) == "agent:main:telegram:dm:-1001234567890123"
    assert message_key(numeric) == message_key(text)


def test_R29_source_message_id_is_the_fallback() -> None:
    event = _inbound({"platform": "discord", "chat_id": 5, "message_id": 99})
    assert message_key(event) == ("discord", "5", "99")
    both = _inbound({"platform": "discord", "chat_id": 5, "message_id": 99}, message_id=7)
    assert message_key(both) == ("discord", "5", "7")


def test_R29_message_key_uses_the_raw_platform() -> None:
    a = MessageEvent(source=SessionSource(platform="agentschat", chat_id="c", message_id="m"))
    b = MessageEvent(source=SessionSource(platform="otherchat", chat_id="c", message_id="m"))
    assert a.source.platform == b.source.platform == "relay"
    assert message_key(a) == ("agentschat", "c", "m")
    assert message_key(a) != message_key(b)


@pytest.mark.parametrize(
    "event",
    [
        MessageEvent(message_id="m", source=SessionSource(platform="discord")),
        MessageEvent(source=SessionSource(platform="discord", chat_id="c")),
        MessageEvent(message_id="", source=SessionSource(platform="discord", chat_id="c")),
        MessageEvent(),
    ],
)
def test_R29_no_message_key_without_both_ids(event: MessageEvent) -> None:
    assert message_key(event) is None
