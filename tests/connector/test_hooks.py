"""The reference connector's public hooks: ``on_outbound``, ``on_going_idle``, ``clear_messages``.

Real loopback sockets and the real clock; every wait is bounded and synchronises on frames.
"""

from __future__ import annotations

import pytest
import trio

from protocol import DescriptorFrame, Edit, GoingIdle, GoingIdleAck, Outbound, OutboundResult, Send
from relay_runtime.connector import Connection, ReferenceConnector

from .peer import GATEWAY, SECRET, Peer, dial, good_headers

LIMIT = 10  # seconds; only hit when something is broken


async def start(nursery: trio.Nursery, **options: object) -> ReferenceConnector:
    connector = ReferenceConnector(secrets={GATEWAY: SECRET}, **options)  # type: ignore[arg-type]
    await nursery.start(connector.serve)
    return connector


async def ready(connector: ReferenceConnector, peer: Peer) -> None:
    await peer.hello("discord")
    await peer.expect(DescriptorFrame)
    await connector.wait_for(lambda: connector.current(GATEWAY) is not None)


async def test_on_outbound_sees_every_outbound_with_its_connection_before_the_answer(
    nursery: trio.Nursery,
) -> None:
    seen: list[tuple[int, str, int]] = []
    connector: ReferenceConnector | None = None

    def observe(conn: Connection, frame: Outbound) -> None:
        assert connector is not None
        # Observed before the answer: nothing has been sent for this request yet.
        answered = sum(isinstance(s.frame, OutboundResult) for s in connector.sent)
        seen.append((conn.id, frame.request_id, answered))

    connector = await start(nursery, on_outbound=observe)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await peer.send(Outbound(request_id="r1", action=Send("c1", "hi")))
            first = await peer.expect(OutboundResult)
            # A repeat is observed too, and answered with the first result.
            await peer.send(Outbound(request_id="r1", action=Send("c1", "hi")))
            repeat = await peer.expect(OutboundResult)
    conn_id = connector.connections[0].id
    assert seen == [(conn_id, "r1", 0), (conn_id, "r1", 1)]
    assert repeat.result == first.result
    assert connector.duplicate_outbounds == 1


async def test_a_failing_on_outbound_observer_is_logged_and_the_frame_still_answered(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(conn: Connection, frame: Outbound) -> None:
        raise RuntimeError("observer bug")

    connector = await start(nursery, on_outbound=broken)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await peer.send(Outbound(request_id="r1", action=Send("c1", "hi")))
            result = await peer.expect(OutboundResult)
    assert result.result["success"] is True
    assert "on_outbound observer failed" in caplog.text


@pytest.mark.parametrize("handled", [True, False])
async def test_on_going_idle_can_take_over_the_frame_or_let_the_connector_ack(
    nursery: trio.Nursery, handled: bool
) -> None:
    calls: list[int] = []

    async def hook(conn: Connection) -> bool:
        calls.append(conn.id)
        if handled:
            await connector.drop(conn.gateway_id)
        return handled

    connector = await start(nursery)
    connector.on_going_idle = hook  # settable after construction too
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await peer.send(GoingIdle())
            if handled:
                await connector.wait_for(lambda: not connector.connections[0].open)
            else:
                await peer.expect(GoingIdleAck)
    assert calls == [connector.connections[0].id]
    assert connector.is_buffered_only(GATEWAY) is not handled
    acks = [s for s in connector.sent if isinstance(s.frame, GoingIdleAck)]
    assert len(acks) == (0 if handled else 1)


async def test_clear_messages_forgets_posted_messages_and_keeps_the_rest(
    nursery: trio.Nursery,
) -> None:
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await peer.send(Outbound(request_id="r1", action=Send("c1", "hi")))
            posted = await peer.expect(OutboundResult)
            message_id = posted.result["message_id"]
            assert list(connector.messages) == [message_id]
            connector.clear_messages()
            assert dict(connector.messages) == {}
            assert len(connector.outbounds) == 1  # records are cleared separately
            await peer.send(Outbound(request_id="r2", action=Edit("c1", message_id, "edited")))
            edit = await peer.expect(OutboundResult)
    assert edit.result["success"] is False
    assert "unknown message" in edit.result["error"]
