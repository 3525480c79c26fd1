"""Passthrough forwards: wire decoding (R30) and the Discord mapping (R68, R69, R71)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from protocol import (
    MessageEvent,
    PassthroughError,
    PassthroughForward,
    PassthroughForwardFrame,
    build_session_key,
    decode_forward,
    discord_interaction_event,
    message_key,
)
from protocol._codec import decode_line


def forward_frame(forward: dict[str, Any], **extra: Any) -> PassthroughForwardFrame:
    frame = decode_line(json.dumps({"type": "passthrough_forward", "forward": forward, **extra}))
    assert isinstance(frame, PassthroughForwardFrame), frame
    return frame


def discord(interaction: Any, **fields: Any) -> PassthroughForward:
    body = interaction if isinstance(interaction, bytes) else json.dumps(interaction).encode()
    return PassthroughForward(platform="discord", body=body, **fields)


def mapped(interaction: Any, **fields: Any) -> MessageEvent:
    event = decode_forward(discord(interaction, **fields))
    assert isinstance(event, MessageEvent), event
    return event


# -- R30: bodyB64 and headers -------------------------------------------------------------------


def test_R30_body_b64_decodes_exactly() -> None:
    raw = bytes(range(256)) + b'{"type":2}'
    frame = forward_frame(
        {
            "platform": "discord",
            "botId": "b1",
            "method": "POST",
            "path": "/interactions",
            "bodyB64": base64.b64encode(raw).decode(),
        },
        bufferId="buf-1",
    )
    assert frame.forward.body == raw
    assert frame.buffer_id == "buf-1"
    assert (frame.forward.bot_id, frame.forward.method, frame.forward.path) == (
        "b1",
        "POST",
        "/interactions",
    )


@pytest.mark.parametrize(
    "body_b64",
    [
        "!!!not base64!!!",
        "aGk",  # unpadded
        "aGk=\n",
        "aG-_",  # urlsafe alphabet is not standard base64
        "",
        None,
        123,
        ["aGk="],
    ],
)
def test_R30_bad_body_b64_is_empty_never_raises(body_b64: Any) -> None:
    forward: dict[str, Any] = {"platform": "discord"}
    if body_b64 is not None:
        forward["bodyB64"] = body_b64
    assert forward_frame(forward).forward.body == b""


def test_R30_header_order_kept_and_malformed_pairs_dropped() -> None:
    headers = [
        ["X-B", "2"],
        ["content-type", "application/json"],
        ["x-num", 5],
        ["only-one"],
        ["a", "b", "c"],
        "x-string: 1",
        ["x-bool", True],
        ["x-null", None],
        [["nested"], "v"],
        ["X-A", "1"],
        ["X-B", "again"],
    ]
    frame = forward_frame({"platform": "discord", "headers": headers})
    assert frame.forward.headers == (
        ("X-B", "2"),
        ("content-type", "application/json"),
        ("x-num", "5"),
        ("X-A", "1"),
        ("X-B", "again"),
    )


def test_R30_defaults_for_an_empty_forward() -> None:
    frame = forward_frame({})
    assert frame.forward == PassthroughForward()
    assert frame.buffer_id is None


# -- R68: text and user -----------------------------------------------------------------------


def test_R68_application_command_text_is_data_name() -> None:
    event = mapped({"type": 2, "id": "i1", "channel_id": "c", "data": {"name": "ask"}})
    assert event.text == "ask"


def test_R68_message_component_text_is_custom_id() -> None:
    event = mapped({"type": 3, "id": "i1", "data": {"custom_id": "btn:yes", "name": "no"}})
    assert event.text == "btn:yes"


@pytest.mark.parametrize(
    "interaction",
    [
        {"type": 5, "data": {"name": "modal", "custom_id": "m1"}},
        {"type": 4, "data": {"name": "auto"}},
        {"type": "2", "data": {"name": "ask"}},
        {"type": True, "data": {"name": "ask"}},
        {"data": {"name": "ask"}},
        {"type": 2},
        {"type": 2, "data": "not an object"},
        {"type": 2, "data": {"name": ["x"]}},
        {"type": 3, "data": {}},
    ],
)
def test_R68_other_interactions_have_empty_text(interaction: dict[str, Any]) -> None:
    assert mapped(interaction).text == ""


def test_R68_member_user_wins_over_user() -> None:
    event = mapped(
        {
            "type": 2,
            "guild_id": "g",
            "member": {"user": {"id": "m1", "username": "member"}, "nick": "n"},
            "user": {"id": "u1", "username": "plain"},
            "data": {"name": "x"},
        }
    )
    assert (event.source.user_id, event.source.user_name) == ("m1", "member")


@pytest.mark.parametrize(
    "interaction",
    [
        {"user": {"id": "u1", "username": "plain"}},
        {"member": {"nick": "no user"}, "user": {"id": "u1", "username": "plain"}},
        {"member": {"user": "not an object"}, "user": {"id": "u1", "username": "plain"}},
        {"member": "not an object", "user": {"id": "u1", "username": "plain"}},
    ],
)
def test_R68_user_is_the_fallback(interaction: dict[str, Any]) -> None:
    event = mapped({"type": 2, **interaction})
    assert (event.source.user_id, event.source.user_name) == ("u1", "plain")


@pytest.mark.parametrize("interaction", [{}, {"user": "x"}, {"member": {}, "user": None}])
def test_R68_no_user_gives_no_ids(interaction: dict[str, Any]) -> None:
    event = mapped({"type": 2, **interaction})
    assert (event.source.user_id, event.source.user_name) == (None, None)


def test_R68_numeric_snowflakes_read_as_text() -> None:
    event = mapped({"type": 2, "id": 11, "channel_id": 22, "guild_id": 33, "user": {"id": 44}})
    assert event.source.chat_id == "22"
    assert event.source.guild_id == "33"
    assert event.source.user_id == "44"
    assert event.source.message_id == "11"


# -- R69: the session source --------------------------------------------------------------------

GUILD_INTERACTION = {
    "type": 2,
    "id": "int-1",
    "channel_id": "chanA",
    "guild_id": "guild-9",
    "member": {"user": {"id": "userX", "username": "xavier"}},
    "data": {"name": "ask"},
}


def test_R69_guild_interaction_is_a_discord_group_message() -> None:
    event = mapped(GUILD_INTERACTION, profile="ops", bot_id="b1")
    source = event.source
    assert source.platform_raw == "discord"
    assert source.platform == "discord"
    assert source.chat_type == "group"
    assert source.chat_id == "chanA"
    assert source.guild_id == "guild-9"
    assert source.message_id == "int-1"
    assert source.profile == "ops"
    assert event.delivered_via_relay is True
    # The key the connector binds the interaction's vault capability under (RC §7.6).
    assert build_session_key(source) == "agent:ops:discord:group:chanA:userX"
    assert message_key(event) == ("discord", "chanA", "int-1")


@pytest.mark.parametrize("guild", [{}, {"guild_id": None}, {"guild_id": ""}])
def test_R69_without_guild_it_is_a_dm(guild: dict[str, Any]) -> None:
    event = mapped(
        {"type": 2, "id": "i", "channel_id": "dmchan", "user": {"id": "u"}, "data": {}, **guild}
    )
    assert event.source.chat_type == "dm"
    assert event.source.guild_id is None
    assert build_session_key(event.source) == "agent:main:discord:dm:dmchan"


def test_R69_discord_interaction_event_maps_directly() -> None:
    event = discord_interaction_event(discord(GUILD_INTERACTION))
    assert isinstance(event, MessageEvent)
    assert event.text == "ask"
    assert event.source.profile is None


def test_R69_wire_to_event_end_to_end() -> None:
    body = json.dumps(GUILD_INTERACTION).encode()
    frame = forward_frame(
        {"platform": "Discord", "bodyB64": base64.b64encode(body).decode(), "profile": "ops"}
    )
    event = decode_forward(frame.forward)
    assert isinstance(event, MessageEvent)
    assert build_session_key(event.source) == "agent:ops:discord:group:chanA:userX"


# -- R71: everything else is an error value ------------------------------------------------------


@pytest.mark.parametrize("platform", ["twilio", "slack", ""])
def test_R71_other_platforms_are_dropped_at_info(platform: str) -> None:
    result = decode_forward(PassthroughForward(platform=platform, body=b'{"type":2}'))
    assert result == PassthroughError(
        "no_handler", f"relay passthrough_forward dropped (no handler for {platform})", platform
    )
    assert result.severity == "info"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "is empty or was not valid base64"),
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe{}", "is not valid UTF-8"),
        (b"[1, 2]", "is not a JSON object but list"),
        (b'"text"', "is not a JSON object but str"),
        (b"null", "is not a JSON object but NoneType"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_R71_bad_discord_bodies_are_error_values(body: bytes, reason: str) -> None:
    for fn in (decode_forward, discord_interaction_event):
        result = fn(PassthroughForward(platform="discord", body=body))
        assert isinstance(result, PassthroughError)
        assert result.kind == "bad_body"
        assert result.severity == "warning"
        assert result.message.startswith("relay passthrough_forward dropped (discord body ")
        assert reason in result.message


def test_R71_undecodable_b64_on_the_wire_is_an_error_value() -> None:
    frame = forward_frame({"platform": "discord", "bodyB64": "!!!not base64!!!"})
    result = decode_forward(frame.forward)
    assert isinstance(result, PassthroughError)
    assert result.kind == "bad_body"
