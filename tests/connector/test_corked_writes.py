"""Corked writes (issue 15): the frames answering one network read go out in one write.

The socket's reader takes every message trio-websocket has already read, answers each
``outbound`` and ``inbound_ack`` into the connection's outbox, and writes the outbox in one
stream write before it waits again. These tests pin what that must keep: each frame is
still its own WebSocket message, in the order it was made, recorded as sent only once
written; without the eager-read seam each message's answers are written before the next
message is read.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from protocol import (
    GoingIdleAck,
    Inbound,
    InboundAck,
    Outbound,
    OutboundResult,
    Send,
    encode_frame,
)
from protocol._codec import decode_line
from protocol._frames import DescriptorFrame
from relay_runtime.connector import ReferenceConnector
from relay_runtime.connector import _sockets as sockets
from relay_runtime.connector._connection import Connection
from relay_runtime.connector._ws_batch import send_texts
from tests.streams import CountingStream

from .peer import GATEWAY, SECRET, Peer, good_headers
from .test_memory import event, open_peer

LIMIT = 30  # virtual seconds


@pytest.mark.parametrize(("eager", "writes"), [(True, 1), (False, 4)])
async def test_the_answers_to_one_read_are_one_write_of_one_message_per_frame_in_order(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    eager: bool,
    writes: int,
) -> None:
    if not eager:  # as with a trio-websocket whose private read path is not the checked one
        monkeypatch.setattr(sockets, "eager_reads", lambda ws: None)
    connector = ReferenceConnector(secrets={GATEWAY: SECRET}, always_buffer=True, drain_window=2)
    with trio.fail_after(LIMIT):
        peer = Peer(await open_peer(nursery, connector, good_headers()))
        await peer.hello("discord")
        await peer.expect(DescriptorFrame)
        conn = await connector.wait_connected(GATEWAY)
        for n in range(4):
            await connector.inject(event(f"e{n}"), gateway_id=GATEWAY)
        first = [await peer.expect(Inbound) for _ in range(2)]  # the window is 2
        counting = CountingStream(conn.ws._stream)
        conn.ws._stream = counting
        already_sent = len(connector.sent)
        # The gateway's side of two messages, in one write: outbound, ack, outbound, ack.
        texts = []
        for n, inbound in enumerate(first):
            action = Send(chat_id="c1", content=f"reply {n}")
            texts.append(encode_frame(Outbound(request_id=f"r{n}", action=action)))
            texts.append(encode_frame(InboundAck(buffer_id=inbound.buffer_id or "")))
        await send_texts(peer.ws, texts)
        messages = [await peer.ws.get_message() for _ in range(4)]
    frames = [decode_line(str(message).rstrip("\n")) for message in messages]
    assert all(str(message).count("\n") == 1 for message in messages)  # one frame each
    assert [type(frame) for frame in frames] == [OutboundResult, Inbound] * 2
    assert [f.request_id for f in frames if isinstance(f, OutboundResult)] == ["r0", "r1"]
    assert [f.event.text for f in frames if isinstance(f, Inbound)] == ["e2", "e3"]
    assert counting.writes == writes
    assert [sent.text for sent in connector.sent[already_sent:]] == messages


async def test_a_corked_frame_is_recorded_as_sent_only_once_written(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET})
    with trio.fail_after(LIMIT):
        peer, conn = await holding_one_frame(nursery, connector)
        assert not any(isinstance(sent.frame, GoingIdleAck) for sent in connector.sent)
        await peer.ws.aclose()
        await connector.wait_for(lambda: not conn.open)
        assert not await connector._flush(conn)
    assert not any(isinstance(sent.frame, GoingIdleAck) for sent in connector.sent)


async def test_a_frame_written_while_the_outbox_holds_frames_goes_out_behind_them(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The reader yields once before it writes its outbox; a frame another task writes then
    (the drain, an injection's pump) must not overtake the frames already held."""
    connector = ReferenceConnector(secrets={GATEWAY: SECRET})
    with trio.fail_after(LIMIT):
        peer, conn = await holding_one_frame(nursery, connector)
        # Not corked, but the outbox holds a frame: this one queues behind it.
        later = '{"type":"later"}\n'
        assert await connector._write_text(conn, later, None)
        assert [text for text, _ in conn.outbox] == [encode_frame(GoingIdleAck()), later]
        assert await connector._flush(conn)
        got = [await peer.ws.get_message() for _ in range(2)]
    assert got == [encode_frame(GoingIdleAck()), later]
    assert conn.outbox == []


async def holding_one_frame(
    nursery: trio.Nursery, connector: ReferenceConnector
) -> tuple[Peer, Connection]:
    """A connected peer whose connection's outbox holds one ``going_idle_ack`` (queued while
    corked, not written), and that connection, no longer corked."""
    peer = Peer(await open_peer(nursery, connector, good_headers()))
    await peer.hello("discord")
    await peer.expect(DescriptorFrame)
    conn = await connector.wait_connected(GATEWAY)
    conn.corked = True
    assert await connector._write(conn, GoingIdleAck())  # queued, not written
    conn.corked = False
    return peer, conn
