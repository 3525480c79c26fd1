"""Encoding and decoding of every frame, action and data type (RC §2-§4)."""

from __future__ import annotations

import json
import logging

import pytest

from protocol import (
    CapabilityDescriptor,
    DescriptorFrame,
    Edit,
    FollowUp,
    FrameError,
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
    PassthroughForwardFrame,
    Send,
    SessionSource,
    Typing,
    placeholder_descriptor,
    text_length,
)
from protocol._codec import decode_line, encode_frame, structure, unstructure
from protocol._events import key_platform
from protocol._results import MALFORMED_RESULT, ChatInfo, SendResult

DISCORD = {
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


def descriptor_from(**changes: object) -> CapabilityDescriptor | FrameError:
    body = {**DISCORD, **changes}
    frame = decode_line(json.dumps({"type": "descriptor", "descriptor": body}))
    return frame.descriptor if isinstance(frame, DescriptorFrame) else frame


def test_R1_gateway_frames_match_the_contract_bytes() -> None:
    assert encode_frame(Hello(platform="discord", bot_id="1234")) == (
        '{"type":"hello","platform":"discord","botId":"1234"}\n'
    )
    assert encode_frame(Interrupt(session_key="agent:main:discord:group:c1:u1")) == (
        '{"type":"interrupt","session_key":"agent:main:discord:group:c1:u1","reason":null}\n'
    )
    assert encode_frame(InboundAck(buffer_id="buf-42")) == (
        '{"type":"inbound_ack","bufferId":"buf-42"}\n'
    )
    assert encode_frame(GoingIdle()) == '{"type":"going_idle"}\n'


def test_R1_encoder_is_compact_raw_utf8_and_replaces_lone_surrogates() -> None:
    text = encode_frame(Outbound(request_id="a" * 32, action=Send(chat_id="c", content="héllo 😀")))
    assert text.endswith("\n") and text.count("\n") == 1
    assert "héllo 😀" in text and "\\u" not in text and ": " not in text
    broken = encode_frame(
        Outbound(request_id="a" * 32, action=Send(chat_id="c", content="a\ud800b"))
    )
    assert "a\ufffdb" in broken
    broken.encode("utf-8")  # valid UTF-8 on the wire


def test_R11_interrupt_always_carries_reason() -> None:
    wire = json.loads(encode_frame(Interrupt(session_key="k", reason="user stop")))
    assert list(wire) == ["type", "session_key", "reason"]
    assert wire["reason"] == "user stop"


def test_R14_send_action_keys_and_defaults() -> None:
    wire = unstructure(Send(chat_id="c1", content="hi"))
    assert list(wire) == ["op", "chat_id", "content", "reply_to", "metadata"]
    assert wire["reply_to"] is None and wire["metadata"] == {}


def test_R15_follow_up_has_exactly_five_keys() -> None:
    wire = unstructure(FollowUp(session_key="k", kind="interaction_followup", content="x"))
    assert list(wire) == ["op", "session_key", "kind", "content", "metadata"]
    assert not {"token", "value", "secret", "credential"} & set(wire)


def test_R16_get_chat_info_sends_exactly_op_and_chat_id() -> None:
    assert unstructure(GetChatInfo(chat_id="c9")) == {"op": "get_chat_info", "chat_id": "c9"}
    assert ChatInfo.from_result({"chat_info": {"name": "General", "type": "group"}}, "c9") == (
        ChatInfo("General", "group")
    )
    assert ChatInfo.from_result({"name": "N", "type": "channel"}, "c9") == ChatInfo("N", "channel")
    assert ChatInfo.from_result({"success": False}, "c9") == ChatInfo("c9", "dm")


def test_other_action_shapes() -> None:
    assert list(unstructure(Edit(chat_id="c", message_id="m", content="t"))) == [
        "op",
        "chat_id",
        "message_id",
        "content",
        "metadata",
    ]
    assert unstructure(Typing(chat_id="c")) == {"op": "typing", "chat_id": "c", "metadata": {}}


def test_R3_malformed_lines_give_error_values() -> None:
    for line, reason in [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"event": {}}', 'no string "type"'),
        ('{"type": 7}', 'no string "type"'),
    ]:
        err = decode_line(line)
        assert isinstance(err, FrameError)
        assert err.kind == "malformed"
        assert err.message.startswith("relay: skipping malformed frame (")
        assert reason in err.message


def test_R4_unknown_and_echoed_types_are_ignored_not_errors() -> None:
    err = decode_line('{"type": "brand_new_thing", "x": 1}')
    assert isinstance(err, FrameError) and err.kind == "unknown_type"
    assert err.severity == "debug"
    # A gateway->connector type decodes as what it is; the gateway's reader ignores it.
    assert decode_line('{"type":"hello","platform":"discord","botId":""}') == Hello("discord", "")


def test_known_type_missing_required_field_names_it() -> None:
    err = decode_line('{"type": "outbound_result", "result": {}}')
    assert isinstance(err, FrameError)
    assert err.kind == "bad_field" and err.field == "requestId"
    assert "requestId" in err.message and err.severity == "warning"


def test_R10_outbound_result_defaults() -> None:
    assert decode_line('{"type":"outbound_result","requestId":"r1"}') == OutboundResult("r1", {})
    assert decode_line('{"type":"outbound_result","requestId":"r1","result":null}') == (
        OutboundResult("r1", {})
    )
    odd = decode_line('{"type":"outbound_result","requestId":"r1","result":"yes"}')
    assert odd == OutboundResult("r1", {"success": False, "error": MALFORMED_RESULT})


def test_R21_descriptor_ignores_unknown_keys_and_fills_defaults() -> None:
    d = descriptor_from(brand_new_field=[1, 2], another={"x": 1})
    assert isinstance(d, CapabilityDescriptor)
    assert d.emoji == "\U0001f50c" and d.platform_hint == "" and d.pii_safe is False
    assert d.supports_context is False and d.supported_ops == ()
    assert d.allowed_ops == {"send", "edit", "typing", "follow_up"}


@pytest.mark.parametrize("value", [0, -5, True, "2000", None, 12.5])
def test_R22_unusable_max_message_length_becomes_4096(value: object) -> None:
    d = descriptor_from(max_message_length=value)
    assert isinstance(d, CapabilityDescriptor)
    assert d.max_message_length == 4096


def test_R22_integral_float_is_kept() -> None:
    d = descriptor_from(max_message_length=2000.0)
    assert isinstance(d, CapabilityDescriptor) and d.max_message_length == 2000


def test_R23_length_units() -> None:
    assert text_length("😀", "utf16") == 2
    assert text_length("a", "utf16") == 1
    assert text_length("😀", "chars") == 1
    assert text_length("😀", "bytes") == 1
    assert text_length("\ud800", "utf16") == 1
    d = descriptor_from(len_unit="graphemes")
    assert isinstance(d, CapabilityDescriptor) and d.len_unit == "chars"


def test_R24_code_blocks_follow_the_dialect() -> None:
    for dialect, expected in [
        ("", False),
        ("plain", False),
        ("discord", True),
        ("markdown_v2", True),
    ]:
        d = descriptor_from(markdown_dialect=dialect)
        assert isinstance(d, CapabilityDescriptor)
        assert d.supports_code_blocks is expected


@pytest.mark.parametrize(
    "changes",
    [
        {"platform": None},
        {"label": 5},
        {"len_unit": None},
        {"supports_edit": None},
        {"contract_version": 0},
        {"contract_version": "1"},
    ],
)
def test_R25_descriptor_missing_required_key_is_invalid(changes: dict[str, object]) -> None:
    err = descriptor_from(**changes)
    assert isinstance(err, FrameError)
    assert err.kind == "invalid_descriptor" and err.frame_type == "descriptor"
    assert err.field is not None and err.field.startswith("descriptor.")


def test_R25_descriptor_with_absent_key_is_invalid() -> None:
    body = {k: v for k, v in DISCORD.items() if k != "max_message_length"}
    err = decode_line(json.dumps({"type": "descriptor", "descriptor": body}))
    assert isinstance(err, FrameError) and err.field == "descriptor.max_message_length"


def test_descriptor_soft_rules(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "relay.protocol"):
        d = descriptor_from(supports_threads="yes", contract_version=2, supported_ops=["typing"])
    assert isinstance(d, CapabilityDescriptor)
    assert d.supports_threads is False and d.contract_version == 2
    assert d.allowed_ops == {"send", "typing"}
    assert d.allows("typing") and not d.allows("edit") and not d.allows("get_chat_info")
    assert "supports_threads" in caplog.text and "contract_version" in caplog.text
    no_edit = descriptor_from(supports_edit=False)
    assert isinstance(no_edit, CapabilityDescriptor) and not no_edit.allows("edit")


def test_placeholder_descriptor() -> None:
    p = placeholder_descriptor("telegram")
    assert (p.contract_version, p.platform, p.label, p.max_message_length) == (
        1,
        "telegram",
        "Relay",
        4096,
    )
    assert (p.supports_draft_streaming, p.supports_edit, p.supports_threads) == (False, True, False)
    assert (p.markdown_dialect, p.len_unit) == ("plain", "chars")


def test_R26_event_reader_defaults() -> None:
    frame = decode_line('{"type":"inbound"}')
    assert isinstance(frame, Inbound)
    e = frame.event
    assert (e.text, e.message_type, e.message_id, e.media_urls) == ("", "text", None, ())
    assert e.source == SessionSource()
    assert e.source.platform == "relay" and e.source.chat_type == "dm" and e.source.chat_id == ""
    assert e.delivered_via_relay is True
    odd = decode_line(
        json.dumps(
            {
                "type": "inbound",
                "event": {
                    "text": "x",
                    "message_type": "hologram",
                    "media_urls": ["u1", 5, None, "u2"],
                    "source": {"platform": " AgentsChat ", "chat_id": "c1", "scope_id": "s1"},
                    "context": [{"ignored": True}],
                },
                "bufferId": "",
            }
        )
    )
    assert isinstance(odd, Inbound)
    assert odd.buffer_id is None
    assert odd.event.message_type == "text" and odd.event.media_urls == ("u1", "u2")
    assert odd.event.source.platform_raw == "agentschat"
    assert odd.event.source.platform == "relay"
    assert odd.event.source.guild_id == "s1"


def test_R26_guild_id_wins_over_scope_id_and_is_bot_is_ignored() -> None:
    src = structure({"guild_id": "g", "scope_id": "s", "is_bot": True}, SessionSource)
    assert src.guild_id == "g" and src.is_bot is False


def test_R27_to_wire_keys() -> None:
    bare = unstructure(SessionSource(platform="discord", chat_id="c", is_bot=True))
    assert list(bare) == [
        "platform",
        "chat_id",
        "chat_name",
        "chat_type",
        "user_id",
        "user_name",
        "thread_id",
        "chat_topic",
    ]
    full = unstructure(
        SessionSource(
            platform="signal",
            chat_id="c",
            user_id_alt="uuid",
            chat_id_alt="alt",
            guild_id="g",
            parent_chat_id="p",
            message_id="m",
            profile="ops",
            is_bot=True,
        )
    )
    assert list(full)[8:] == [
        "user_id_alt",
        "chat_id_alt",
        "guild_id",
        "parent_chat_id",
        "message_id",
        "profile",
    ]
    assert "is_bot" not in full
    empty = unstructure(SessionSource(guild_id="", profile=""))
    assert "guild_id" not in empty and "profile" not in empty
    assert list(unstructure(MessageEvent())) == [
        "text",
        "message_type",
        "source",
        "message_id",
        "reply_to_message_id",
        "media_urls",
    ]


def test_R29_numbers_in_text_fields_read_as_decimal_text(caplog: pytest.LogCaptureFixture) -> None:
    a = structure({"chat_id": 12345, "user_id": 7}, SessionSource)
    b = structure({"chat_id": "12345", "user_id": "7"}, SessionSource)
    assert a == b
    with caplog.at_level(logging.WARNING, "relay.protocol"):
        c = structure({"chat_id": True, "user_id": ["x"]}, SessionSource)
    assert c.chat_id == "" and c.user_id is None
    assert "source.chat_id" in caplog.text and "source.user_id" in caplog.text


def test_inbound_event_that_is_not_an_object_is_a_bad_field() -> None:
    err = decode_line('{"type":"inbound","event":"hello"}')
    assert isinstance(err, FrameError) and err.kind == "bad_field" and err.field == "event"


def test_connector_frames_decode() -> None:
    assert decode_line('{"type":"going_idle_ack"}') == GoingIdleAck()
    assert decode_line('{"type":"interrupt_inbound"}') == InterruptInbound("", "")
    assert decode_line('{"type":"interrupt_inbound","session_key":"k","chat_id":3}') == (
        InterruptInbound("k", "3")
    )
    fwd = decode_line(
        '{"type":"passthrough_forward","bufferId":"b7","forward":{"platform":"Discord",'
        '"botId":"42","method":"POST","path":"/i","headers":[["a","1"],["b",2],["bad"],[1,[2]]],'
        '"bodyB64":"eyJ0eXBlIjogMn0="}}'
    )
    assert isinstance(fwd, PassthroughForwardFrame)
    assert fwd.buffer_id == "b7"
    f = fwd.forward
    assert (f.platform, f.bot_id, f.method, f.path) == ("discord", "42", "POST", "/i")
    assert f.headers == (("a", "1"), ("b", "2"))
    assert f.body == b'{"type": 2}'
    garbled = decode_line(
        '{"type":"passthrough_forward","forward":{"platform":"discord","bodyB64":"!!!not base64!!!"}}'
    )
    assert isinstance(garbled, PassthroughForwardFrame) and garbled.forward.body == b""


def test_gateway_frames_decode_for_the_connector_side() -> None:
    out = decode_line(
        '{"type":"outbound","requestId":"' + "f" * 32 + '","platform":"telegram","botId":"9",'
        '"action":{"op":"follow_up","session_key":"k","kind":"deferred","content":"c"}}'
    )
    assert out == Outbound(
        request_id="f" * 32,
        action=FollowUp(session_key="k", kind="deferred", content="c"),
        platform="telegram",
        bot_id="9",
    )
    bad_op = decode_line('{"type":"outbound","requestId":"r","action":{"op":"teleport"}}')
    assert isinstance(bad_op, FrameError) and bad_op.field == "action.op"
    assert "teleport" in bad_op.message
    assert decode_line('{"type":"inbound_ack","bufferId":42}') == InboundAck("42")


def test_outbound_tagging_shapes() -> None:
    untagged = json.loads(encode_frame(Outbound(request_id="r", action=Typing(chat_id="c"))))
    assert "platform" not in untagged and "botId" not in untagged
    tagged = json.loads(
        encode_frame(
            Outbound(request_id="r", action=Typing(chat_id="c"), platform="telegram", bot_id="7")
        )
    )
    assert (tagged["platform"], tagged["botId"]) == ("telegram", "7")
    no_bot = json.loads(
        encode_frame(Outbound(request_id="r", action=Typing(chat_id="c"), platform="discord"))
    )
    assert no_bot["platform"] == "discord" and "botId" not in no_bot


def test_send_result_from_wire() -> None:
    ok = SendResult.from_wire({"success": 1, "message_id": 99})
    assert ok.success is True and ok.message_id == "99" and ok.error_kind is None
    declined = SendResult.from_wire(
        {"success": False, "code": "egress_declined", "retryable": True}
    )
    assert declined.error_kind == "egress_declined" and declined.retryable is False
    by_text = SendResult.from_wire({"success": False, "error": "egress declined: not routed"})
    assert by_text.error_kind == "egress_declined"
    local = SendResult.failure("relay transport closed", retryable=True)
    assert local.raw == {"success": False, "error": "relay transport closed", "retryable": True}


def test_every_frame_round_trips_through_the_codec() -> None:
    event = MessageEvent(
        text="hi",
        source=SessionSource(platform="discord", chat_id="c", user_id="u", guild_id="g"),
        message_id="m1",
        delivered_via_relay=True,
    )
    frames = [
        Hello("discord", "1"),
        Outbound(request_id="0" * 32, action=Send(chat_id="c", content="x", metadata={"a": 1})),
        Interrupt("k", None),
        GoingIdle(),
        InboundAck("b"),
        DescriptorFrame(placeholder_descriptor("relay")),
        Inbound(event, "b1"),
        OutboundResult("r", {"success": True}),
        InterruptInbound("k", "c"),
        GoingIdleAck(),
    ]
    for frame in frames:
        assert decode_line(encode_frame(frame).rstrip("\n")) == frame


def test_key_platform() -> None:
    assert key_platform("discord") == "discord"
    assert key_platform("agentschat") == "relay"
    assert key_platform("") == "relay"
