"""The transport reader survives an exception raised while decoding one message (RC R7)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import WebSocketConnection

from protocol import Frame, FrameDecoder, FrameError, Inbound
from relay_runtime._transport import RelaySocket, frames_to
from tests.runtime.conftest import wrap_client


async def _pair(nursery: trio.Nursery) -> tuple[RelaySocket, WebSocketConnection]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    accepted: list[WebSocketConnection] = []
    done = trio.Event()

    async def server() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_stream)
        accepted.append(await request.accept())
        done.set()

    nursery.start_soon(server)
    ws = await wrap_client(nursery, client_stream, [], 1 << 24)
    await done.wait()
    sock = RelaySocket(ws, max_frame_bytes=1024, ping_interval_s=30, ping_timeout_s=60)
    return sock, accepted[0]


async def test_R7_reader_survives_a_decoder_exception(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_feed = FrameDecoder.feed_text

    def feed_text(self: FrameDecoder, text: str) -> list[Frame | FrameError]:
        if "POISON" in text:
            raise RuntimeError("decoder bug")
        return real_feed(self, text)

    monkeypatch.setattr(FrameDecoder, "feed_text", feed_text)
    sock, peer = await _pair(nursery)
    seen: list[Frame | FrameError] = []
    ended: list[Any] = []

    async def on_item(item: Frame | FrameError) -> None:
        seen.append(item)

    async def read() -> None:
        ended.append(await sock.reader(frames_to(on_item, sock.max_frame_bytes)))

    nursery.start_soon(read)
    await peer.send_message("POISON\n")
    await peer.send_message(b"POISON\n")  # the binary path goes through feed_text too
    await peer.send_message('{"type":"inbound","event":{"text":"after"}}\n')
    await peer.aclose(4000, "bye")
    await trio.testing.wait_all_tasks_blocked()
    assert [type(x) for x in seen] == [Inbound]
    assert isinstance(seen[0], Inbound) and seen[0].event.text == "after"
    assert ended and ended[0].code == 4000
