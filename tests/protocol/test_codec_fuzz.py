"""Structure-aware fuzzing of the decoder: every known key with arbitrary JSON values.

Random text almost never forms a known frame with a wrong-typed field; these strategies do,
which is where a decoder is most likely to raise (R3, R7).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import FrameDecoder, FrameError, decode_object
from protocol._frames import FRAME_TYPES, GoingIdleAck

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)

SOURCE_KEYS = [
    "platform",
    "chat_id",
    "chat_name",
    "chat_type",
    "user_id",
    "user_name",
    "thread_id",
    "chat_topic",
    "user_id_alt",
    "chat_id_alt",
    "guild_id",
    "scope_id",
    "parent_chat_id",
    "message_id",
    "profile",
    "is_bot",
]
EVENT_KEYS = ["text", "message_type", "message_id", "reply_to_message_id", "media_urls"]
DESCRIPTOR_KEYS = [
    "contract_version",
    "platform",
    "label",
    "max_message_length",
    "supports_draft_streaming",
    "supports_edit",
    "supports_threads",
    "markdown_dialect",
    "len_unit",
    "emoji",
    "platform_hint",
    "pii_safe",
    "supported_ops",
]
ACTION_KEYS = [
    "op",
    "chat_id",
    "content",
    "reply_to",
    "metadata",
    "message_id",
    "session_key",
    "kind",
]
FORWARD_KEYS = ["platform", "botId", "method", "path", "headers", "bodyB64", "profile"]
FRAME_KEYS = [
    "requestId",
    "bufferId",
    "result",
    "session_key",
    "chat_id",
    "reason",
    "platform",
    "botId",
]


def shaped(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys))


@st.composite
def known_frames(draw: st.DrawFn) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": draw(st.sampled_from(sorted(FRAME_TYPES)))}
    frame.update(draw(shaped(FRAME_KEYS)))
    event = draw(shaped(EVENT_KEYS))
    event["source"] = draw(shaped(SOURCE_KEYS) | json_values)
    frame["event"] = draw(st.just(event) | json_values)
    frame["descriptor"] = draw(shaped(DESCRIPTOR_KEYS) | json_values)
    frame["action"] = draw(shaped(ACTION_KEYS) | json_values)
    frame["forward"] = draw(shaped(FORWARD_KEYS) | json_values)
    return frame


@settings(max_examples=300, deadline=None)
@given(known_frames())
def test_R7_known_frames_with_arbitrary_field_values_never_raise(frame: dict[str, Any]) -> None:
    result = decode_object(frame)
    assert isinstance(result, FrameError) or frame["type"] == type(result).TYPE


@settings(max_examples=100, deadline=None)
@given(known_frames())
def test_R7_the_next_frame_is_processed_after_any_known_frame(frame: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    out = decoder.feed_text(json.dumps(frame) + '\n{"type":"going_idle_ack"}\n')
    assert out[-1] == GoingIdleAck()


def test_R7_message_type_that_is_not_text_reads_as_text() -> None:
    for odd in ([], {}, 5, True):
        result = decode_object({"type": "inbound", "event": {"text": "hi", "message_type": odd}})
        assert not isinstance(result, FrameError)
        assert result.event.message_type == "text"  # type: ignore[union-attr]
