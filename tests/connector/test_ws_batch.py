"""The connector's batched writes and reads over trio-websocket (relay_runtime/connector/_ws_batch.py)."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import WebSocketConnection

from relay_runtime.connector._ws_batch import _EagerSend, can_batch, eager_reads, send_texts
from tests.streams import CountingStream


async def ws_pair(
    nursery: trio.Nursery, message_queue_size: int = 1
) -> tuple[WebSocketConnection, WebSocketConnection]:
    """A trio-websocket client and server over a memory stream pair."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    accepted: list[WebSocketConnection] = []

    async def server() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_stream)
        accepted.append(await request.accept())

    nursery.start_soon(server)
    client = await trio_websocket.wrap_client_stream(
        nursery,
        client_stream,  # type: ignore[arg-type]
        "relay.test",
        "/relay",
        message_queue_size=message_queue_size,
    )
    await trio.testing.wait_all_tasks_blocked()
    return client, accepted[0]


async def test_send_texts_falls_back_to_one_send_message_per_text() -> None:
    class Fake:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send_message(self, message: str) -> None:
            self.sent.append(message)

    fake = Fake()
    assert not can_batch(fake)
    await send_texts(fake, ["a\n", "b\n"])  # type: ignore[arg-type]
    assert fake.sent == ["a\n", "b\n"]


async def test_send_texts_refuses_a_closed_connection(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    ws, peer = await ws_pair(nursery)

    async def drain_peer() -> None:
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            await peer.get_message()

    nursery.start_soon(drain_peer)
    await ws.aclose(1000, "bye")
    with pytest.raises(trio_websocket.ConnectionClosed):
        await send_texts(ws, ['{"type":"x"}\n'])


async def test_send_texts_on_a_broken_stream_closes_1006_and_releases_the_lock(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    ws, _peer = await ws_pair(nursery)

    class Broken(CountingStream):
        async def send_all(self, data: bytes) -> None:
            raise trio.BrokenResourceError("peer went away")

    ws._stream = Broken(ws._stream)  # type: ignore[assignment]
    with pytest.raises(trio_websocket.ConnectionClosed) as caught:
        await send_texts(ws, ['{"type":"x"}\n', '{"type":"y"}\n'])
    assert caught.value.reason.code == 1006
    assert not ws._stream_lock.locked()


async def test_eager_reads_hand_over_every_message_already_read_in_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    ws, peer = await ws_pair(nursery, message_queue_size=4)
    take = eager_reads(ws)
    assert take is not None
    assert eager_reads(ws) is not None  # a second call does not wrap twice
    assert take() is None  # nothing read yet: the caller waits in get_message
    for i in range(6):  # more than the queue holds: trio-websocket's reader waits for room
        await peer.send_message(f"m{i}")
    await trio.testing.wait_all_tasks_blocked()
    got = []
    while (message := take()) is not None:
        got.append(message)
    # The four queued, plus the one the waiting reader task handed over as room came.
    assert got == ["m0", "m1", "m2", "m3", "m4"]
    await trio.testing.wait_all_tasks_blocked()  # room again: the reader task goes on
    assert [take(), take()] == ["m5", None]
    await ws.aclose(1000, "bye")
    with pytest.raises(trio_websocket.ConnectionClosed):
        take()


async def test_eager_send_does_not_checkpoint_with_room_and_waits_when_full(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    send, receive = trio.open_memory_channel[str | bytes](1)
    eager = _EagerSend(send)
    with trio.CancelScope() as scope:
        scope.cancel()
        await eager.send("a")  # room: no checkpoint, so the cancellation is not delivered
    assert receive.receive_nowait() == "a"
    await eager.send("b")
    sent = trio.Event()

    async def third() -> None:
        await eager.send("c")
        sent.set()

    nursery.start_soon(third)
    await trio.testing.wait_all_tasks_blocked()
    assert not sent.is_set()  # full: it waits, the channel stays bounded
    assert receive.receive_nowait() == "b"
    await sent.wait()
    assert receive.receive_nowait() == "c"
    assert eager.statistics().max_buffer_size == 1  # everything else is the channel's


async def test_send_texts_writes_a_batch_with_one_stream_write_in_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    ws, peer = await ws_pair(nursery)
    assert can_batch(ws)
    counting = CountingStream(ws._stream)
    ws._stream = counting  # type: ignore[assignment]
    texts = [f'{{"type":"t{i}"}}\n' for i in range(10)]
    await send_texts(ws, texts)
    assert [await peer.get_message() for _ in texts] == texts
    assert counting.writes == 1
