"""The reference connector's ``outbound`` is idempotent by ``requestId`` per gateway (RC §6.2).

The gateway's outbox re-sends a queued reply with its stored ``requestId`` after a drop, so
the connector must answer a repeat with the first result and never egress it twice. Real
loopback sockets and the real clock; every wait is bounded and synchronises on frames or on
``connector.wait_for``.
"""

from __future__ import annotations

import pytest
import trio

from protocol import Edit, FollowUp, Outbound, OutboundResult, Send
from relay_runtime.connector import Delay, Fail, ReferenceConnector, Succeed

from .peer import GATEWAY, SECONDARY, SECRET, Peer, dial, good_headers
from .test_server import LIMIT, ready, start

RID = "a" * 32


async def send(peer: Peer, action: object, request_id: str) -> dict[str, object]:
    """One ``outbound`` and its result (the next frame must be that result)."""
    await peer.send(Outbound(request_id=request_id, action=action))  # type: ignore[arg-type]
    result = await peer.expect(OutboundResult)
    assert result.request_id == request_id
    return dict(result.result)


async def test_repeat_after_a_drop_gets_the_first_result_and_egresses_nothing(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await peer.send(Outbound(request_id=RID, action=Send(chat_id="c1", content="hi")))
            # The connector egressed it; the drop comes before we read the result.
            await connector.wait_for(lambda: len(connector.messages) == 1)
            assert await connector.drop(GATEWAY) == 1
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            again = await send(peer, Send(chat_id="c1", content="hi"), RID)
    (message_id,) = connector.messages
    assert again == {"success": True, "message_id": message_id}
    assert connector.messages[message_id].content == "hi"
    assert connector.duplicate_outbounds == 1
    # Both frames were received (and recorded as such); only one was performed.
    assert [o.request_id for o in connector.outbounds] == [RID, RID]


async def test_a_repeat_takes_no_scripted_outcome(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            first = await send(peer, Send(chat_id="c1", content="x"), RID)
            connector.outcomes.push("send", Fail("egress declined: quota"))
            repeat = await send(peer, Send(chat_id="c1", content="x"), RID)
            fresh = await send(peer, Send(chat_id="c1", content="y"), "b" * 32)
    assert repeat == first
    assert fresh == {"success": False, "error": "egress declined: quota"}
    assert len(connector.messages) == 1
    assert connector.duplicate_outbounds == 1


async def test_repeat_while_the_first_is_still_delayed_egresses_once(nursery):
    connector = await start(nursery)
    connector.outcomes.push("follow_up", Delay(0.2, Succeed()))
    action = FollowUp(session_key="k", kind="discord.interaction", content="later")
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await peer.send(Outbound(request_id=RID, action=action))
            await peer.send(Outbound(request_id=RID, action=action))
            results = [(await peer.expect(OutboundResult)).result for _ in range(2)]
    (message_id,) = connector.messages
    assert results == [{"success": True, "message_id": message_id}] * 2
    assert connector.duplicate_outbounds == 1


async def test_a_failed_attempt_is_not_remembered_so_its_retry_is_performed(nursery):
    connector = await start(nursery)
    connector.outcomes.push("send", Fail("relay busy", retryable=True))
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            failed = await send(peer, Send(chat_id="c1", content="x"), RID)
            retried = await send(peer, Send(chat_id="c1", content="x"), RID)
    assert failed == {"success": False, "error": "relay busy", "retryable": True}
    assert retried["success"] is True
    assert list(connector.messages) == [retried["message_id"]]
    assert connector.duplicate_outbounds == 0


async def test_a_repeated_edit_is_applied_once(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            sent = await send(peer, Send(chat_id="c1", content="v1"), "1" * 32)
            message_id = str(sent["message_id"])
            edit = Edit(chat_id="c1", message_id=message_id, content="v2")
            results = [await send(peer, edit, "2" * 32) for _ in range(2)]
    assert results == [{"success": True}] * 2
    assert connector.messages[message_id].edits == 1
    assert connector.duplicate_outbounds == 1


async def test_request_ids_are_remembered_per_gateway(nursery):
    connector = await start(nursery, secrets={"gw-a": SECRET, "gw-b": SECONDARY})
    with trio.fail_after(LIMIT):
        async with (
            dial(connector.url, good_headers("gw-a", SECRET)) as a,
            dial(connector.url, good_headers("gw-b", SECONDARY)) as b,
        ):
            from_a = await send(a, Send(chat_id="c1", content="a"), RID)
            from_b = await send(b, Send(chat_id="c1", content="b"), RID)
    assert from_a["message_id"] != from_b["message_id"]
    assert {m.gateway_id for m in connector.messages.values()} == {"gw-a", "gw-b"}
    assert connector.duplicate_outbounds == 0


async def test_request_id_memory_is_a_bounded_lru(nursery):
    connector = await start(nursery, request_id_memory=2)
    ids = {name: name * 32 for name in "abc"}
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            first = {n: await send(peer, Send(chat_id="c", content=n), ids[n]) for n in "ab"}
            # Seeing "a" again makes it the most recent, so "c" pushes out "b".
            assert await send(peer, Send(chat_id="c", content="a"), ids["a"]) == first["a"]
            await send(peer, Send(chat_id="c", content="c"), ids["c"])
            a_again = await send(peer, Send(chat_id="c", content="a"), ids["a"])
            b_again = await send(peer, Send(chat_id="c", content="b"), ids["b"])
    assert a_again == first["a"]
    assert b_again["message_id"] != first["b"]["message_id"]
    assert sorted(m.content for m in connector.messages.values()) == ["a", "b", "b", "c"]
    assert connector.duplicate_outbounds == 2


def test_request_id_memory_must_hold_at_least_one_id():
    with pytest.raises(ValueError, match="request_id_memory must be >= 1, not 0"):
        ReferenceConnector(request_id_memory=0)
