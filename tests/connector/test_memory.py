"""The reference connector without sockets: ``serve_stream``, ``memory_dialer``, bufferIds.

Everything here runs over ``trio.testing.memory_stream_pair`` under ``autojump_clock``, so the
waits are virtual and a hang is an immediate ``TooSlowError``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected, WebSocketConnection, wrap_client_stream

from protocol import DescriptorFrame, Inbound, MessageEvent, SessionSource
from relay_runtime import Gateway, Turn, run_gateway
from relay_runtime.config import GatewayConfig
from relay_runtime.connector import ReferenceConnector
from relay_runtime.testing import autojump_around_threads

from .peer import GATEWAY, SECRET, Peer, expired_headers, good_headers

LIMIT = 30  # virtual seconds


def event(text: str) -> MessageEvent:
    source = SessionSource(platform="discord", chat_id="c1", chat_type="dm", user_id="7")
    return MessageEvent(text=text, source=source, message_id=f"msg-{text}")


async def open_peer(
    nursery: trio.Nursery,
    connector: ReferenceConnector,
    headers: list[tuple[bytes, bytes]],
) -> WebSocketConnection:
    """A raw gateway-side socket over a memory stream pair that ``serve_stream`` serves."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(connector.serve_stream, server)
    return await wrap_client_stream(
        nursery,
        client,  # type: ignore[arg-type]
        "connector.test",
        "/relay",
        extra_headers=headers,
    )


async def test_serve_stream_speaks_the_relay_over_a_memory_stream(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET}, always_buffer=True)
    with trio.fail_after(LIMIT):
        peer = Peer(await open_peer(nursery, connector, good_headers()))
        await peer.hello("discord")
        descriptor = await peer.expect(DescriptorFrame)
        assert descriptor.descriptor.platform == "discord"
        conn = await connector.wait_connected(GATEWAY)
        assert not isinstance(conn.stream, trio.SocketStream)
        delivery = await connector.inject(event("hi"), gateway_id=GATEWAY)
        frame = await peer.expect(Inbound)
        assert frame.buffer_id == delivery.buffer_id
        await peer.ack(frame.buffer_id)
        await connector.wait_for(lambda: not connector.buffered(GATEWAY))


async def test_serve_stream_refuses_a_bad_token_with_401(
    autojump_clock: trio.testing.MockClock,
) -> None:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET})
    # trio-websocket raises the rejection from the socket's reader task, into its nursery.
    with trio.fail_after(LIMIT), pytest.RaisesGroup(ConnectionRejected) as caught:
        async with trio.open_nursery() as nursery:
            await open_peer(nursery, connector, expired_headers())
    rejected = caught.value.exceptions[0]
    assert isinstance(rejected, ConnectionRejected)
    assert rejected.status_code == 401
    assert [r.reason for r in connector.rejections] == ["expired"]


async def test_dropping_a_memory_socket_ends_it_for_the_peer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET})
    with trio.fail_after(LIMIT):
        peer = Peer(await open_peer(nursery, connector, good_headers()))
        await peer.hello("discord")
        await peer.expect(DescriptorFrame)
        conn = await connector.wait_connected(GATEWAY)
        assert await connector.drop(GATEWAY) == 1
        await connector.wait_for(lambda: not conn.open)
        assert conn.close_code == 1006


async def echo(turn: Turn) -> str:
    return f"re: {turn.text}"


def gateway_config(tmp_path: Path, **overrides: object) -> GatewayConfig:
    values: dict[str, object] = {
        "relay_url": "ws://connector.invalid",
        "gateway_id": GATEWAY,
        "secret": SECRET,
        "state_dir": tmp_path,
        "trust": "open",
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.5,
    }
    values.update(overrides)
    return GatewayConfig(**values)  # type: ignore[arg-type]


async def test_run_gateway_dials_through_the_memory_dialer(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET}, always_buffer=True)
    async with trio.open_nursery() as nursery:
        # The gateway's SQLite work runs in threads: keep autojump from firing meanwhile.
        nursery.start_soon(autojump_around_threads, autojump_clock)
        with trio.fail_after(LIMIT):
            gateway: Gateway = await nursery.start(
                lambda task_status: run_gateway(
                    gateway_config(tmp_path),
                    echo,
                    dialer=connector.memory_dialer(nursery),
                    task_status=task_status,
                )
            )
            assert gateway.state == "ready"
            delivery = await connector.inject(event("hello"), gateway_id=GATEWAY)
            await connector.wait_for(lambda: delivery.buffer_id in connector.inbound_acks)
            assert [m.content for m in connector.messages.values()] == ["re: hello"]
            # The URL only names the upgrade's host and path: no socket was opened.
            assert connector.connections[0].hellos[0].platform == "relay"
            handshakes = gateway.supervisor.stats.handshakes
            await connector.drop(GATEWAY)
            await gateway.supervisor.wait_ready(after=handshakes)
            assert len(connector.connections) == 2
        nursery.cancel_scope.cancel()


def test_buffer_ids_carry_a_random_run_prefix_by_default() -> None:
    first, second = ReferenceConnector(), ReferenceConnector()
    assert re.fullmatch(r"[0-9a-f]{8}", first.buffer_prefix)
    assert first.buffer_prefix != second.buffer_prefix


async def test_buffer_ids_are_buf_prefix_n_and_unique_per_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ids: list[str | None] = []
    for prefix in ("run-a", "run-b"):
        connector = ReferenceConnector(secrets={GATEWAY: SECRET}, buffer_prefix=prefix)
        deliveries = [await connector.inject(event(t), gateway_id=GATEWAY) for t in "xy"]
        ids.extend(d.buffer_id for d in deliveries)
    assert ids == ["buf-run-a-1", "buf-run-a-2", "buf-run-b-1", "buf-run-b-2"]


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "x" * 65, 7])
def test_a_bad_buffer_prefix_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match="buffer_prefix must be 1-64 of"):
        ReferenceConnector(buffer_prefix=bad)  # type: ignore[arg-type]
