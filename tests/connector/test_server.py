"""The reference connector against a raw trio-websocket gateway peer on 127.0.0.1.

Real loopback sockets and the real clock: every wait is bounded by ``trio.fail_after`` and
synchronises on frames or on ``connector.wait_for``, never on sleeps.
"""

from __future__ import annotations

import random
from functools import partial

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from protocol import (
    DescriptorFrame,
    Edit,
    FollowUp,
    FrameError,
    GetChatInfo,
    GoingIdle,
    GoingIdleAck,
    Hello,
    Inbound,
    Interrupt,
    InterruptInbound,
    MessageEvent,
    Outbound,
    OutboundResult,
    PassthroughForward,
    PassthroughForwardFrame,
    Send,
    SessionSource,
    Typing,
)
from relay_runtime.connector import (
    DISCORD,
    TELEGRAM,
    Delay,
    Fail,
    NoAnswer,
    ReferenceConnector,
    RelevancePolicy,
    Reply,
    Succeed,
)

from .peer import (
    GATEWAY,
    SECONDARY,
    SECRET,
    Peer,
    bearer,
    dial,
    expired_headers,
    good_headers,
)

LIMIT = 10  # seconds; generous for loopback, only hit when something is broken


def event(text: str, chat_id: str = "c1", **source: object) -> MessageEvent:
    source.setdefault("chat_type", "dm")
    src = SessionSource(platform="discord", chat_id=chat_id, **source)  # type: ignore[arg-type]
    return MessageEvent(text=text, source=src, message_id=f"msg-{text}")


async def start(nursery: trio.Nursery, **options: object) -> ReferenceConnector:
    options.setdefault("secrets", {GATEWAY: [SECRET, SECONDARY]})
    connector = ReferenceConnector(**options)  # type: ignore[arg-type]
    await nursery.start(connector.serve)
    return connector


async def ready(connector: ReferenceConnector, peer: Peer, *platforms: str) -> None:
    """Send the hellos, read the descriptors, and wait until the connector sees us as current."""
    await peer.hello(*(platforms or ("discord",)))
    for _ in platforms or ("discord",):
        await peer.expect(DescriptorFrame)
    await connector.wait_for(lambda: connector.current(GATEWAY) is not None)


async def request(peer: Peer, action: object, request_id: str) -> None:
    await peer.send(Outbound(request_id=request_id, action=action))  # type: ignore[arg-type]


# -- upgrade authentication -------------------------------------------------------------------


async def test_good_token_is_accepted_and_hello_gets_its_platform_descriptor(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await peer.hello("discord", "telegram", "relay", "agentschat")
            got = [(await peer.expect(DescriptorFrame)).descriptor for _ in range(4)]
    assert got[0] == DISCORD
    assert got[1] == TELEGRAM
    assert got[2].platform == "relay"
    assert got[2].label == "Relay"
    assert got[3].platform == "agentschat"  # no preset: the generic descriptor, renamed
    assert [h.platform for h in connector.hellos] == ["discord", "telegram", "relay", "agentschat"]
    assert connector.connections[0].gateway_id == GATEWAY


async def test_secondary_secret_of_a_rotation_is_accepted(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers(secret=SECONDARY)) as peer:
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)
    assert connector.rejections == []


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (good_headers(secret="wrong-secret-" * 4), "unauthorized"),
        (None, "missing"),
        (bearer("not-base64url!!!"), "malformed"),
        (good_headers(gateway_id="gw-unknown"), "unknown_gateway"),
        (expired_headers(), "expired"),
    ],
)
async def test_bad_upgrade_is_refused_with_http_401(nursery, headers, reason):
    connector = await start(nursery)
    with trio.fail_after(LIMIT), pytest.raises(ConnectionRejected) as info:
        async with dial(connector.url, headers):
            pass
    assert info.value.status_code == 401
    assert [r.reason for r in connector.rejections] == [reason]
    assert connector.connections == []


@pytest.mark.parametrize(
    ("headers", "close_reason"),
    [
        (good_headers(secret="wrong-secret-" * 4), "unauthorized"),
        (None, "unauthorized"),
        (expired_headers(), "expired"),
    ],
)
async def test_bad_upgrade_in_close_mode_is_accepted_then_closed_4401(
    nursery, headers, close_reason
):
    connector = await start(nursery, reject_mode="close")
    with trio.fail_after(LIMIT):
        async with dial(connector.url, headers) as peer:
            with pytest.raises(ConnectionClosed) as info:
                await peer.next()
    assert info.value.reason is not None
    assert info.value.reason.code == 4401
    assert info.value.reason.reason == close_reason


async def test_any_path_but_relay_is_refused_with_400(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT), pytest.raises(ConnectionRejected) as info:
        async with dial(connector.base_url + "/other", good_headers()):
            pass
    assert info.value.status_code == 400
    assert connector.rejections[0].path == "/other"


async def test_allow_unauthenticated_accepts_a_tokenless_dial_as_the_anonymous_gateway(nursery):
    connector = await start(nursery, secrets={}, allow_unauthenticated=True)
    with trio.fail_after(LIMIT):
        async with dial(connector.url) as peer:
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)
            assert (await connector.inject(event("hi"))).outcome == "live"
            frame = await peer.expect(Inbound)
    assert frame.event.text == "hi"
    assert connector.connections[0].gateway_id == ""


async def test_a_present_bearer_is_still_verified_when_unauthenticated_dials_are_allowed(nursery):
    connector = await start(nursery, allow_unauthenticated=True)
    with trio.fail_after(LIMIT), pytest.raises(ConnectionRejected):
        async with dial(connector.url, good_headers(secret="nope-" * 10)):
            pass


async def test_secrets_come_from_the_control_plane_registry(nursery):
    from relay_runtime.connector._control_plane import ControlPlaneRegistry

    registry = ControlPlaneRegistry()
    registry.pin_gateway("gw-registry", SECRET)
    connector = await start(nursery, secrets={}, registry=registry)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers("gw-registry")) as peer:
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)
    assert connector.connections[0].gateway_id == "gw-registry"


# -- handshake --------------------------------------------------------------------------------


async def test_invalid_descriptor_mode_sends_a_descriptor_no_gateway_may_accept(nursery):
    connector = await start(nursery)
    connector.descriptor_mode = "invalid"
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await peer.hello("discord")
            error = await peer.expect(FrameError)
    assert error.kind == "invalid_descriptor"
    assert connector.current(GATEWAY) is None


async def test_descriptor_mode_none_answers_hello_with_nothing(nursery):
    connector = await start(nursery)
    connector.descriptor_mode = "none"
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await peer.hello("discord")
            await request(peer, Typing(chat_id="c1"), "a" * 32)
            # The typing result comes back, and nothing came before it.
            result = await peer.expect(OutboundResult)
    assert result.request_id == "a" * 32
    assert connector.current(GATEWAY) is None


async def test_raw_descriptor_objects_are_sent_exactly(nursery):
    raw = {
        "contract_version": 1,
        "platform": "discord",
        "label": "D",
        "max_message_length": 0,
        "supports_draft_streaming": False,
        "supports_edit": True,
        "supports_threads": True,
        "markdown_dialect": "discord",
        "len_unit": "chars",
    }
    connector = await start(nursery, descriptors={"discord": raw})
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await peer.hello("discord")
            frame = await peer.expect(DescriptorFrame)
    assert frame.descriptor.max_message_length == 4096  # the gateway's reading of 0
    assert '"max_message_length":0' in connector.sent[0].text


# -- inbound, interrupts, passthrough ---------------------------------------------------------


async def test_injected_inbound_goes_live_without_buffer_id(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            e = event("hello", chat_name="General", user_id="u1")
            delivery = await connector.inject(e)
            frame = await peer.expect(Inbound)
    assert delivery.outcome == "live"
    assert frame.buffer_id is None
    assert frame.event.text == "hello"
    assert frame.event.source.chat_id == "c1"
    assert frame.event.source.user_id == "u1"
    assert frame.event.message_id == "msg-hello"


async def test_interrupt_inbound_reaches_the_gateway_and_interrupt_is_recorded(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            assert await connector.inject_interrupt("agent:main:discord:dm:c1", "c1")
            frame = await peer.expect(InterruptInbound)
            await peer.send(Interrupt(session_key="agent:main:discord:dm:c1", reason=None))
            await connector.wait_for(lambda: len(connector.interrupts) == 1)
    assert frame == InterruptInbound(session_key="agent:main:discord:dm:c1", chat_id="c1")
    assert connector.interrupts[0].reason is None
    # Nobody connected now: an interrupt is not queued.
    with trio.fail_after(LIMIT):
        await connector.wait_for(lambda: connector.current(GATEWAY) is None)
    assert not await connector.inject_interrupt("agent:main:discord:dm:c1")


async def test_passthrough_forward_carries_body_bytes_exactly(nursery):
    connector = await start(nursery)
    body = b'{"type":2,"data":{"name":"ask"}}\x00\xff\xfe'
    forward = PassthroughForward(
        platform="discord",
        bot_id="b1",
        method="POST",
        path="/interactions",
        headers=(("content-type", "application/json"), ("x-n", "1")),
        body=body,
    )
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await connector.inject_passthrough(forward)
            frame = await peer.expect(PassthroughForwardFrame)
    assert frame.forward == forward
    assert frame.forward.body == body


# -- outbound ---------------------------------------------------------------------------------


async def test_outbound_default_results_per_op(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await connector.inject(event("x", chat_id="c1", chat_name="General"))
            await peer.expect(Inbound)
            await request(peer, Send(chat_id="c1", content="first"), "1" * 32)
            sent = (await peer.expect(OutboundResult)).result
            mid = sent["message_id"]
            await request(peer, Edit(chat_id="c1", message_id=mid, content="second"), "2" * 32)
            edited = (await peer.expect(OutboundResult)).result
            await request(peer, Edit(chat_id="c1", message_id="nope", content="z"), "3" * 32)
            unknown = (await peer.expect(OutboundResult)).result
            await request(peer, Typing(chat_id="c1"), "4" * 32)
            typing = (await peer.expect(OutboundResult)).result
            await request(peer, GetChatInfo(chat_id="c1"), "5" * 32)
            info = (await peer.expect(OutboundResult)).result
            await request(peer, GetChatInfo(chat_id="c-unknown"), "6" * 32)
            info_unknown = (await peer.expect(OutboundResult)).result
            await request(peer, FollowUp(session_key="k", kind="discord.x", content="f"), "7" * 32)
            follow = (await peer.expect(OutboundResult)).result
    assert sent["success"] is True
    assert isinstance(mid, str)
    assert mid
    assert edited == {"success": True}
    assert unknown["success"] is False
    assert "nope" in unknown["error"]
    assert typing == {"success": True}
    assert info == {"chat_info": {"name": "General", "type": "dm"}}
    assert info_unknown == {"chat_info": {"name": "c-unknown", "type": "dm"}}
    assert follow["success"] is True
    assert follow["message_id"] != mid
    assert connector.messages[mid].content == "second"
    assert connector.messages[mid].edits == 1
    assert [o.request_id[0] for o in connector.outbounds] == list("1234567")


async def test_keep_records_keeps_the_newest_and_counts_on(nursery):
    """A bounded connector (as the CLI runs) keeps the newest records of each kind; posts
    keep numbering on, and an edit of a message no longer kept is answered as unknown."""
    connector = await start(nursery, keep_records=2)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await connector.inject(event("x", chat_id="c1"))
            await peer.expect(Inbound)
            ids = []
            for n in range(4):
                await request(peer, Send(chat_id="c1", content=f"m{n}"), f"{n + 1}" * 32)
                ids.append((await peer.expect(OutboundResult)).result["message_id"])
            await request(peer, Edit(chat_id="c1", message_id=ids[0], content="z"), "8" * 32)
            forgotten = (await peer.expect(OutboundResult)).result
            await request(peer, Edit(chat_id="c1", message_id=ids[3], content="z"), "9" * 32)
            kept = (await peer.expect(OutboundResult)).result
    assert [o.request_id[0] for o in connector.outbounds] == ["8", "9"]
    assert len(connector.received) == 2 and len(connector.sent) == 2
    assert list(connector.messages) == ids[2:]
    assert forgotten["success"] is False and ids[0] in forgotten["error"]
    assert kept == {"success": True}
    assert [(p.seq, p.content) for p in connector.journal] == [(4, "m3"), (5, "z")]


def test_keep_records_must_be_positive():
    with pytest.raises(ValueError, match="keep_records must be >= 1 or None, not 0"):
        ReferenceConnector(keep_records=0)


async def test_outbound_failure_reply_and_one_shot_outcomes(nursery):
    connector = await start(nursery)
    connector.outcomes.set("typing", Fail("no typing here"))
    connector.outcomes.push("send", Fail("egress declined: x", code="egress_declined"))
    connector.outcomes.push("send", Reply({"success": True, "message_id": 42}))
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            results = []
            for n, action in enumerate(
                [Send(chat_id="c", content="a")] * 3 + [Typing(chat_id="c")]
            ):
                await request(peer, action, f"{n:032x}")
                results.append((await peer.expect(OutboundResult)).result)
    declined, raw, normal, typing = results
    assert declined == {"success": False, "error": "egress declined: x", "code": "egress_declined"}
    assert raw == {"success": True, "message_id": 42}
    assert normal["success"] is True
    assert typing == {"success": False, "error": "no typing here"}


async def test_delayed_and_unanswered_outbound(nursery):
    connector = await start(nursery)
    connector.outcomes.push("send", Delay(0.2, Succeed(message_id="late")), NoAnswer())
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await request(peer, Send(chat_id="c", content="a"), "a" * 32)
            await request(peer, Send(chat_id="c", content="b"), "b" * 32)
            await request(peer, Typing(chat_id="c"), "c" * 32)
            first = await peer.expect(OutboundResult)
            second = await peer.expect(OutboundResult)
    # The typing answer overtakes the delayed send; the second send is never answered.
    assert first.request_id == "c" * 32
    assert second.request_id == "a" * 32
    assert second.result == {"success": True, "message_id": "late"}
    assert all(
        s.frame is None or getattr(s.frame, "request_id", "") != "b" * 32 for s in connector.sent
    )


async def test_tagged_outbound_keeps_its_platform_on_the_recorded_message(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer, "discord", "telegram")
            await peer.send(
                Outbound(
                    request_id="d" * 32,
                    action=Send(chat_id="t1", content="x"),
                    platform="telegram",
                    bot_id="b1",
                )
            )
            result = (await peer.expect(OutboundResult)).result
    assert connector.messages[result["message_id"]].platform == "telegram"


# -- scale-to-zero: flip, buffer, ack-gated replay --------------------------------------------


async def test_going_idle_flips_to_buffered_then_replays_in_order_ack_gated(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await peer.send(GoingIdle())
            await peer.expect(GoingIdleAck)
            assert connector.is_buffered_only(GATEWAY)
            deliveries = [await connector.inject(event(t)) for t in ("one", "two", "three")]
            await peer.ws.aclose()
        assert [d.outcome for d in deliveries] == ["buffered"] * 3
        ids = [d.buffer_id for d in deliveries]
        assert len(set(ids)) == 3

        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            seen = []
            for _ in range(3):
                frame = await peer.expect(Inbound)
                seen.append((frame.event.text, frame.buffer_id))
                # Ack-gated: nothing else is outstanding until we ack this one.
                assert [s.frame.buffer_id for s in connector.sent if isinstance(s.frame, Inbound)][
                    -1
                ] == frame.buffer_id
                await peer.ack(frame.buffer_id)
            await connector.wait_for(lambda: not connector.is_buffered_only(GATEWAY))
            live = await connector.inject(event("four"))
            frame = await peer.expect(Inbound)
    assert seen == list(zip(["one", "two", "three"], ids, strict=True))
    assert live.outcome == "live"
    assert frame.buffer_id is None
    assert connector.buffered(GATEWAY) == []
    assert connector.inbound_acks == ids


async def test_unacked_entries_are_redelivered_after_a_reconnect(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        ids = [(await connector.inject(event(t))).buffer_id for t in ("a", "b")]
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            first = await peer.expect(Inbound)
            # No ack: the gateway "crashes" mid-drain.
            await connector.drop(GATEWAY)
            with pytest.raises(ConnectionClosed):
                await peer.next()
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            again = await peer.expect(Inbound)
            await peer.ack(again.buffer_id)
            second = await peer.expect(Inbound)
            await peer.ack(second.buffer_id)
            await connector.wait_for(lambda: connector.buffered(GATEWAY) == [])
    assert first.buffer_id == again.buffer_id == ids[0]
    assert again.event.text == "a"
    assert second.buffer_id == ids[1]


async def test_drain_window_allows_several_unacked_entries(nursery):
    connector = await start(nursery, drain_window=3)
    with trio.fail_after(LIMIT):
        for t in "abcd":
            await connector.inject(event(t))
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            got = [await peer.expect(Inbound) for _ in range(3)]
            await connector.wait_for(lambda: len(connector.sent) >= 4)  # descriptor + 3
            assert len(connector.sent) == 4
            await peer.ack(got[0].buffer_id)
            last = await peer.expect(Inbound)
    assert [f.event.text for f in [*got, last]] == list("abcd")


async def test_disconnected_inbound_is_dropped_when_buffering_is_off(nursery):
    connector = await start(nursery, buffer_when_disconnected=False)
    delivery = await connector.inject(event("lost"))
    assert delivery.outcome == "dropped"
    assert connector.buffered(GATEWAY) == []


async def test_buffered_only_instance_buffers_even_with_buffering_off(nursery):
    connector = await start(nursery, buffer_when_disconnected=False)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await peer.send(GoingIdle())
            await peer.expect(GoingIdleAck)
    assert (await connector.inject(event("kept"))).outcome == "buffered"


async def test_first_buffered_message_of_a_flipped_instance_pokes_the_wake_url(nursery):
    import httpx

    from relay_runtime.connector._control_plane import ControlPlaneRegistry, WakePoker

    hits: list[bytes] = []
    poked = trio.Event()

    async def wake_endpoint(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        hits.append(data.split(b"\r\n", 1)[0])
        poked.set()
        await stream.send_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    listeners = await nursery.start(partial(trio.serve_tcp, wake_endpoint, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    registry = ControlPlaneRegistry()
    record = registry.pin_gateway(GATEWAY, SECRET)
    record.wake_urls[None] = f"http://127.0.0.1:{port}/wake"
    async with httpx.AsyncClient() as client:
        connector = await start(nursery, secrets={}, registry=registry, poker=WakePoker(client))
        with trio.fail_after(LIMIT):
            async with dial(connector.url, good_headers()) as peer:
                await ready(connector, peer)
                await peer.send(GoingIdle())
                await peer.expect(GoingIdleAck)
            await connector.inject(event("wake up"))
            await connector.inject(event("again"))
            await poked.wait()
    assert hits == [b"GET /wake HTTP/1.1"]
    assert connector.pokes == [f"http://127.0.0.1:{port}/wake"]


# -- revocation and drops ---------------------------------------------------------------------


async def test_revoke_closes_4401_and_refuses_the_gateway_until_reinstated(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            assert await connector.revoke(GATEWAY) == 1
            with pytest.raises(ConnectionClosed) as info:
                await peer.next()
        assert info.value.reason is not None
        assert (info.value.reason.code, info.value.reason.reason) == (4401, "unauthorized")
        with pytest.raises(ConnectionRejected) as refused:
            async with dial(connector.url, good_headers()):
                pass
        assert refused.value.status_code == 401
        assert connector.rejections[-1].reason == "revoked"
        connector.reinstate(GATEWAY)
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)


async def test_expire_closes_4401_expired_without_revoking(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await connector.expire(GATEWAY)
            with pytest.raises(ConnectionClosed) as info:
                await peer.next()
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
    assert info.value.reason is not None
    assert (info.value.reason.code, info.value.reason.reason) == (4401, "expired")


async def test_drop_aborts_tcp_without_a_close_frame(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            assert await connector.drop() == 1
            with pytest.raises(ConnectionClosed) as info:
                await peer.next()
    assert info.value.reason is not None
    assert info.value.reason.code == 1006  # abnormal closure: no close frame arrived


async def test_drop_with_a_code_closes_cleanly_with_it(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            await connector.drop(GATEWAY, code=1011, reason="overloaded")
            with pytest.raises(ConnectionClosed) as info:
                await peer.next()
    assert info.value.reason is not None
    assert (info.value.reason.code, info.value.reason.reason) == (1011, "overloaded")


async def test_seeded_random_drops_lose_nothing_with_ack_gated_delivery(nursery):
    connector = await start(nursery, always_buffer=True, drain_window=2)
    texts = [f"m{n}" for n in range(30)]
    connector.drop_randomly(random.Random(1234), every=4)
    received: list[str] = []

    async def gateway() -> None:
        # A minimal gateway: reconnect after every drop, ack every delivery.
        while True:
            try:
                async with dial(connector.url, good_headers()) as peer:
                    await peer.hello("discord")
                    while True:
                        frame = await peer.next()
                        if isinstance(frame, Inbound):
                            received.append(frame.event.text)
                            await peer.ack(frame.buffer_id)
            except ConnectionClosed:
                continue

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as inner:
            inner.start_soon(gateway)
            for text in texts:
                await connector.inject(event(text))
            await connector.wait_for(lambda: not connector.buffered(GATEWAY))
            inner.cancel_scope.cancel()
    assert connector.chaos_drops > 0
    assert set(received) == set(texts)
    # Redeliveries only repeat un-acked entries; first deliveries keep the injection order.
    first_seen = list(dict.fromkeys(received))
    assert first_seen == texts


# -- relevance gate and robustness ------------------------------------------------------------


async def test_relevance_gate_drops_what_the_policy_rejects(nursery):
    connector = await start(nursery)
    connector.policies[(GATEWAY, "discord")] = RelevancePolicy(
        require_address=True, free_response_scopes=("c-help",)
    )
    group = {"chat_type": "group"}
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await ready(connector, peer)
            quiet = await connector.inject(
                event("ignored", chat_id="c-general", **group), addressed=False
            )
            bot = await connector.inject(event("beep", chat_id="c-general", **group), from_bot=True)
            free = await connector.inject(event("free", chat_id="c-help", **group), addressed=False)
            dm = await connector.inject(event("dm", chat_id="d1"), addressed=False)
            texts = [(await peer.expect(Inbound)).event.text for _ in range(2)]
    assert (quiet.outcome, bot.outcome, free.outcome, dm.outcome) == (
        "gated",
        "gated",
        "live",
        "live",
    )
    assert texts == ["free", "dm"]
    assert [g.event.text for g in connector.gated] == ["ignored", "beep"]


async def test_malformed_gateway_frames_are_recorded_and_the_reader_goes_on(nursery):
    connector = await start(nursery)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await peer.ws.send_message('{"type":"hello"\n[1]\n{"type":"inbound_ack"}\n')
            await peer.hello("relay")
            await peer.expect(DescriptorFrame)
    assert [b.error.kind for b in connector.bad_frames] == ["malformed", "malformed", "bad_field"]
    assert connector.hellos == [Hello(platform="relay", bot_id="b1")]


async def test_each_gateway_is_its_own_instance_and_the_tenant_comes_from_the_token(nursery):
    connector = await start(nursery, secrets={"gw-a": SECRET, "gw-b": SECONDARY})
    with trio.fail_after(LIMIT):
        async with (
            dial(connector.url, good_headers("gw-a", SECRET)) as a,
            dial(connector.url, good_headers("gw-b", SECONDARY)) as b,
        ):
            # The hello names a platform and bot, never a tenant.
            await a.hello("discord")
            await a.expect(DescriptorFrame)
            await b.hello("telegram")
            await b.expect(DescriptorFrame)
            await connector.wait_for(
                lambda: None not in (connector.current("gw-a"), connector.current("gw-b"))
            )
            with pytest.raises(ValueError, match="several gateways"):
                await connector.inject(event("which?"))
            await connector.inject(event("for b"), gateway_id="gw-b")
            await connector.inject(event("for a"), gateway_id="gw-a")
            got_b = await b.expect(Inbound)
            got_a = await a.expect(Inbound)
    assert (got_a.event.text, got_b.event.text) == ("for a", "for b")
    assert {r.gateway_id for r in connector.received} == {"gw-a", "gw-b"}
    assert [h.platform for h in connector.frames(Hello, "gw-b")] == ["telegram"]
