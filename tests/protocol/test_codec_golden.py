"""The codec's wire bytes and decoded values, pinned against goldens (issue 14).

``codec_golden.json`` was captured from the hand-written codec before it was replaced by
cattrs-generated functions; the generated codec must give byte-identical wire text for every
frame type (with and without its optional fields, empty strings in truthy-only fields, odd
text), the same decoded value for every odd wire line, and the same soft-problem lines (in
any order within one frame).

Regenerate (only when the wire contract changes on purpose)::

    python tests/protocol/test_codec_golden.py > tests/protocol/codec_golden.json
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    CapabilityDescriptor,
    DescriptorFrame,
    Edit,
    FollowUp,
    Frame,
    GetChatInfo,
    GoingIdle,
    GoingIdleAck,
    Hello,
    Inbound,
    InboundAck,
    Interrupt,
    InterruptInbound,
    MessageEvent,
    Outbound,
    OutboundResult,
    PassthroughForward,
    PassthroughForwardFrame,
    Send,
    SessionSource,
    Typing,
    placeholder_descriptor,
)
from protocol._codec import decode_line, encode_frame

GOLDEN = Path(__file__).with_name("codec_golden.json")

FULL_SOURCE = SessionSource(
    platform="signal",
    chat_id="c1",
    chat_name="Ops",
    chat_type="group",
    user_id="u1",
    user_name="ann",
    thread_id="t1",
    chat_topic="topic",
    user_id_alt="uuid-1",
    chat_id_alt="alt-1",
    guild_id="g1",
    parent_chat_id="p1",
    message_id="m1",
    profile="ops",
    is_bot=True,
)
FULL_DESCRIPTOR = CapabilityDescriptor(
    contract_version=1,
    platform="discord",
    label="Discord",
    max_message_length=2000,
    supports_draft_streaming=True,
    supports_edit=True,
    supports_threads=True,
    markdown_dialect="discord",
    len_unit="utf16",
    emoji="x",
    platform_hint="hint",
    pii_safe=True,
    supports_context=True,
    supports_inchannel_continuable=True,
    supports_block_formatting=True,
    supported_ops=("send", "typing"),
)

ENCODE: dict[str, Frame] = {
    "hello": Hello("discord", "1234"),
    "hello_bare": Hello("telegram"),
    "outbound_send": Outbound("a" * 32, Send("c", "hé 😀", "r1", {"k": [1, 2.5, None]})),
    "outbound_send_bare": Outbound("b" * 32, Send("c", "")),
    "outbound_surrogate": Outbound("c" * 32, Send("c", "a\ud800b")),
    "outbound_edit": Outbound("r", Edit("c", "m", "new", {"x": True})),
    "outbound_typing": Outbound("r", Typing("c")),
    "outbound_follow_up": Outbound("r", FollowUp("k", "deferred", "c", {"a": "b"})),
    "outbound_chat_info": Outbound("r", GetChatInfo("c9")),
    "outbound_tagged": Outbound("r", Typing("c"), platform="telegram", bot_id="7"),
    "outbound_tagged_no_bot": Outbound("r", Typing("c"), platform="discord"),
    "outbound_tagged_empty_bot": Outbound("r", Typing("c"), platform="discord", bot_id=""),
    "outbound_tagged_empty_platform": Outbound("r", Typing("c"), platform="", bot_id="7"),
    "outbound_bot_without_platform": Outbound("r", Typing("c"), bot_id="7"),
    "interrupt": Interrupt("agent:main:discord:group:c1:u1", "user stop"),
    "interrupt_bare": Interrupt("k"),
    "going_idle": GoingIdle(),
    "inbound_ack": InboundAck("buf-42"),
    "descriptor_full": DescriptorFrame(FULL_DESCRIPTOR),
    "descriptor_placeholder": DescriptorFrame(placeholder_descriptor("relay")),
    "inbound_full": Inbound(
        MessageEvent("hi", "photo", FULL_SOURCE, "m1", "m0", ("u1", "u2"), True), "buf-1"
    ),
    "inbound_bare": Inbound(MessageEvent()),
    "inbound_empty_buffer_id": Inbound(MessageEvent(text="x"), ""),
    "inbound_empty_truthy_source": Inbound(
        MessageEvent(
            source=SessionSource(
                user_id_alt="",
                chat_id_alt="",
                guild_id="",
                parent_chat_id="",
                message_id="",
                profile="",
            )
        )
    ),
    "inbound_unicode": Inbound(
        MessageEvent(text='\u2028 \x00 "q" \\ \ud83d', source=SessionSource(platform="Ünï"))
    ),
    "outbound_result": OutboundResult("r", {"success": True, "message_id": "9", "f": 1.5}),
    "outbound_result_bare": OutboundResult("r"),
    "interrupt_inbound": InterruptInbound("k", "c"),
    "interrupt_inbound_bare": InterruptInbound(),
    "forward_full": PassthroughForwardFrame(
        PassthroughForward(
            "discord", "42", "POST", "/i", (("a", "1"), ("b", "2")), b"\x00\xff{}", "ops"
        ),
        "b7",
    ),
    "forward_bare": PassthroughForwardFrame(PassthroughForward()),
    "forward_empty_profile": PassthroughForwardFrame(PassthroughForward(profile=""), ""),
    "going_idle_ack": GoingIdleAck(),
}

_SOURCE = {
    "platform": " Discord ",
    "chat_id": 123,
    "chat_name": None,
    "chat_type": "",
    "user_id": 4.5,
    "user_name": True,
    "thread_id": ["t"],
    "chat_topic": {"x": 1},
    "user_id_alt": "",
    "chat_id_alt": 0,
    "scope_id": "s1",
    "parent_chat_id": False,
    "message_id": 7,
    "profile": "p",
    "is_bot": True,
    "extra": 1,
}
_DESCRIPTOR: dict[str, Any] = {
    "contract_version": 1,
    "platform": "discord",
    "label": "Discord",
    "max_message_length": 2000,
    "supports_draft_streaming": False,
    "supports_edit": True,
    "supports_threads": True,
    "markdown_dialect": "discord",
    "len_unit": "chars",
}

DECODE: dict[str, Any] = {
    "hello": {"type": "hello", "platform": "discord", "botId": "1"},
    "hello_numbers": {"type": "hello", "platform": 5, "botId": 6.0},
    "hello_no_platform": {"type": "hello", "botId": "1"},
    "hello_bad_bot": {"type": "hello", "platform": "x", "botId": [1]},
    "outbound": {
        "type": "outbound",
        "requestId": "r",
        "platform": "telegram",
        "botId": "",
        "action": {"op": "send", "chat_id": 5, "content": None, "reply_to": 3, "metadata": []},
    },
    "outbound_edit": {
        "type": "outbound",
        "requestId": "r",
        "action": {
            "op": "edit",
            "chat_id": "c",
            "message_id": "m",
            "content": "t",
            "metadata": {"a": 1},
        },
    },
    "outbound_edit_missing": {
        "type": "outbound",
        "requestId": "r",
        "action": {"op": "edit", "chat_id": "c"},
    },
    "outbound_typing": {
        "type": "outbound",
        "requestId": "r",
        "action": {"op": "typing", "chat_id": "c", "metadata": 5},
    },
    "outbound_follow_up": {
        "type": "outbound",
        "requestId": "r",
        "action": {"op": "follow_up", "session_key": "k", "kind": "x"},
    },
    "outbound_chat_info": {
        "type": "outbound",
        "requestId": "r",
        "action": {"op": "get_chat_info", "chat_id": "c", "metadata": {}},
    },
    "outbound_no_action": {"type": "outbound", "requestId": "r"},
    "outbound_action_list": {"type": "outbound", "requestId": "r", "action": [1]},
    "outbound_action_no_op": {"type": "outbound", "requestId": "r", "action": {"chat_id": "c"}},
    "outbound_bad_op": {"type": "outbound", "requestId": "r", "action": {"op": "teleport"}},
    "outbound_no_request_id": {"type": "outbound", "action": {"op": "typing", "chat_id": "c"}},
    "outbound_bool_request_id": {
        "type": "outbound",
        "requestId": True,
        "action": {"op": "typing", "chat_id": "c"},
    },
    "interrupt": {"type": "interrupt", "session_key": "k", "reason": 3},
    "interrupt_missing": {"type": "interrupt"},
    "going_idle": {"type": "going_idle", "x": 1},
    "inbound_ack": {"type": "inbound_ack", "bufferId": 42},
    "inbound_ack_missing": {"type": "inbound_ack", "bufferId": None},
    "descriptor": {"type": "descriptor", "descriptor": _DESCRIPTOR},
    "descriptor_soft": {
        "type": "descriptor",
        "descriptor": {
            **_DESCRIPTOR,
            "contract_version": 3.0,
            "supports_threads": "yes",
            "pii_safe": 1,
            "supported_ops": "send",
            "emoji": 5,
            "platform_hint": "h",
            "len_unit": "graphemes",
            "max_message_length": 12.5,
        },
    },
    "descriptor_ops": {
        "type": "descriptor",
        "descriptor": {**_DESCRIPTOR, "supported_ops": ["a", 1, None], "max_message_length": 300.0},
    },
    "descriptor_missing_max": {
        "type": "descriptor",
        "descriptor": {k: v for k, v in _DESCRIPTOR.items() if k != "max_message_length"},
    },
    "descriptor_missing_flag": {
        "type": "descriptor",
        "descriptor": {**_DESCRIPTOR, "supports_edit": None},
    },
    "descriptor_bad_label": {"type": "descriptor", "descriptor": {**_DESCRIPTOR, "label": 5}},
    "descriptor_version_text": {
        "type": "descriptor",
        "descriptor": {**_DESCRIPTOR, "contract_version": "1"},
    },
    "descriptor_version_zero": {
        "type": "descriptor",
        "descriptor": {**_DESCRIPTOR, "contract_version": 0},
    },
    "descriptor_no_version": {
        "type": "descriptor",
        "descriptor": {k: v for k, v in _DESCRIPTOR.items() if k != "contract_version"},
    },
    "descriptor_not_object": {"type": "descriptor", "descriptor": None},
    "descriptor_missing": {"type": "descriptor"},
    "inbound_typical": {
        "type": "inbound",
        "event": {
            "text": "can you summarise this thread?",
            "message_type": "text",
            "source": {
                "platform": "discord",
                "chat_id": "1187254117388431412",
                "chat_name": None,
                "chat_type": "group",
                "user_id": "310998876231254016",
                "user_name": "xavier",
                "thread_id": None,
                "chat_topic": None,
                "guild_id": "1187254116490846218",
            },
            "message_id": "1250931806215409754",
            "reply_to_message_id": None,
            "media_urls": [],
        },
    },
    "inbound_text_fast_path_extras": {
        "type": "inbound",
        "bufferId": "b1",
        "event": {
            "text": "x",
            "message_type": "hologram",
            "media_urls": ["u1", 5, None, "u2"],
            "source": {
                "platform": " AgentsChat ",
                "chat_id": "c1",
                "scope_id": "s1",
                "user_id_alt": "",
                "profile": "p",
            },
            "context": [{"ignored": True}],
        },
    },
    "inbound_odd_source": {
        "type": "inbound",
        "event": {
            "text": 5,
            "message_id": 9,
            "reply_to_message_id": [1],
            "media_urls": "u",
            "message_type": 3,
            "source": _SOURCE,
        },
    },
    "inbound_source_not_object": {"type": "inbound", "event": {"text": "x", "source": "s"}},
    "inbound_source_empty": {
        "type": "inbound",
        "event": {"text": "x", "source": {}},
        "bufferId": "",
    },
    "inbound_buffer_number": {"type": "inbound", "event": {"text": "x"}, "bufferId": 0},
    "inbound_buffer_bad": {"type": "inbound", "event": {"text": "x"}, "bufferId": {"a": 1}},
    "inbound_event_text": {"type": "inbound", "event": "hello"},
    "inbound_event_null": {"type": "inbound", "event": None},
    "inbound_bare": {"type": "inbound"},
    "outbound_result": {"type": "outbound_result", "requestId": "r", "result": {"success": True}},
    "outbound_result_odd": {"type": "outbound_result", "requestId": 7, "result": "yes"},
    "outbound_result_null": {"type": "outbound_result", "requestId": "r", "result": None},
    "outbound_result_missing": {"type": "outbound_result", "result": {}},
    "interrupt_inbound": {"type": "interrupt_inbound", "session_key": "k", "chat_id": 3},
    "interrupt_inbound_odd": {"type": "interrupt_inbound", "session_key": False, "chat_id": None},
    "forward": {
        "type": "passthrough_forward",
        "bufferId": "b7",
        "forward": {
            "platform": " Discord",
            "botId": 42,
            "method": "POST",
            "path": "/i",
            "headers": [["a", "1"], ["b", 2], ["bad"], [1, [2]], [True, "x"], "ab"],
            "bodyB64": "eyJ0eXBlIjogMn0=",
            "profile": "",
        },
    },
    "forward_bad_body": {
        "type": "passthrough_forward",
        "forward": {"platform": "discord", "bodyB64": "!!!", "headers": {"a": 1}, "method": [1]},
    },
    "forward_missing": {"type": "passthrough_forward"},
    "forward_not_object": {"type": "passthrough_forward", "forward": []},
    "going_idle_ack": {"type": "going_idle_ack"},
    "unknown": {"type": "brand_new"},
    "no_type": {"event": {}},
    "not_object": [1, 2],
}


def encode_corpus() -> dict[str, str]:
    return {name: encode_frame(frame) for name, frame in ENCODE.items()}


def decode_corpus() -> dict[str, dict[str, Any]]:
    return {name: decode_corpus_one(name) for name in DECODE}


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("name", sorted(ENCODE))
def test_encoded_bytes_match_the_golden(name: str, golden: dict[str, Any]) -> None:
    assert encode_frame(ENCODE[name]).encode("utf-8") == golden["encode"][name].encode("utf-8")


def test_the_encode_corpus_covers_every_frame_type() -> None:
    from protocol._frames import FRAME_TYPES

    assert {type(f) for f in ENCODE.values()} == set(FRAME_TYPES.values())


def test_the_golden_holds_every_corpus_entry(golden: dict[str, Any]) -> None:
    assert set(golden["encode"]) == set(ENCODE) and set(golden["decode"]) == set(DECODE)


@pytest.mark.parametrize("name", sorted(DECODE))
def test_decoded_values_and_soft_problems_match_the_golden(
    name: str, golden: dict[str, Any]
) -> None:
    got, want = decode_corpus_one(name), golden["decode"][name]
    assert got["result"] == want["result"]
    # The lines, not their order: the generated reader visits fields in class order, the
    # hand-written one visited the descriptor's text fields before its flags.
    assert sorted(got["logged"]) == sorted(want["logged"])


def decode_corpus_one(name: str) -> dict[str, Any]:
    """One line's decoded value (its repr) and the soft-problem lines logged on the way."""
    logger = logging.getLogger("relay.protocol")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        result = decode_line(json.dumps(DECODE[name]))
    finally:
        logger.removeHandler(handler)
    return {"result": repr(result), "logged": records}


if __name__ == "__main__":
    print(
        json.dumps(
            {"encode": encode_corpus(), "decode": decode_corpus()}, indent=1, ensure_ascii=True
        )
    )
