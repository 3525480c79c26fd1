"""The gateway's WebSocket client (relay_runtime/_websocket.py) against trio-websocket's server
over memory streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection

from protocol._websocket import accept_token
from relay_runtime._websocket import WebSocketClient, wrap_client_stream


async def pair(
    nursery: trio.Nursery, **kw: int
) -> tuple[WebSocketClient, WebSocketConnection, trio.testing.MemorySendStream]:
    """Our client and trio-websocket's server end; also the server's raw send stream."""
    c2s_send, c2s_recv = trio.testing.memory_stream_one_way_pair()
    s2c_send, s2c_recv = trio.testing.memory_stream_one_way_pair()
    accepted: list[WebSocketConnection] = []

    async def server() -> None:
        request = await trio_websocket.wrap_server_stream(
            nursery, trio.StapledStream(s2c_send, c2s_recv)
        )
        accepted.append(await request.accept())

    nursery.start_soon(server)
    client = await wrap_client_stream(
        nursery, trio.StapledStream(c2s_send, s2c_recv), "relay.test", "/relay", **kw
    )
    await trio.testing.wait_all_tasks_blocked()
    return client, accepted[0], s2c_send


async def test_messages_both_ways_and_a_batch_in_order(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client, server, _ = await pair(nursery)
    await client.send_texts(["a", "b", "c"])
    await client.send_message(b"\x00bin")
    assert [await server.get_message() for _ in range(4)] == ["a", "b", "c", b"\x00bin"]
    await server.send_message("down")
    await server.send_message(b"bytes")
    assert [await client.get_message(), await client.get_message()] == ["down", b"bytes"]


async def test_ping_waits_for_the_pong_and_a_server_ping_is_answered(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client, server, _ = await pair(nursery)
    nursery.start_soon(server.get_message)  # the server's reader answers pings meanwhile
    with trio.fail_after(1):
        await client.ping(b"one")
    with trio.fail_after(1):
        await server.ping(b"two")  # our reader answered it
    client._pings[b"dup"] = trio.Event()
    with pytest.raises(ValueError, match="already in flight"):
        await client.ping(b"dup")


async def test_the_servers_close_ends_reading_with_its_code_after_queued_messages(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client, server, _ = await pair(nursery)
    await server.send_message("last")
    await server.aclose(4401, "relay disabled")
    assert await client.get_message() == "last"
    with pytest.raises(ConnectionClosed) as caught:
        await client.get_message()
    assert caught.value.reason.code == 4401
    assert caught.value.reason.reason == "relay disabled"
    with pytest.raises(ConnectionClosed):
        await client.send_texts(["too late"])


async def test_our_close_waits_for_the_echo_and_fails_reads_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client, server, _ = await pair(nursery)

    async def server_reads() -> None:
        with pytest.raises(ConnectionClosed) as caught:
            await server.get_message()
        assert caught.value.reason.code == 1011

    nursery.start_soon(server_reads)
    with trio.fail_after(1):
        await client.aclose(1011, "keepalive timeout")
    assert client.closed is not None and client.closed.code == 1011
    with pytest.raises(ConnectionClosed):
        await client.get_message()
    await client.aclose()  # a second close returns


async def test_a_server_that_never_echoes_is_bounded_by_the_callers_scope(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client, _server, raw = await pair(nursery)
    raw.send_all_hook = None  # the server's bytes (its echo) never reach the client,
    raw.close_hook = None  # nor the end of its stream
    with trio.move_on_after(5) as scope:
        await client.aclose(1000, "bye")
    assert scope.cancelled_caught
    assert client.closed is not None and client.closed.code == 1000
    with pytest.raises(ConnectionClosed):
        await client.get_message()


async def test_a_protocol_error_from_the_server_closes_1002(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client, server, _ = await pair(nursery)
    # A masked frame from a server (RFC 6455 section 5.1), written under the server's own stream.
    await server._stream.send_all(bytes([0x81, 0x81, 0, 0, 0, 0]) + b"x")
    with pytest.raises(ConnectionClosed) as caught:
        await client.get_message()
    assert caught.value.reason.code == 1002
    assert "masked" in (caught.value.reason.reason or "")


async def test_a_message_over_the_limit_closes_1009(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client, server, _ = await pair(nursery, max_message_size=16)
    await server.send_message("x" * 17)
    with pytest.raises(ConnectionClosed) as caught:
        await client.get_message()
    assert caught.value.reason.code == 1009


async def test_a_dead_stream_ends_with_1006(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client, server, _ = await pair(nursery)
    await server._stream.aclose()
    with pytest.raises(ConnectionClosed) as caught:
        await client.get_message()
    assert caught.value.reason.code == 1006


async def test_a_rejected_upgrade_raises_with_its_status(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def server() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_stream)
        await request.reject(401, body=b"bad token")

    nursery.start_soon(server)
    with pytest.raises(ConnectionRejected) as caught:
        await wrap_client_stream(nursery, client_stream, "relay.test", "/relay")
    assert caught.value.status_code == 401
    assert caught.value.body == b"bad token"


async def test_a_stream_that_closes_during_the_handshake_is_a_handshake_error(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def server() -> None:
        await server_stream.receive_some()
        await server_stream.aclose()

    nursery.start_soon(server)
    with pytest.raises(HandshakeError):
        await wrap_client_stream(nursery, client_stream, "relay.test", "/relay")


async def test_a_close_sent_with_the_handshake_answer_is_seen_before_the_stream_ends(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """A server that accepts, closes 4401 (refused credentials) and hangs up, all in one
    write: the close frame comes in the same read as the 101 and must not become a 1006."""
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def server() -> None:
        request = await server_stream.receive_some()
        key = next(
            line.split(b": ", 1)[1]
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        answer = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_token(key) + b"\r\n\r\n"
        )
        close = bytes([0x88, 14]) + (4401).to_bytes(2, "big") + b"unauthorized"
        await server_stream.send_all(answer + close)
        await server_stream.aclose()

    nursery.start_soon(server)
    client = await wrap_client_stream(nursery, client_stream, "relay.test", "/relay")
    with pytest.raises(ConnectionClosed) as caught:
        await client.get_message()
    assert (caught.value.reason.code, caught.value.reason.reason) == (4401, "unauthorized")
