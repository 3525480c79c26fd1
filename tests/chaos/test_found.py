"""Runtime bugs the chaos test found, each as a minimal deterministic reproducer."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from trio_websocket import ConnectionClosed, wrap_server_stream

from protocol import InboundAck, encode_frame
from relay_runtime._transport import RelaySocket
from relay_runtime._websocket import wrap_client_stream
from relay_runtime.testing import Harness, open_harness


async def test_a_full_write_queue_does_not_drop_an_inbound_ack(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Chaos seed 2 with ``outbox_max=64`` hung: 11 deliveries never acked on a live socket.

    After a reconnect the connector replays every un-acked entry; the gateway acks the
    replays of completed deliveries all at once, next to the hellos, the outbox flush and
    the turns' sends. ``inbound_ack`` is fire-and-forget (``Supervisor.send_nowait`` ->
    ``RelaySocket.enqueue_nowait``), and a full write queue refused it: the ack was counted
    in ``ack_failures`` and dropped, on the assumption that a drop is why and the connector
    will redeliver. With the socket still up the connector never redelivers (RC §4.6: an
    entry is replayed on the next connection), so the delivery stays un-acked for as long
    as the socket lives, holding a slot of the connector's drain window.
    """
    acks = [encode_frame(InboundAck(buffer_id=f"buf-{n}")) for n in range(5)]
    client, server = trio.testing.memory_stream_pair()
    received: list[str] = []
    all_in = trio.Event()

    async def connector() -> None:
        request = await wrap_server_stream(nursery, server)
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                assert isinstance(message, str)
                received.append(message)
                if len(received) == len(acks):
                    all_in.set()
        except ConnectionClosed:
            pass

    nursery.start_soon(connector)
    ws = await wrap_client_stream(nursery, client, "relay.test", "/relay")
    socket = RelaySocket(
        ws, max_frame_bytes=65536, ping_interval_s=30, ping_timeout_s=60, write_buffer=2
    )
    # A burst while the writer is busy: more frames than its queue holds.
    jobs = [socket.enqueue_nowait(text) for text in acks]
    assert all(job is not None for job in jobs), "an inbound_ack was refused on a live socket"
    nursery.start_soon(socket.writer)
    with trio.fail_after(5):
        await all_in.wait()
    assert sorted(received) == sorted(acks)


async def test_a_reply_that_waits_long_for_outbox_room_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Chaos with ``outbox_max=64, outbound_timeout_s=1`` lost 33-97 replies per 1,000.

    A turn's ``send`` waited at most ``room_wait_s`` (= ``outbound_timeout_s``) for room in a
    full outbox, then got ``relay outbox full``; ``Dispatcher._run_turn`` does not look at
    ``turn.reply``'s result, so it recorded the turn completed and acked its inbound: the
    reply was gone and nothing would run the turn again. Now a turn's reply waits for room
    for as long as the turn may run (waiters in arrival order). Here: the link goes down in
    the middle of a turn that replies twice into an outbox of one entry, and comes back only
    long after the old bound.
    """
    harness_box: list[Harness] = []

    async def agent(turn: Any) -> None:
        connector = harness_box[0].connector
        connector.descriptor_mode = "none"  # the re-dial's handshakes never complete
        await connector.drop()
        await turn.reply("one")  # queued: the outbox is now full
        await turn.reply("two")  # waits for room: the link is back only after 60 s

    async def link_comes_back() -> None:
        await trio.sleep(60)  # twelve times the old bound (outbound_timeout_s)
        harness_box[0].connector.descriptor_mode = "valid"
        await harness_box[0].connector.drop()  # end the handshake that will never finish

    async with open_harness(agent, outbox_max=1, outbound_timeout_s=5.0) as harness:
        harness_box.append(harness)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link_comes_back)
            said = await harness.say("hello", timeout_s=600)
        with trio.fail_after(60):
            await harness.gateway.replies.wait_empty()
        posted = [m.content for m in harness.connector.messages.values()]
        stats = harness.gateway.replies.stats()
    assert said.allowed
    assert posted == ["one", "two"]
    assert stats["replies_waited_for_outbox_room"] == 1
