"""Runtime bugs the chaos test found, each as a minimal deterministic reproducer."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, wrap_client_stream, wrap_server_stream

from protocol.codec import encode_frame
from protocol.frames import InboundAck
from relay_runtime.testing import Harness, open_harness
from relay_runtime.transport import RelaySocket


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
    ws = await wrap_client_stream(nursery, client, "relay.test", "/relay")  # type: ignore[arg-type]
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


@pytest.mark.xfail(
    strict=True,
    reason="open: a reply refused with 'relay outbox full' is dropped while its inbound is "
    "acked (Dispatcher._run_turn ignores turn.reply's result); see the docstring",
)
async def test_a_reply_that_waited_too_long_for_outbox_room_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Chaos with ``outbox_max=64, outbound_timeout_s=1`` lost 33-97 replies per 1,000.

    A turn's ``send`` waits at most ``room_wait_s`` (= ``outbound_timeout_s``) for room in
    a full outbox (``Replies.send_waiting_for_room``), then gets ``relay outbox full``;
    ``Dispatcher._run_turn`` does not look at ``turn.reply``'s result, records the turn
    completed and acks its inbound: the reply is gone and nothing will run the turn again.
    Waiting producers also wake all at once on room and race for it (no FIFO), so under a
    flapping link one turn can wait far longer than the outbox needs to drain. Here: the link
    goes down in the middle of a turn that replies twice into an outbox of one entry.
    """
    harness_box: list[Harness] = []

    async def agent(turn: Any) -> None:
        connector = harness_box[0].connector
        connector.descriptor_mode = "none"  # the re-dial's handshake never completes
        await connector.drop()
        await turn.reply("one")  # queued: the outbox is now full
        await turn.reply("two")  # waits room_wait_s for room, then "relay outbox full"
        connector.descriptor_mode = "valid"

    async with open_harness(agent, outbox_max=1, outbound_timeout_s=5.0) as harness:
        harness_box.append(harness)
        said = await harness.say("hello", timeout_s=600)
        with trio.fail_after(60):  # the queued reply goes out with the READY's flush
            await harness.gateway.replies.wait_empty()
        posted = [m.content for m in harness.connector.messages.values()]
    assert said.allowed
    assert posted == ["one", "two"]
