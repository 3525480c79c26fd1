"""RelayConnection (the codec, hellos, descriptors and send gate over the machine) and the
transition table's strictness. No event loop: data in, frames and actions out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import (
    DescriptorFrame,
    FrameError,
    GoingIdle,
    GoingIdleAck,
    Hello,
    Identity,
    InboundAck,
    Interrupt,
    Outbound,
    OutboundResult,
    RelayConnection,
    RelayProtocolError,
    Send,
    encode_frame,
)
from protocol._connection import (
    TRANSITIONS,
    CancelTimer,
    CloseSocket,
    ConnectionMachine,
    ConnectionStateError,
    DescriptorReceived,
    DialFailed,
    DialSucceeded,
    GoingIdleAckReceived,
    HandshakeCompleted,
    IdleResolved,
    OpenSocket,
    SocketClosed,
    StartTimer,
    State,
    StopRequested,
    SuspendRequested,
    Timer,
    TimerExpired,
    WriteFrames,
)

IDENTITIES = (Identity("discord", "d1"), Identity("telegram"))
OUTBOUND = Outbound("r1", Send(chat_id="c1", content="hi"))


def top(low: float, high: float) -> float:
    return high


def line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


def descriptor_line(platform: str, **overrides: Any) -> str:
    d: dict[str, Any] = {
        "contract_version": 1,
        "platform": platform,
        "label": platform.title(),
        "max_message_length": 2000,
        "supports_draft_streaming": False,
        "supports_edit": True,
        "supports_threads": False,
        "markdown_dialect": "plain",
        "len_unit": "chars",
    }
    d.update(overrides)
    return line({"type": "descriptor", "descriptor": d})


def connection() -> RelayConnection:
    return RelayConnection(IDENTITIES, has_credentials=True, uniform=top)


def hello_sent() -> RelayConnection:
    c = connection()
    assert c.start() == [OpenSocket()]
    c.handle(DialSucceeded())
    return c


def ready() -> RelayConnection:
    c = hello_sent()
    c.receive_data(descriptor_line("discord"))
    c.take_actions()
    assert c.state is State.READY
    return c


# ---- hellos first, send only when live ----------------------------------------------------


def test_dial_succeeded_writes_one_hello_per_identity_in_order_then_arms_the_handshake() -> None:
    c = connection()
    c.start()
    actions = c.handle(DialSucceeded())
    assert actions == [
        WriteFrames(
            (
                encode_frame(Hello("discord", "d1")),
                encode_frame(Hello("telegram", "")),
            )
        ),
        StartTimer(Timer.HANDSHAKE, 30.0),
    ]
    assert c.state is State.HELLO_SENT


@pytest.mark.parametrize("where", ["init", "dialing", "hello_sent", "backoff"])
def test_outbound_before_ready_is_a_protocol_error(where: str) -> None:
    c = connection()
    if where != "init":
        c.start()
    if where == "hello_sent":
        c.handle(DialSucceeded())
    if where == "backoff":
        c.handle(DialFailed("refused"))
    for frame in (OUTBOUND, InboundAck("b1"), Interrupt("s1", "stop")):
        with pytest.raises(RelayProtocolError, match=f"cannot send {frame.TYPE} in state {where}"):
            c.send(frame)


def test_ready_encodes_caller_frames_exactly_as_the_codec() -> None:
    c = ready()
    assert c.live
    for frame in (OUTBOUND, InboundAck("b1"), Interrupt("s1", "stop")):
        assert c.send(frame) == encode_frame(frame)


def test_hellos_and_going_idle_are_the_connections_own() -> None:
    c = ready()
    with pytest.raises(RelayProtocolError, match="a second one is not allowed"):
        c.send(Hello("discord", "d1"))
    with pytest.raises(RelayProtocolError, match="not an identity"):
        c.send(Hello("slack"))
    with pytest.raises(RelayProtocolError, match="going_idle is sent by the connection"):
        c.send(GoingIdle())
    with pytest.raises(RelayProtocolError, match="connector frame"):
        c.send(GoingIdleAck())


def test_nothing_is_sent_after_close() -> None:
    c = ready()
    c.handle(StopRequested())
    c.receive_data(line({"type": "going_idle_ack"}))
    c.take_actions()
    c.drain_finished()
    c.handle(SocketClosed(1000))
    assert c.state is State.CLOSED
    with pytest.raises(RelayProtocolError, match="the connection is closed"):
        c.send(OUTBOUND)


# ---- frames in -----------------------------------------------------------------------------


def test_first_descriptor_completes_the_handshake_and_becomes_the_default() -> None:
    c = hello_sent()
    items = c.receive_data(descriptor_line("discord") + descriptor_line("telegram"))
    assert [type(i) for i in items] == [DescriptorFrame, DescriptorFrame]
    assert c.state is State.READY
    actions = c.take_actions()
    assert HandshakeCompleted() in actions
    assert c.take_actions() == []
    assert c.default_descriptor.platform == "discord"
    assert set(c.descriptors) == {"discord", "telegram"}
    # A later descriptor for another platform never replaces the default.
    c.receive_data(descriptor_line("slack"))
    assert c.take_actions() == []
    assert c.default_descriptor.platform == "discord"
    assert c.descriptor_for("slack").platform == "slack"
    assert c.descriptor_for("").platform == "discord"


def test_descriptor_for_a_fronted_platform_without_one_is_a_placeholder() -> None:
    c = ready()
    assert c.descriptor_for("telegram").platform == "telegram"
    assert c.descriptor_for("unknown").platform == "discord"


def test_invalid_descriptor_is_an_error_item_and_closes_1002() -> None:
    c = hello_sent()
    (item,) = c.receive_data(line({"type": "descriptor", "descriptor": {"platform": "x"}}))
    assert isinstance(item, FrameError) and item.kind == "invalid_descriptor"
    assert CloseSocket(1002, "invalid descriptor") in c.take_actions()
    assert c.state is State.BACKOFF


def test_bad_input_comes_back_as_errors_and_the_next_frame_decodes() -> None:
    c = ready()
    items = c.receive_data('{"type": \n[1]\n' + line({"type": "outbound_result"}))
    assert [i.kind for i in items if isinstance(i, FrameError)] == [
        "malformed",
        "malformed",
        "bad_field",
    ]
    assert c.state is State.READY
    result = line({"type": "outbound_result", "requestId": "r1", "result": {"success": True}})
    (frame,) = c.receive_data(result)
    assert isinstance(frame, OutboundResult) and frame.request_id == "r1"


def test_binary_messages_may_split_a_frame_and_a_utf8_sequence() -> None:
    c = ready()
    data = line({"type": "interrupt_inbound", "sessionKey": "k", "chatId": "ché"}).encode()
    cut = data.index("é".encode()) + 1
    assert c.receive_data(data[:cut]) == []
    (frame,) = c.receive_data(data[cut:])
    assert type(frame).__name__ == "InterruptInbound"


def test_a_new_socket_starts_a_fresh_decoder() -> None:
    c = ready()
    c.receive_data('{"type":"outbound_res')  # the socket drops mid-frame
    c.handle(SocketClosed(1006))
    c.handle(TimerExpired(Timer.BACKOFF))
    c.handle(DialSucceeded())
    (frame,) = c.receive_data(descriptor_line("discord"))
    assert isinstance(frame, DescriptorFrame)
    assert c.state is State.READY


def test_going_idle_ack_drives_the_idle_flow_and_the_drain_window_stays_live() -> None:
    c = ready()
    actions = c.handle(SuspendRequested())
    assert actions[0] == WriteFrames((encode_frame(GoingIdle()),))
    c.receive_data(line({"type": "going_idle_ack"}))
    assert c.take_actions() == [
        CancelTimer(Timer.IDLE_ACK),
        IdleResolved(acked=True),
        CloseSocket(1000, "going idle", drain_s=5.0),
    ]
    assert c.state is State.IDLE_ACKED
    assert c.live  # replies of running turns still go out in the drain window
    assert c.send(OUTBOUND) == encode_frame(OUTBOUND)
    c.drain_finished()
    assert not c.live
    with pytest.raises(RelayProtocolError, match="in state idle_acked"):
        c.send(OUTBOUND)


def test_a_stray_peer_frame_never_raises() -> None:
    c = ready()
    c.receive_data(line({"type": "going_idle_ack"}))
    assert c.take_actions() == []
    assert c.state is State.READY


# ---- the table names target states and raises on a pair it has no row for ------------------


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.READY, DialSucceeded()),
        (State.HELLO_SENT, DialFailed("x")),
        (State.BACKOFF, TimerExpired(Timer.STABILITY)),
        (State.INIT, SocketClosed(1006)),
        (State.DIALING, TimerExpired(Timer.HANDSHAKE)),
    ],
)
def test_an_unexpected_pair_raises(state: State, event: Any) -> None:
    m = ConnectionMachine(has_credentials=True, uniform=top)
    m.state = state
    with pytest.raises(ConnectionStateError, match=f"in state {state.value}"):
        m.handle(event)
    assert m.state is state


def test_every_row_names_its_targets_and_peer_frames_have_a_row_in_every_state() -> None:
    for (state, _key), row in TRANSITIONS.items():
        assert row.targets, f"{state} row without targets"
        if row.handler is None:
            assert row.targets == {state}
    for state in State:
        for key in (DescriptorReceived, GoingIdleAckReceived, StopRequested, SuspendRequested):
            assert (state, key) in TRANSITIONS
    assert TRANSITIONS[(State.READY, SocketClosed)].targets == {
        State.BACKOFF,
        State.DIALING,
        State.DISABLED,
    }
