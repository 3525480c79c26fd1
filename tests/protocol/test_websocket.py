"""The client's WebSocket handshake and framing (protocol/_websocket.py), with wsproto's
server as the independent other side."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.events import Pong as WsPong

from protocol._websocket import (
    Accepted,
    ClientFrames,
    ClientHandshake,
    Closed,
    HandshakeFailed,
    Pong,
    ProtocolStateError,
    Rejected,
    State,
    accept_token,
    mask,
)
from protocol._websocket import Ping as ClientPing


def server_pair(max_message_size: int = 1 << 20) -> tuple[ClientFrames, Connection]:
    """Our client framing and a wsproto server connection, past the handshake."""
    return ClientFrames(max_message_size), Connection(ConnectionType.SERVER)


def to_server(server: Connection, data: bytes) -> list[object]:
    server.receive_data(data)
    return list(server.events())


# ---- handshake --------------------------------------------------------------------------


def test_handshake_is_accepted_by_a_wsproto_server_and_keeps_the_trailing_bytes() -> None:
    client = ClientHandshake("relay.test:8080", "/relay?x=1", [(b"authorization", b"Bearer t")])
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.request())
    (request,) = list(server.events())
    assert isinstance(request, Request)
    assert request.host == "relay.test:8080"
    assert request.target == "/relay?x=1"
    assert (b"authorization", b"Bearer t") in request.extra_headers
    answer = server.send(AcceptConnection())
    first_frame = server.send(TextMessage(data="hello"))
    # The 101 and the first frame in one read: the frame is handed on, not lost.
    outcome = client.receive_data(answer + first_frame)
    assert isinstance(outcome, Accepted)
    frames = ClientFrames(1 << 20, outcome.trailing)
    assert frames.receive_data(b"") == ["hello"]


def test_handshake_answer_split_byte_by_byte() -> None:
    client = ClientHandshake("h", "/")
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.request())
    list(server.events())
    answer = server.send(AcceptConnection())
    outcomes = [client.receive_data(answer[i : i + 1]) for i in range(len(answer))]
    assert outcomes[:-1] == [None] * (len(answer) - 1)
    assert isinstance(outcomes[-1], Accepted)


def test_a_rejected_upgrade_gives_its_status_headers_and_body() -> None:
    client = ClientHandshake("h", "/")
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.request())
    list(server.events())
    data = server.send(
        RejectConnection(status_code=401, headers=[(b"content-length", b"6")], has_body=True)
    )
    data += server.send(RejectData(data=b"denied", body_finished=True))
    outcome = client.receive_data(data)
    assert outcome == Rejected(401, ((b"content-length", b"6"),), b"denied")


def test_a_rejection_whose_body_ends_with_the_stream() -> None:
    client = ClientHandshake("h", "/")
    client.request()
    assert client.receive_data(b"HTTP/1.1 503 Busy\r\n\r\nlater") is None
    outcome = client.receive_data(b"")
    assert isinstance(outcome, Rejected)
    assert (outcome.status_code, outcome.body) == (503, b"later")


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (b"Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n", "Connection: Upgrade"),
        (b"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n", "Upgrade: websocket"),
        (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: bad\r\n", "Accept"),
        (
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
            "extension",
        ),
    ],
)
def test_a_bad_acceptance_is_a_handshake_failure(headers: bytes, problem: str) -> None:
    client = ClientHandshake("h", "/")
    request = client.request()
    key = next(
        line.split(b": ", 1)[1]
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key")
    )
    answer = b"HTTP/1.1 101 Switching Protocols\r\n" + headers.replace(
        b"{accept}", accept_token(key)
    )
    with pytest.raises(HandshakeFailed, match=problem):
        client.receive_data(answer + b"\r\n")


def test_a_stream_that_ends_during_the_handshake_is_a_failure() -> None:
    client = ClientHandshake("h", "/")
    client.request()
    assert client.receive_data(b"HTTP/1.1 101 Swi") is None
    with pytest.raises(HandshakeFailed):
        client.receive_data(b"")


def test_garbage_instead_of_http_is_a_failure() -> None:
    client = ClientHandshake("h", "/")
    client.request()
    with pytest.raises(HandshakeFailed, match="bad HTTP"):
        client.receive_data(b"\x00\x01 not http at all\r\n\r\n")


# ---- sending ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=8))
def test_texts_arrive_at_a_wsproto_server_whole_and_in_order(texts: list[str]) -> None:
    frames, server = server_pair()
    got = to_server(server, frames.encode_texts(texts))
    assert all(isinstance(event, TextMessage) and event.message_finished for event in got)
    assert [event.data for event in got if isinstance(event, TextMessage)] == texts


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_every_length_encoding_reaches_the_server(size: int) -> None:
    frames, server = server_pair()
    text = "x" * size
    got = to_server(server, frames.encode_texts([text]) + frames.encode_bytes(b"\x00" * size))
    assert isinstance(got[0], TextMessage) and got[0].data == text
    assert isinstance(got[1], BytesMessage) and got[1].data == b"\x00" * size


def test_each_frame_has_its_own_mask_key() -> None:
    frames, _ = server_pair()
    data = frames.encode_texts(["same", "same"])
    first, second = data[:10], data[10:]
    assert first[2:6] != second[2:6] or first[6:] != second[6:]


def test_mask_is_its_own_inverse_and_matches_the_definition() -> None:
    key = b"\x01\x02\x03\x04"
    payload = bytes(range(11))
    masked = mask(payload, key)
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert mask(masked, key) == payload


def test_ping_and_close_reach_the_server() -> None:
    frames, server = server_pair()
    got = to_server(server, frames.ping(b"p1") + frames.close(4000, "bye"))
    assert isinstance(got[0], Ping) and got[0].payload == b"p1"
    assert isinstance(got[1], CloseConnection)
    assert (got[1].code, got[1].reason) == (4000, "bye")
    assert frames.state is State.CLOSING


def test_nothing_can_be_sent_once_closing() -> None:
    frames, _ = server_pair()
    frames.close()
    with pytest.raises(ProtocolStateError):
        frames.encode_texts(["late"])
    with pytest.raises(ProtocolStateError):
        frames.ping(b"x")


def test_a_long_close_reason_is_cut_on_a_character_boundary() -> None:
    frames, server = server_pair()
    (event,) = to_server(server, frames.close(1000, "é" * 100))
    assert isinstance(event, CloseConnection)
    assert event.reason == "é" * 61  # 122 of the 123 bytes a close frame has for it


# ---- receiving --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=64),
)
def test_messages_from_a_wsproto_server_in_any_split(
    messages: list[str | bytes], step: int
) -> None:
    frames, server = server_pair()
    wire = b"".join(
        server.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m))
        for m in messages
    )
    got: list[object] = []
    for i in range(0, len(wire), step):
        got.extend(frames.receive_data(wire[i : i + step]))
    assert got == messages


def test_fragmented_messages_are_joined_and_pings_between_fragments_pass() -> None:
    frames, server = server_pair()
    wire = server.send(Message(data="hel", message_finished=False))  # type: ignore[arg-type]
    wire += server.send(Ping(payload=b"mid"))
    wire += server.send(Message(data="lo", message_finished=True))  # type: ignore[arg-type]
    got = frames.receive_data(wire)
    assert got == [ClientPing(b"mid"), "hello"]
    (pong,) = to_server(server, frames.data_to_send())
    assert isinstance(pong, WsPong) and pong.payload == b"mid"


def test_a_text_split_inside_a_character_is_joined_first() -> None:
    frames, _ = server_pair()
    encoded = "é".encode()
    wire = _frame(0x1, encoded[:1], fin=False) + _frame(0x0, encoded[1:])
    assert frames.receive_data(wire) == ["é"]


def test_a_pong_is_reported() -> None:
    frames, server = server_pair()
    assert frames.receive_data(server.send(WsPong(payload=b"abc"))) == [Pong(b"abc")]


def test_the_servers_close_is_echoed_and_ends_reading() -> None:
    frames, server = server_pair()
    wire = server.send(CloseConnection(code=4401, reason="disabled"))
    wire += _frame(0x1, b"after")  # never a message: reading has ended
    assert frames.receive_data(wire) == [Closed(4401, "disabled")]
    assert frames.state is State.CLOSED
    (echo,) = to_server(server, frames.data_to_send())
    assert isinstance(echo, CloseConnection) and echo.code == 4401
    assert frames.receive_data(b"\x81\x01x") == []  # nothing is parsed once closed


def test_a_close_without_a_code_is_1005_and_echoed_as_1000() -> None:
    frames, _ = server_pair()
    assert frames.receive_data(_frame(0x8, b"")) == [Closed(1005, "")]
    echo = frames.data_to_send()
    assert echo[0] == 0x88 and mask(echo[6:], echo[2:6]) == (1000).to_bytes(2, "big")


def test_after_our_close_data_is_dropped_and_the_servers_close_ends_it() -> None:
    frames, server = server_pair()
    frames.close(1000, "bye")
    wire = server.send(TextMessage(data="late")) + _frame(0x9, b"p")
    wire += _frame(0x8, (1000).to_bytes(2, "big"))
    assert frames.receive_data(wire) == [ClientPing(b"p"), Closed(1000, "")]
    assert frames.data_to_send() == b""  # no pong once closing, no second close


@pytest.mark.parametrize(
    ("wire", "code", "reason"),
    [
        (bytes([0x81, 0x80 | 1]) + b"\x00\x00\x00\x00" + b"a", 1002, "masked"),
        (bytes([0xC1, 1]) + b"a", 1002, "reserved bits"),
        (bytes([0x83, 0]), 1002, "unknown opcode 3"),
        (bytes([0x8B, 0]), 1002, "unknown opcode 11"),
        (bytes([0x09, 0]), 1002, "control frame"),
        (bytes([0x89, 126]) + struct.pack("!H", 126) + b"x" * 126, 1002, "control frame"),
        (bytes([0x80, 1]) + b"a", 1002, "continuation without"),
        (bytes([0x01, 1]) + b"a" + bytes([0x81, 1]) + b"b", 1002, "inside a fragmented"),
        (bytes([0x81, 126]) + struct.pack("!H", 5) + b"hello", 1002, "minimally"),
        (bytes([0x81, 127]) + struct.pack("!Q", 5) + b"hello", 1002, "64-bit"),
        (bytes([0x81, 2]) + b"\xc3\x28", 1007, "not UTF-8"),
        (bytes([0x88, 1]) + b"\x03", 1002, "1-byte"),
        (bytes([0x88, 2]) + (1005).to_bytes(2, "big"), 1002, "close code 1005"),
        (bytes([0x88, 2]) + (2999).to_bytes(2, "big"), 1002, "close code 2999"),
        (bytes([0x88, 4]) + (1000).to_bytes(2, "big") + b"\xc3\x28", 1007, "reason"),
    ],
)
def test_a_frame_that_breaks_the_protocol_fails_the_connection(
    wire: bytes, code: int, reason: str
) -> None:
    frames, server = server_pair()
    got = frames.receive_data(b"\x81\x02ok" + wire)
    assert got[0] == "ok"  # what came before is kept
    assert len(got) == 2
    closed = got[1]
    assert isinstance(closed, Closed) and closed.by_us and closed.code == code
    assert reason in closed.reason
    assert frames.state is State.CLOSED
    (close,) = to_server(server, frames.data_to_send())
    assert isinstance(close, CloseConnection) and close.code == code


def test_a_message_over_the_limit_is_1009_also_when_fragmented() -> None:
    frames, _ = server_pair(max_message_size=10)
    assert frames.receive_data(bytes([0x81, 10]) + b"x" * 10) == ["x" * 10]
    (closed,) = frames.receive_data(bytes([0x01, 6]) + b"x" * 6 + bytes([0x80, 6]) + b"y" * 6)
    assert isinstance(closed, Closed) and closed.code == 1009


def test_a_header_that_announces_too_much_fails_before_the_payload_arrives() -> None:
    frames, _ = server_pair(max_message_size=100)
    (closed,) = frames.receive_data(bytes([0x82, 127]) + struct.pack("!Q", 1 << 40))
    assert isinstance(closed, Closed) and closed.code == 1009


def _frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A server (unmasked) frame."""
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | opcode, len(payload)]) + payload


def test_masking_keys_are_never_reused_across_pool_refills() -> None:
    frames, server = server_pair()
    batches = [frames.encode_texts(["k"] * 700) for _ in range(4)]  # 2,800 keys, > one pool
    keys = [batch[i + 2 : i + 6] for batch in batches for i in range(0, len(batch), 7)]
    assert len(keys) == 2800
    # A reused pool would repeat its 1,024 keys in the same order.
    assert keys[:1024] != keys[1024:2048]
    assert len(to_server(server, b"".join(batches))) == 2800


def test_a_control_frame_that_announces_too_much_fails_on_its_header() -> None:
    frames, _ = server_pair()
    (closed,) = frames.receive_data(bytes([0x89, 127]) + struct.pack("!Q", 1 << 40))
    assert isinstance(closed, Closed) and closed.code == 1002


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.integers(min_value=1, max_value=200))
def test_any_bytes_give_messages_or_one_close_and_never_raise(
    chunks: list[bytes], limit: int
) -> None:
    frames, _ = server_pair(max_message_size=limit)
    events: list[object] = []
    for chunk in chunks:
        events.extend(frames.receive_data(chunk))
    closes = [event for event in events if isinstance(event, Closed)]
    assert len(closes) <= 1
    if closes:
        assert events[-1] is closes[0]  # nothing after the close
        assert frames.state is State.CLOSED
    for event in events:
        if isinstance(event, (str, bytes)):
            assert len(event.encode() if isinstance(event, str) else event) <= limit
