"""The incremental NDJSON decoder (RC §2)."""

from __future__ import annotations

import logging

import pytest

from protocol import FrameDecoder, FrameError, GoingIdleAck, Hello, Inbound, InboundAck
from protocol._codec import encode_frame, soft_problems_to
from protocol._framing import exceeds_limit, utf8_length

ACK = '{"type":"going_idle_ack"}\n'


def frames_only(items: list[object]) -> list[object]:
    return [i for i in items if not isinstance(i, FrameError)]


def test_R2_several_frames_in_one_message_decode_in_order() -> None:
    d = FrameDecoder()
    text = encode_frame(Hello("a", "1")) + encode_frame(Hello("b", "2")) + ACK
    assert d.feed_text(text) == [Hello("a", "1"), Hello("b", "2"), GoingIdleAck()]
    assert d.pending == 0


def test_R2_frame_split_across_messages_even_mid_utf8() -> None:
    wire = encode_frame(Hello("émoji-😀", "1")).encode("utf-8")
    split = wire.index("😀".encode()) + 2  # inside the 4-byte sequence
    d = FrameDecoder()
    assert d.feed_bytes(wire[:split]) == []
    assert d.feed_bytes(wire[split:]) == [Hello("émoji-😀", "1")]


def test_R2_every_split_point_of_a_text_stream_gives_the_same_frames() -> None:
    text = encode_frame(Hello("x", "1")) + "\r\n\n   \n" + encode_frame(InboundAck("b")) + ACK
    expected = [Hello("x", "1"), InboundAck("b"), GoingIdleAck()]
    for cut in range(len(text) + 1):
        d = FrameDecoder()
        assert d.feed_text(text[:cut]) + d.feed_text(text[cut:]) == expected, cut


def test_crlf_and_blank_lines() -> None:
    d = FrameDecoder()
    assert d.feed_text('\n\r\n{"type":"going_idle_ack"}\r\n\n') == [GoingIdleAck()]


def test_R3_malformed_line_then_the_next_frame_is_processed() -> None:
    d = FrameDecoder()
    out = d.feed_text('{"type": oops\n[]\n' + ACK)
    assert [type(x).__name__ for x in out] == ["FrameError", "FrameError", "GoingIdleAck"]


def test_R5_oversized_line_dropped_with_one_error_next_frame_processed() -> None:
    d = FrameDecoder(max_frame_bytes=1024)
    big = '{"type":"inbound","event":{"text":"' + "x" * 2000 + '"}}\n'
    out = d.feed_text(big + ACK)
    assert len(out) == 2
    err = out[0]
    assert isinstance(err, FrameError) and err.kind == "oversized"
    assert err.message == "relay: dropping oversized frame (> 1024 bytes)"
    assert err.severity == "error"
    assert out[1] == GoingIdleAck()


def test_R5_oversized_line_arriving_in_pieces_is_not_buffered() -> None:
    d = FrameDecoder(max_frame_bytes=1024)
    errors = []
    for _ in range(50):
        errors += d.feed_text("y" * 500)
        assert d.pending <= 1024 * 4
    assert len(errors) == 1 and isinstance(errors[0], FrameError)
    assert d.feed_text("still the same line\n" + ACK) == [GoingIdleAck()]


def test_R5_limit_counts_utf8_bytes_not_characters() -> None:
    limit = 1024
    # 300 four-byte characters: 300 characters but 1200 bytes.
    line = '{"type":"hello","platform":"' + "😀" * 300 + '"}'
    assert len(line) < limit < utf8_length(line)
    out = FrameDecoder(max_frame_bytes=limit).feed_text(line + "\n")
    assert len(out) == 1 and isinstance(out[0], FrameError) and out[0].kind == "oversized"


def test_exactly_at_the_limit_is_accepted() -> None:
    line = encode_frame(Hello("p" * 10, "")).rstrip("\n")
    d = FrameDecoder(max_frame_bytes=len(line))
    assert d.feed_text(line + "\r\n") == [Hello("p" * 10, "")]


def test_exceeds_limit_helper() -> None:
    assert not exceeds_limit("abc", 3)
    assert exceeds_limit("abcd", 3)
    assert exceeds_limit("é", 1) and not exceeds_limit("é", 2)


def test_invalid_utf8_bytes_do_not_raise() -> None:
    d = FrameDecoder()
    out = d.feed_bytes(b'{"type":"hello","platform":"\xff\xfe"}\n' + ACK.encode())
    assert frames_only(out)[-1] == GoingIdleAck()


def test_soft_field_problems_go_to_the_sink_not_the_log(caplog: pytest.LogCaptureFixture) -> None:
    problems: list[str] = []
    d = FrameDecoder()
    bad = '{"type":"inbound","event":{"text":"x","source":{"user_name":true,"thread_id":[1]}}}\n'
    with caplog.at_level(logging.DEBUG, "relay.protocol"), soft_problems_to(problems.append):
        items = d.feed_text(bad * 3)
    assert [type(i) for i in items] == [Inbound] * 3
    assert (
        problems
        == [
            "relay: ignoring non-text source.user_name (bool)",
            "relay: ignoring non-text source.thread_id (list)",
        ]
        * 3
    )
    assert caplog.records == []
    # Without a sink the problem is logged where it always was.
    with caplog.at_level(logging.WARNING, "relay.protocol"):
        FrameDecoder().feed_text(bad)
    assert "source.user_name" in caplog.text
