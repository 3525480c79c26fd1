"""A raw gateway-side WebSocket peer for the connector tests (no gateway runtime)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from protocol import FrameDecoder, FrameError, encode_frame, make_token, make_upgrade_token
from protocol._frames import Frame, GatewayFrame, Hello, InboundAck

T = TypeVar("T")

SECRET = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
SECONDARY = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
GATEWAY = "gw-test"


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    """The upgrade header carrying ``token``."""
    return [(b"authorization", f"Bearer {token}".encode())]


def good_headers(gateway_id: str = GATEWAY, secret: str = SECRET) -> list[tuple[bytes, bytes]]:
    """A fresh, valid upgrade token for ``gateway_id``."""
    return bearer(make_upgrade_token(gateway_id, secret))


def expired_headers(gateway_id: str = GATEWAY, secret: str = SECRET) -> list[tuple[bytes, bytes]]:
    """A correctly signed token that expired long ago."""
    return bearer(make_token(gateway_id, secret, 300, now=1_000_000))


class Peer:
    """One gateway socket: write frames, read decoded frames in order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._decoder = FrameDecoder()
        self._pending: list[Frame | FrameError] = []

    async def send(self, frame: GatewayFrame) -> None:
        await self.ws.send_message(encode_frame(frame))

    async def hello(self, *platforms: str) -> None:
        for platform in platforms or ("relay",):
            await self.send(Hello(platform=platform, bot_id="b1"))

    async def next(self) -> Frame | FrameError:
        while not self._pending:
            message = await self.ws.get_message()
            if isinstance(message, str):
                self._pending.extend(self._decoder.feed_text(message))
            else:
                self._pending.extend(self._decoder.feed_bytes(message))
        return self._pending.pop(0)

    async def expect(self, kind: type[T]) -> T:
        frame = await self.next()
        assert isinstance(frame, kind), f"expected {kind.__name__}, got {frame!r}"
        return frame

    async def ack(self, buffer_id: str | None) -> None:
        assert buffer_id, "expected a buffered delivery"
        await self.send(InboundAck(buffer_id=buffer_id))


@asynccontextmanager
async def dial(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> AsyncIterator[Peer]:
    """Open a gateway socket to ``url`` (a ``ws://127.0.0.1:<port>/<path>`` URL).

    Built on ``wrap_client_stream`` over a stream this helper owns and always closes:
    ``open_websocket_url`` leaves its TCP socket open when the upgrade is rejected. A
    rejection surfaces as ``ConnectionRejected`` itself, not wrapped in a group.
    """
    parsed = urlsplit(url)
    assert parsed.hostname == "127.0.0.1"
    assert parsed.port is not None
    stream = await trio.open_tcp_stream(parsed.hostname, parsed.port)
    try:
        async with stream, trio.open_nursery() as nursery:
            with trio.fail_after(5):
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    f"{parsed.hostname}:{parsed.port}",
                    parsed.path or "/",
                    extra_headers=headers or [],
                )
            graceful = True
            try:
                yield Peer(ws)
            except trio.Cancelled:
                # The socket's reader task is cancelled too, so no close handshake can
                # complete: let the stream close without one.
                graceful = False
                raise
            finally:
                if graceful:
                    with trio.move_on_after(5, shield=True):
                        await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


__all__ = [
    "GATEWAY",
    "SECONDARY",
    "SECRET",
    "Peer",
    "bearer",
    "dial",
    "expired_headers",
    "good_headers",
]
