"""One client can never take the reference connector down (RC R7, per-connection containment)."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import ConnectionClosed

from protocol import DescriptorFrame, Frame, FrameDecoder, FrameError
from relay_runtime.connector import Connection, ReferenceConnector

from .peer import GATEWAY, SECRET, Peer, dial, good_headers

LIMIT = 10


async def start(nursery: trio.Nursery) -> ReferenceConnector:
    connector = ReferenceConnector(secrets={GATEWAY: [SECRET]})
    await nursery.start(connector.serve)
    return connector


async def handshake(peer: Peer) -> None:
    await peer.hello("relay")
    await peer.expect(DescriptorFrame)


async def test_R7_decoder_exception_does_not_end_the_connection(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_feed = FrameDecoder.feed_text

    def feed_text(self: FrameDecoder, text: str) -> list[Frame | FrameError]:
        if "POISON" in text:
            raise RuntimeError("decoder bug")
        return real_feed(self, text)

    monkeypatch.setattr(FrameDecoder, "feed_text", feed_text)
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await peer.ws.send_message("POISON\n")
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)
    assert [h.platform for h in connector.hellos] == ["relay"]


async def test_an_exception_serving_one_socket_closes_it_and_the_connector_goes_on(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    connector = await start(nursery)
    calls = 0

    def on_accept(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug after the upgrade")

    connector.on_accept = on_accept
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            with pytest.raises(ConnectionClosed):
                await handshake(peer)
        async with dial(connector.url, good_headers()) as peer:
            await handshake(peer)
    assert calls >= 2
    assert "bug after the upgrade" in caplog.text
