"""Runtime test helpers: a scripted connector peer the supervisor dials over memory streams.

The peer is real trio-websocket (``wrap_server_stream``) on the far end of an in-memory
stream pair, so the gateway's real client code runs unchanged under ``autojump_clock``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay_runtime._websocket import WebSocketClient, wrap_client_stream
from relay_runtime.config import GatewayConfig

SECRET = "s" * 40
GATEWAY_ID = "gw-test"

JSON = dict[str, Any]


def descriptor(platform: str = "relay", **overrides: Any) -> JSON:
    """A valid descriptor object for ``platform``."""
    d: JSON = {
        "contract_version": 1,
        "platform": platform,
        "label": platform.title(),
        "max_message_length": 2000,
        "supports_draft_streaming": False,
        "supports_edit": True,
        "supports_threads": False,
        "markdown_dialect": "plain",
        "len_unit": "chars",
    }
    d.update(overrides)
    return d


def make_config(**overrides: Any) -> GatewayConfig:
    """A gateway config for tests: credentials set unless overridden."""
    values: JSON = {
        "relay_url": "ws://relay.test",
        "gateway_id": GATEWAY_ID,
        "secret": SECRET,
    }
    values.update(overrides)
    return GatewayConfig(**values)


@attrs.define(eq=False)
class PeerConn:
    """The connector's end of one accepted socket."""

    ws: WebSocketConnection
    headers: dict[str, str]
    opened_at: float
    frames: list[JSON] = attrs.field(factory=list)
    closed: trio.Event = attrs.field(factory=trio.Event)
    close_code: int | None = None
    close_reason: str | None = None
    #: Set when a frame arrives or the socket ends (renewed by each wait in :meth:`next`).
    arrived: trio.Event = attrs.field(factory=trio.Event)

    async def send(self, obj: JSON) -> None:
        """Send one frame (compact JSON + newline) to the gateway."""
        await self.ws.send_message(json.dumps(obj, separators=(",", ":")) + "\n")

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send_message(text)

    async def next(self, frame_type: str, *, after: int = 0) -> JSON:
        """Wait for the first frame of ``frame_type`` at index >= ``after``."""
        while True:
            for frame in self.frames[after:]:
                if frame.get("type") == frame_type:
                    return frame
            if self.closed.is_set():
                raise AssertionError(f"socket closed before a {frame_type!r} frame arrived")
            self.arrived = trio.Event()
            await self.arrived.wait()

    def of_type(self, frame_type: str) -> list[JSON]:
        return [f for f in self.frames if f.get("type") == frame_type]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.aclose(code, reason)

    def got(self, frame: JSON) -> None:
        """Record a frame the gateway sent (the connector calls this as frames arrive)."""
        self.frames.append(frame)
        self.arrived.set()

    def ended(self) -> None:
        """The socket is over: wake whoever waits for a frame."""
        self.closed.set()
        self.arrived.set()


#: How the peer answers a dial: "accept", an HTTP status to reject with, or "refuse"
#: (the TCP connect fails).
DialDecision = str | int
FrameHandler = Callable[[PeerConn, JSON], Awaitable[None]]


class FakeConnector:
    """A scripted connector: answers dials and frames, records everything it saw."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.conns: list[PeerConn] = []
        self.dial_times: list[float] = []
        self.dial_headers: list[dict[str, str]] = []
        self.decide: Callable[[int], DialDecision] = lambda n: "accept"
        #: Reply to each ``hello`` with a descriptor (a dict, or None for no reply).
        self.descriptor_for: Callable[[int, str], JSON | None] = lambda n, p: descriptor(p)
        self.on_frame: FrameHandler | None = None
        self._conn_arrived = trio.Event()

    async def dialer(
        self,
        nursery: trio.Nursery,
        url: str,
        *,
        headers: list[tuple[bytes, bytes]],
        max_message_size: int,
    ) -> WebSocketConnection:
        n = len(self.dial_times)
        self.dial_times.append(trio.current_time())
        self.dial_headers.append({k.decode(): v.decode() for k, v in headers})
        decision = self.decide(n)
        if decision == "refuse":
            raise OSError("connection refused")
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._serve, server, decision, n)
        return await wrap_client(nursery, client, headers, max_message_size)

    async def _serve(self, stream: trio.abc.Stream, decision: DialDecision, n: int) -> None:
        request = await trio_websocket.wrap_server_stream(self.nursery, stream)
        if isinstance(decision, int):
            await request.reject(decision)
            return
        ws = await request.accept()
        conn = PeerConn(
            ws,
            {k.decode().lower(): v.decode() for k, v in request.headers},
            trio.current_time(),
        )
        self.conns.append(conn)
        self._conn_arrived.set()
        self._conn_arrived = trio.Event()
        try:
            while True:
                message = await ws.get_message()
                text = message if isinstance(message, str) else message.decode()
                for line in text.split("\n"):
                    if not line:
                        continue
                    frame = json.loads(line)
                    conn.got(frame)
                    await self._react(conn, n, frame)
        except ConnectionClosed as exc:
            if exc.reason is not None:
                conn.close_code, conn.close_reason = exc.reason.code, exc.reason.reason
        finally:
            conn.ended()

    async def _react(self, conn: PeerConn, n: int, frame: JSON) -> None:
        if frame.get("type") == "hello":
            d = self.descriptor_for(n, frame["platform"])
            if d is not None:
                await conn.send({"type": "descriptor", "descriptor": d})
        if self.on_frame is not None:
            await self.on_frame(conn, frame)

    async def connection(self, index: int) -> PeerConn:
        """Wait for the ``index``-th accepted connection (0-based)."""
        while len(self.conns) <= index:
            await self._conn_arrived.wait()
        return self.conns[index]


async def wrap_client(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    headers: list[tuple[bytes, bytes]],
    max_message_size: int,
) -> WebSocketClient:
    """The gateway's client on ``stream`` (a memory stream in these tests)."""
    return await wrap_client_stream(
        nursery,
        stream,
        "relay.test",
        "/relay",
        extra_headers=headers,
        max_message_size=max_message_size,
    )


@pytest.fixture
def connector(nursery: trio.Nursery) -> FakeConnector:
    return FakeConnector(nursery)
