"""The connector's per-message shortcuts give exactly what the general paths give (issue 15).

``GatewayDecoder`` reads a plain ``inbound_ack`` line without the codec: for any input its
frames and errors must equal :class:`~protocol._framing.FrameDecoder`'s, whatever the
message boundaries and frame limit. ``DeliveryBuffer.append`` stamps a frame without
``attrs.evolve``: the stamped frame must equal the evolved one.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import protocol._framing
from protocol._actions import Send
from protocol._codec import encode_frame
from protocol._errors import FrameError
from protocol._events import MessageEvent, SessionSource
from protocol._frames import (
    Frame,
    Inbound,
    InboundAck,
    Outbound,
    PassthroughForward,
    PassthroughForwardFrame,
)
from protocol._framing import FrameDecoder
from relay_runtime.connector._buffer import DeliveryBuffer
from relay_runtime.connector._sockets import GatewayDecoder

_ID_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs",))
_SAFE_ID = st.text(alphabet="abcXYZ019._~-", min_size=1, max_size=20)


def _ack(buffer_id: str) -> str:
    return encode_frame(InboundAck(buffer_id=buffer_id))


_PIECES = st.one_of(
    _SAFE_ID.map(_ack),
    st.text(_ID_CHARS, max_size=12).map(_ack),  # ids the codec escapes, or empty
    _SAFE_ID.map(lambda b: _ack(b).replace("\n", "\r\n")),
    _SAFE_ID.map(lambda b: " " + _ack(b)),
    _SAFE_ID.map(lambda b: _ack(b).replace('"bufferId"', '"bufferId" ')),
    _SAFE_ID.map(lambda b: '{"bufferId":"' + b + '","type":"inbound_ack"}\n'),
    _SAFE_ID.map(lambda b: '{"type":"inbound_ack","bufferId":"' + b + '","x":1}\n'),
    st.just(encode_frame(Outbound(request_id="r-1", action=Send(chat_id="c", content="hi")))),
    st.just('{"type":"inbound_ack"}\n'),
    st.just("not json\n"),
    st.just("\n"),
)


def _decoded(decoder: FrameDecoder, messages: list[str]) -> list[Frame | FrameError]:
    out: list[Frame | FrameError] = []
    for message in messages:
        out.extend(decoder.feed_text(message))
    return out


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(_PIECES, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
    limit=st.sampled_from([1, 30, 40, 60, 1 << 20]),
)
@example(pieces=[_ack("buf-0a1b2c3d-7")], cuts=[], limit=1 << 20)
@example(pieces=[_ack("buf-0a1b2c3d-7")], cuts=[], limit=len(_ack("buf-0a1b2c3d-7")) - 2)
@example(pieces=[_ack("buf-0a1b2c3d-7")], cuts=[], limit=len(_ack("buf-0a1b2c3d-7")) - 1)
def test_the_ack_shortcut_decodes_as_the_codec_does(
    pieces: list[str], cuts: list[int], limit: int
) -> None:
    text = "".join(pieces)
    bounds = sorted({min(c, len(text)) for c in cuts})
    messages = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    expected = _decoded(FrameDecoder(limit), messages)
    assert _decoded(GatewayDecoder(limit), messages) == expected


def test_a_plain_ack_takes_the_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the codec's line decoder the ids we make still decode; anything else needs it.
    def no_codec(line: str) -> Frame | FrameError:
        raise AssertionError(f"the codec was asked to decode {line!r}")

    monkeypatch.setattr(protocol._framing, "decode_line", no_codec)
    decoder = GatewayDecoder()
    text = _ack("buf-0a1b2c3d-12") + _ack("buf-x.y_z~-3")
    assert decoder.feed_text(text) == [
        InboundAck(buffer_id="buf-0a1b2c3d-12"),
        InboundAck(buffer_id="buf-x.y_z~-3"),
    ]
    with pytest.raises(AssertionError, match="the codec was asked"):
        decoder.feed_text(_ack("buf-é-1"))


def _event() -> MessageEvent:
    return MessageEvent(
        text="hello",
        source=SessionSource(platform="discord", chat_id="c-1", user_id="u-1"),
    )


def test_a_stamped_frame_equals_the_evolved_one() -> None:
    frames = [
        Inbound(event=_event()),
        PassthroughForwardFrame(forward=PassthroughForward(platform="discord", body=b"x")),
    ]
    buffer = DeliveryBuffer()
    for n, frame in enumerate(frames):
        buffer_id = f"buf-x-{n}"
        stamped = buffer.append(frame, buffer_id)
        evolved = attrs.evolve(frame, buffer_id=buffer_id)
        assert stamped == evolved
        assert type(stamped) is type(evolved)
        assert encode_frame(stamped) == encode_frame(evolved)
    assert [f.buffer_id for f in buffer] == ["buf-x-0", "buf-x-1"]
