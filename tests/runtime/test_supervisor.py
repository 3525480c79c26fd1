"""The supervisor against a scripted connector over memory streams, under ``autojump_clock``."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from protocol import Edit, Inbound, InboundAck, Interrupt, Send, Typing, verify_token
from relay_runtime import RelayDisabled
from relay_runtime._supervisor import Supervisor
from tests.runtime.conftest import (
    GATEWAY_ID,
    SECRET,
    FakeConnector,
    PeerConn,
    descriptor,
    make_config,
)

JSON = dict[str, Any]


def top(low: float, high: float) -> float:
    """Jitter source that always picks the upper bound: delays equal the ladder bounds."""
    return high


@attrs.define
class Harness:
    sup: Supervisor
    inbound: trio.MemoryReceiveChannel[Any]
    interrupts: list[tuple[str, str]]
    errors: list[BaseException]
    finished: trio.Event


async def launch(
    nursery: trio.Nursery,
    connector: FakeConnector,
    *,
    wait_ready: bool = True,
    inbound_size: int = 16,
    rng: Any = top,
    token_factory: Any = None,
    on_interrupt: Any = None,
    **config: Any,
) -> Harness:
    send, recv = trio.open_memory_channel[Any](inbound_size)
    interrupts: list[tuple[str, str]] = []
    sup = Supervisor(
        make_config(**config),
        inbound=send,
        on_interrupt=on_interrupt or (lambda key, chat: interrupts.append((key, chat))),
        dialer=connector.dialer,
        rng=rng,
        token_factory=token_factory,
    )
    h = Harness(sup, recv, interrupts, [], trio.Event())

    async def runner() -> None:
        try:
            await sup.run()
        except RelayDisabled as exc:
            h.errors.append(exc)
        finally:
            h.finished.set()

    nursery.start_soon(runner)
    if wait_ready:
        await sup.wait_ready()
    return h


async def answer_outbound(conn: PeerConn, frame: JSON) -> None:
    if frame["type"] == "outbound":
        await conn.send(
            {
                "type": "outbound_result",
                "requestId": frame["requestId"],
                "result": {"success": True, "message_id": "m-" + frame["requestId"][:4]},
            }
        )


# ---- handshake ---------------------------------------------------------------------------


async def test_R8_one_hello_per_identity_in_order_before_anything_on_every_dial(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(
        nursery,
        connector,
        platforms=("discord", "telegram", "slack"),
        bot_ids={"discord": {"botId": "d1"}, "slack": {"botId": "s1"}},
    )
    for index in range(3):
        conn = await connector.connection(index)
        await h.sup.wait_ready()
        h.sup.send_nowait(InboundAck("b1"))
        await conn.next("inbound_ack")
        assert conn.frames[:4] == [
            {"type": "hello", "platform": "discord", "botId": "d1"},
            {"type": "hello", "platform": "telegram", "botId": ""},
            {"type": "hello", "platform": "slack", "botId": "s1"},
            {"type": "inbound_ack", "bufferId": "b1"},
        ]
        await conn.close(1012, "restart")
    assert h.sup.stats.handshakes >= 3


async def test_R37_bearer_only_with_id_and_secret_and_minted_per_dial(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    minted: list[str] = []

    def factory(gateway_id: str, secret: str) -> str:
        from protocol import make_upgrade_token

        token = make_upgrade_token(gateway_id, secret, now=1_750_000_000 + len(minted))
        minted.append(token)
        return token

    h = await launch(nursery, connector, token_factory=factory)
    await (await connector.connection(0)).close(1011, "overloaded")
    await connector.connection(1)
    await h.sup.wait_ready()
    assert len(minted) == 2 and minted[0] != minted[1]
    assert [d["authorization"] for d in connector.dial_headers] == [f"Bearer {t}" for t in minted]
    assert verify_token(minted[0], [SECRET], now=1_750_000_000) == GATEWAY_ID

    # Without a secret (or without an id) the upgrade is unauthenticated.
    for creds in ({"secret": None, "gateway_id": None}, {"gateway_id": None, "secret": None}):
        other = FakeConnector(nursery)
        h2 = await launch(nursery, other, **creds)
        assert other.dial_headers == [{}]
        assert (await other.connection(0)).headers.get("authorization") is None
        h2.sup.stop()


async def test_default_token_factory_mints_a_verifiable_bearer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    await launch(nursery, connector)
    bearer = connector.dial_headers[0]["authorization"].removeprefix("Bearer ")
    import time

    assert verify_token(bearer, [SECRET], now=time.time()) == GATEWAY_ID


async def test_R40_no_descriptor_closes_after_handshake_timeout_and_redials(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    connector.descriptor_for = lambda n, p: None if n == 0 else descriptor(p)
    h = await launch(nursery, connector, wait_ready=False)
    first = await connector.connection(0)
    await first.closed.wait()
    assert (first.close_code, first.close_reason) == (1000, "handshake timeout")
    assert trio.current_time() == pytest.approx(30.0)
    await h.sup.wait_ready()
    assert connector.dial_times[1] == pytest.approx(30.0 + 2.0)  # ladder n=1 (upper bound)


async def test_R25_invalid_descriptor_closes_1002_and_ladders(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    connector.descriptor_for = lambda n, p: {"platform": p} if n == 0 else descriptor(p)
    h = await launch(nursery, connector, wait_ready=False)
    first = await connector.connection(0)
    await first.closed.wait()
    assert (first.close_code, first.close_reason) == (1002, "invalid descriptor")
    await h.sup.wait_ready()
    assert h.sup.connection.machine.handshake_seen


async def test_R56_R57_descriptors_reapplied_each_handshake_first_is_default(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    limits = {0: 2000, 1: 500}
    connector.descriptor_for = lambda n, p: descriptor(p, max_message_length=limits[n] + len(p))
    h = await launch(nursery, connector, platforms=("discord", "telegram"))
    conn = await connector.connection(0)
    await conn.next("hello")
    await trio.testing.wait_all_tasks_blocked()
    sup = h.sup
    assert sup.default_descriptor.platform == "discord"
    assert sup.outbound.descriptor_for("telegram").max_message_length == 2008
    assert set(sup.descriptors) == {"discord", "telegram"}
    # A later descriptor for another platform never replaces the default.
    await conn.send({"type": "descriptor", "descriptor": descriptor("slack")})
    await trio.testing.wait_all_tasks_blocked()
    assert sup.default_descriptor.platform == "discord"
    assert sup.outbound.descriptor_for("slack").platform == "slack"
    # Reconnect: the new handshake's descriptors take effect.
    await conn.close(1001, "going away")
    await connector.connection(1)
    await sup.wait_ready()
    await trio.testing.wait_all_tasks_blocked()
    assert sup.default_descriptor.max_message_length == 507
    assert sup.outbound.descriptor_for("telegram").max_message_length == 508


# ---- outbound over the socket ------------------------------------------------------------


async def test_R9_R10_request_ids_and_correlation(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    held: list[JSON] = []

    async def hold(conn: PeerConn, frame: JSON) -> None:
        if frame["type"] == "outbound":
            held.append(frame)
            if len(held) == 3:
                # Unknown id first (ignored), then answer out of order; one without result.
                await conn.send({"type": "outbound_result", "requestId": "f" * 32, "result": {}})
                await conn.send(
                    {
                        "type": "outbound_result",
                        "requestId": held[2]["requestId"],
                        "result": {"success": True, "message_id": "m3"},
                    }
                )
                await conn.send({"type": "outbound_result", "requestId": held[0]["requestId"]})
                await conn.send(
                    {
                        "type": "outbound_result",
                        "requestId": held[1]["requestId"],
                        "result": {"success": False, "error": "nope"},
                    }
                )

    connector.on_frame = hold
    h = await launch(nursery, connector)
    results: dict[str, Any] = {}

    async def one(name: str) -> None:
        results[name] = await h.sup.outbound.request(Send("c1", name))

    async with trio.open_nursery() as n:
        for name in ("a", "b", "c"):
            n.start_soon(one, name)
            await trio.testing.wait_all_tasks_blocked()
    ids = [f["requestId"] for f in held]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 3
    assert [f["action"]["content"] for f in held] == ["a", "b", "c"]
    assert results["a"].success is False and results["a"].raw == {}
    assert results["b"].error == "nope"
    assert results["c"].message_id == "m3"
    assert h.sup.outbound.late_results == 1


async def test_R41_drop_fails_pending_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector)
    conn = await connector.connection(0)
    results: list[Any] = []

    async def one() -> None:
        results.append(await h.sup.outbound.request(Send("c1", "hi")))

    async with trio.open_nursery() as n:
        n.start_soon(one)
        n.start_soon(one)
        await conn.next("outbound")
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await conn.close(1011, "overloaded")
    assert trio.current_time() == start
    assert [r.raw for r in results] == [
        {"success": False, "error": "relay transport closed", "retryable": True}
    ] * 2
    assert h.sup.outbound.pending_count == 0


async def test_R42_outbound_timeout_is_ambiguous_and_late_result_ignored(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector)
    conn = await connector.connection(0)
    start = trio.current_time()
    result = await h.sup.outbound.request(Typing("c1"))
    assert trio.current_time() - start == pytest.approx(30.0)
    assert result.error == "relay outbound timed out"
    assert result.ambiguous is True
    assert result.retryable is False
    frame = await conn.next("outbound")
    await conn.send({"type": "outbound_result", "requestId": frame["requestId"], "result": {}})
    await trio.testing.wait_all_tasks_blocked()
    assert h.sup.outbound.late_results == 1
    assert h.sup.state == "ready"


async def test_R43_edit_and_typing_fail_fast_when_not_ready(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    connector.decide = lambda n: "refuse"
    h = await launch(nursery, connector, wait_ready=False)
    await trio.sleep(0.5)
    assert h.sup.state == "backoff"
    for action in (Edit("c1", "m1", "x"), Typing("c1"), Send("c1", "x")):
        result = await h.sup.outbound.request(action)
        assert result.error == "relay transport not connected"
        assert result.retryable is True
    assert not h.sup.send_nowait(InboundAck("b"))


async def test_R11_interrupt_always_carries_reason(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector)
    conn = await connector.connection(0)
    assert h.sup.send_nowait(Interrupt("agent:main:discord:group:c1:u1"))
    assert h.sup.send_nowait(Interrupt("k2", reason="stop"))
    await conn.next("interrupt")
    await trio.testing.wait_all_tasks_blocked()
    assert conn.of_type("interrupt") == [
        {"type": "interrupt", "session_key": "agent:main:discord:group:c1:u1", "reason": None},
        {"type": "interrupt", "session_key": "k2", "reason": "stop"},
    ]


async def test_R12_R13_tagging_over_the_wire(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    connector.on_frame = answer_outbound
    h = await launch(
        nursery,
        connector,
        platforms=("discord", "telegram"),
        bot_ids={"telegram": {"botId": "t9"}},
    )
    conn = await connector.connection(0)
    await conn.send(
        {
            "type": "inbound",
            "event": {
                "text": "hi",
                "source": {"platform": "Telegram", "chat_id": "tc", "guild_id": "g"},
            },
        }
    )
    item = await h.inbound.receive()
    assert isinstance(item, Inbound)
    h.sup.outbound.remember(item.event)  # what the dispatcher does with each inbound
    await h.sup.outbound.request(Send("tc", "reply"))
    await h.sup.outbound.request(Send("unknown-chat", "reply"))
    frames = conn.of_type("outbound")
    assert (frames[0]["platform"], frames[0]["botId"]) == ("telegram", "t9")
    assert frames[0]["action"]["metadata"] == {"guild_id": "g", "scope_id": "g"}
    assert "platform" not in frames[1] and "botId" not in frames[1]

    single = FakeConnector(nursery)
    single.on_frame = answer_outbound
    h1 = await launch(nursery, single, platform="discord")
    sconn = await single.connection(0)
    await sconn.send(
        {"type": "inbound", "event": {"source": {"platform": "discord", "chat_id": "dc"}}}
    )
    item = await h1.inbound.receive()
    assert isinstance(item, Inbound)
    h1.sup.outbound.remember(item.event)
    await h1.sup.outbound.request(Send("dc", "reply"))
    (frame,) = sconn.of_type("outbound")
    assert list(frame) == ["type", "requestId", "action"]


async def test_interrupt_inbound_calls_back_synchronously_and_inbound_is_queued(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector)
    conn = await connector.connection(0)
    await conn.send({"type": "interrupt_inbound", "session_key": "k", "chat_id": "c"})
    await conn.send({"type": "bogus"})
    await conn.send_raw("not json\n")
    await conn.send({"type": "inbound", "event": {"text": "x"}, "bufferId": "b7"})
    item = await h.inbound.receive()
    assert h.interrupts == [("k", "c")]
    assert isinstance(item, Inbound)
    assert item.buffer_id == "b7"
    assert item.event.delivered_via_relay
    assert h.sup.stats.malformed_frames == 1


async def test_one_message_of_many_frames_survives_a_failing_handler_and_counts_its_frames(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, str]] = []

    def failing(key: str, chat: str) -> None:
        seen.append((key, chat))
        raise RuntimeError("handler bug")

    h = await launch(nursery, connector, on_interrupt=failing)
    conn = await connector.connection(0)
    before = h.sup.stats_dict()["frames_in"]
    assert isinstance(before, int)
    await conn.send_raw(
        '{"type":"interrupt_inbound","session_key":"k","chat_id":"c"}\n'
        "not json\n"
        '{"type":"inbound","event":{"text":"after"}}\n'
    )
    item = await h.inbound.receive()
    assert isinstance(item, Inbound) and item.event.text == "after"
    assert seen == [("k", "c")]
    failures = [r for r in caplog.records if "error while handling a frame" in r.getMessage()]
    assert len(failures) == 1
    assert h.sup.stats.malformed_frames == 1
    # Counted while the socket is open: two frames (the malformed line is not one).
    assert h.sup.stats_dict()["frames_in"] == before + 2
    assert h.sup.state == "ready"


async def test_stray_connector_frames_in_any_state_leave_the_connection_as_it_was(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The transition table raises on a pair it has no row for; frames come from the peer,
    # so an ack nobody asked for or a repeated descriptor must never reach such a pair.
    h = await launch(nursery, connector)
    conn = await connector.connection(0)
    await conn.send({"type": "going_idle_ack"})
    await conn.send({"type": "descriptor", "descriptor": {"platform": "x"}})
    await conn.send({"type": "descriptor", "descriptor": descriptor("relay")})
    await conn.send({"type": "interrupt_inbound", "session_key": "k", "chat_id": "c"})
    await trio.testing.wait_all_tasks_blocked()
    assert h.interrupts == [("k", "c")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert h.sup.state == "ready"
    assert h.sup.send_nowait(InboundAck("b1"))
    assert (await conn.next("inbound_ack"))["bufferId"] == "b1"
    assert h.sup.stats.handshakes == 1
    assert connector.dial_times == [0.0]


async def test_R60_full_inbound_channel_pauses_the_reader_with_one_error(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector.on_frame = answer_outbound
    h = await launch(nursery, connector, inbound_size=1)
    conn = await connector.connection(0)
    for i in range(4):
        await conn.send({"type": "inbound", "event": {"text": str(i)}})
    await trio.testing.wait_all_tasks_blocked()
    stalls = [r for r in caplog.records if "inbound queue full" in r.getMessage()]
    assert len(stalls) == 1 and stalls[0].levelno == logging.ERROR
    texts = []
    for _ in range(4):
        item = await h.inbound.receive()
        texts.append(item.event.text)
    assert texts == ["0", "1", "2", "3"]
    assert h.sup.state == "ready"


async def test_R6_outgoing_frame_over_limit_is_not_sent(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector, max_frame_bytes=1024)
    conn = await connector.connection(0)
    result = await h.sup.outbound.request(Send("c1", "é" * 600))
    assert result.error == "relay frame too large"
    assert not h.sup.send_nowait(Interrupt("k" * 2000))
    await trio.testing.wait_all_tasks_blocked()
    assert conn.of_type("outbound") == [] and conn.of_type("interrupt") == []


# ---- keepalive and the ladder ------------------------------------------------------------


async def test_R48_keepalive_keeps_a_live_peer_and_closes_a_silent_one(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    frozen: list[trio.testing.MemorySendStream] = []

    class Freezable(FakeConnector):
        async def dialer(self, nursery: trio.Nursery, url: str, **kw: Any) -> Any:
            from tests.runtime.conftest import wrap_client

            n = len(self.dial_times)
            self.dial_times.append(trio.current_time())
            c2s_send, c2s_recv = trio.testing.memory_stream_one_way_pair()
            s2c_send, s2c_recv = trio.testing.memory_stream_one_way_pair()
            client = trio.StapledStream(c2s_send, s2c_recv)
            server = trio.StapledStream(s2c_send, c2s_recv)
            frozen.append(c2s_send)
            self.nursery.start_soon(self._serve, server, "accept", n)
            return await wrap_client(nursery, client, kw["headers"], kw["max_message_size"])

    connector = Freezable(nursery)
    h = await launch(nursery, connector)
    # A peer that answers pings stays connected through long quiet periods.
    await trio.sleep(300)
    assert h.sup.state == "ready" and len(connector.dial_times) == 1
    # Freeze the gateway->peer direction: pings go unanswered.
    frozen[0].send_all_hook = None
    frozen_at = trio.current_time()
    await connector.connection(1)
    assert h.sup.stats.last_close == (1011, "keepalive timeout")
    # Death comes 60 s after the last pong (a ping at most 30 s before the freeze), then a
    # bounded 5 s for the unanswered close frame and a 1 s ladder wait (the socket was stable).
    assert frozen_at + 36 <= connector.dial_times[1] <= frozen_at + 66


async def test_R49_ladder_advances_on_failures_and_resets_after_stable(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    connector.decide = lambda n: "refuse" if n < 7 else "accept"
    h = await launch(nursery, connector, wait_ready=False)
    await h.sup.wait_ready()
    gaps = [b - a for a, b in zip(connector.dial_times, connector.dial_times[1:], strict=False)]
    assert gaps == pytest.approx([2, 4, 8, 16, 30, 30, 30])
    # Short-lived connections keep climbing the ladder ...
    await (await connector.connection(0)).close(1011, "overloaded")
    await connector.connection(1)
    assert connector.dial_times[8] - connector.dial_times[7] == pytest.approx(30)
    # ... a connection that stays READY 60 s resets it.
    await trio.sleep(61)
    closed_at = trio.current_time()
    await (await connector.connection(1)).close(1000, "")
    await connector.connection(2)
    assert connector.dial_times[9] - closed_at == pytest.approx(1.0)


async def test_R49_jitter_uses_injected_rng_within_bounds(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    import random

    rng = random.Random(1234)
    connector.decide = lambda n: "refuse" if n < 8 else "accept"
    h = await launch(nursery, connector, wait_ready=False, rng=rng.uniform)
    await h.sup.wait_ready()
    gaps = [b - a for a, b in zip(connector.dial_times, connector.dial_times[1:], strict=False)]
    replay = random.Random(1234)
    expected = [replay.uniform(0, min(30.0, 2.0**n)) for n in range(1, 9)]
    assert gaps == pytest.approx(expected)


async def test_R50_failing_initial_dial_is_retried_and_stop_never_reconnects(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    connector.decide = lambda n: 503 if n < 3 else "accept"
    h = await launch(nursery, connector, wait_ready=False)
    await h.sup.wait_ready()
    assert len(connector.dial_times) == 4
    h.sup.stop()
    conn = await connector.connection(0)
    await conn.next("going_idle")
    await h.finished.wait()
    await trio.sleep(3600)
    assert len(connector.dial_times) == 4
    assert h.sup.state == "closed"
    assert h.errors == []
    result = await h.sup.outbound.request(Send("c", "x"))
    assert (result.error, result.retryable) == ("relay transport closed", False)


async def test_stop_while_in_backoff_closes_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    connector.decide = lambda n: "refuse"
    h = await launch(nursery, connector, wait_ready=False)
    await trio.sleep(0.1)
    h.sup.stop()
    await h.finished.wait()
    await trio.sleep(1000)
    assert len(connector.dial_times) == 1
    assert h.sup.state == "closed"


# ---- 4401 --------------------------------------------------------------------------------


async def test_R51_4401_before_handshake_ladders_and_unauthenticated_never_disables(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    connector.decide = lambda n: 401 if n < 3 else "accept"
    h = await launch(nursery, connector, wait_ready=False)
    await h.sup.wait_ready()
    gaps = [b - a for a, b in zip(connector.dial_times, connector.dial_times[1:], strict=False)]
    assert gaps == pytest.approx([2, 4, 8])

    # No credentials: 4401 even after a handshake only ladders, with the ERROR.
    anon = FakeConnector(nursery)
    h2 = await launch(nursery, anon, gateway_id=None, secret=None)
    for index in range(4):
        conn = await anon.connection(index)
        await h2.sup.wait_ready()
        await conn.close(4401, "unauthorized")
    await anon.connection(4)
    assert h2.sup.state != "disabled"
    assert h2.errors == []


async def test_R52_expired_redials_at_once_never_disables(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    # Issue 11 changed this on purpose: a second `expired` less than half a token lifetime
    # after the last one waits on the ladder (it re-dialed every few ms for ever before);
    # once that window has passed, an `expired` re-dials at once again.
    h = await launch(nursery, connector)
    index = 0
    for _ in range(3):
        conn = await connector.connection(index)
        await h.sup.wait_ready()
        closed_at = trio.current_time()
        await conn.close(4401, "expired")
        await connector.connection(index + 1)
        assert connector.dial_times[index + 1] == closed_at  # at once
        conn = await connector.connection(index + 1)
        await h.sup.wait_ready(after=h.sup.handshakes)
        closed_at = trio.current_time()
        await conn.close(4401, "expired")  # again, right after a handshake
        await connector.connection(index + 2)
        assert connector.dial_times[index + 2] > closed_at  # the ladder
        index += 2
        await trio.sleep(200)  # past the window (150 s): the next one is plausible again
    # Two in a row (the re-dial itself is refused as expired): the ladder, no disable.
    connector.descriptor_for = lambda n, p: None
    conn = await connector.connection(index)
    await conn.next("hello")
    closed_at = trio.current_time()
    await conn.close(4401, "expired")
    conn = await connector.connection(index + 1)
    assert connector.dial_times[index + 1] == closed_at  # at once: the window had passed
    await conn.next("hello")
    closed_at = trio.current_time()
    await conn.close(4401, "expired")
    await connector.connection(index + 2)
    assert connector.dial_times[index + 2] > closed_at
    assert h.sup.state != "disabled"


async def test_R53_R54_4401_after_handshake_fresh_token_retry_then_disabled(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    minted: list[int] = []

    def factory(gateway_id: str, secret: str) -> str:
        minted.append(1)
        return f"token-{len(minted)}"

    h = await launch(nursery, connector, token_factory=factory)
    conn = await connector.connection(0)
    revoked_at = trio.current_time()
    await conn.close(4401, "unauthorized")
    retry = await connector.connection(1)
    assert connector.dial_times[1] == revoked_at  # one immediate re-dial ...
    assert retry.headers["authorization"] == "Bearer token-2"  # ... with a fresh token
    await h.sup.wait_ready()
    assert h.sup.state == "ready"
    # 4401 on that fresh-token re-dial, after its descriptor: DISABLED.
    await retry.close(4401, "unauthorized")
    await h.finished.wait()
    assert h.sup.state == "disabled"
    assert len(h.errors) == 1 and isinstance(h.errors[0], RelayDisabled)


async def test_R54_R55_http_401_on_fresh_token_redial_disables_for_good(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector.decide = lambda n: 401 if n == 1 else "accept"
    h = await launch(nursery, connector)
    await (await connector.connection(0)).close(4401, "")
    await h.finished.wait()
    assert h.sup.state == "disabled"
    assert isinstance(h.errors[0], RelayDisabled)
    assert any(
        "relay disabled" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
    )
    dials = len(connector.dial_times)
    await trio.sleep(7 * 24 * 3600)
    assert len(connector.dial_times) == dials == 2
    result = await h.sup.outbound.request(Send("c1", "x"))
    assert (result.error, result.retryable) == ("relay disabled", False)
    assert await h.sup.go_idle() is False


async def test_R54_disabled_fails_pending_with_relay_disabled(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector)
    await (await connector.connection(0)).close(4401, "revoked")
    retry = await connector.connection(1)
    await h.sup.wait_ready()
    results: list[Any] = []

    async def one() -> None:
        results.append(await h.sup.outbound.request(Send("c1", "x")))

    nursery.start_soon(one)
    await retry.next("outbound")
    await retry.close(4401, "revoked")
    await h.finished.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert [r.error for r in results] == ["relay disabled"]


# ---- idle --------------------------------------------------------------------------------


async def test_R72_go_idle_serves_until_ack_then_closes_1000(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    async def script(conn: PeerConn, frame: JSON) -> None:
        if frame["type"] == "going_idle":
            # The flip window: inbound still arrives live; outbound is still answered.
            await conn.send({"type": "inbound", "event": {"text": "late"}})
        elif frame["type"] == "outbound":
            await answer_outbound(conn, frame)
            await trio.sleep(2)
            await conn.send({"type": "going_idle_ack"})

    connector.on_frame = script
    h = await launch(nursery, connector)
    conn = await connector.connection(0)
    acked: list[bool] = []

    async def idle() -> None:
        acked.append(await h.sup.go_idle())

    nursery.start_soon(idle)
    await conn.next("going_idle")
    item = await h.inbound.receive()
    assert item.event.text == "late"
    assert h.sup.state == "idle_requested"
    result = await h.sup.outbound.request(Send("c1", "bye"))
    assert result.success
    await conn.closed.wait()
    await h.finished.wait()
    assert acked == [True]
    assert len(conn.of_type("going_idle")) == 1
    assert (conn.close_code, conn.close_reason) == (1000, "going idle")
    assert h.sup.state == "closed"
    assert len(connector.dial_times) == 1


async def test_R73_no_ack_shutdown_still_closes_suspend_stays_connected(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector)
    conn = await connector.connection(0)
    start = trio.current_time()
    assert await h.sup.suspend() is False
    assert trio.current_time() - start == pytest.approx(10.0)
    assert h.sup.state == "ready"
    assert not conn.closed.is_set()
    start = trio.current_time()
    assert await h.sup.go_idle() is False
    assert trio.current_time() - start == pytest.approx(10.0)
    await conn.closed.wait()
    assert conn.close_code == 1000
    assert h.sup.state == "closed"


async def test_R74_suspend_close_redials_on_dormant_cadence(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    async def ack(conn: PeerConn, frame: JSON) -> None:
        if frame["type"] == "going_idle":
            await conn.send({"type": "going_idle_ack"})

    connector.on_frame = ack
    connector.decide = lambda n: "refuse" if n in (1, 2, 3) else "accept"
    h = await launch(nursery, connector, rng=lambda a, b: pytest.fail("no jitter when dormant"))
    conn = await connector.connection(0)
    assert await h.sup.suspend() is True
    await conn.closed.wait()
    assert conn.close_code == 1000
    closed_at = trio.current_time()
    await connector.connection(1)
    await h.sup.wait_ready()
    gaps = [b - a for a, b in zip(connector.dial_times, connector.dial_times[1:], strict=False)]
    assert connector.dial_times[1] - closed_at == pytest.approx(1.0)
    assert gaps[1:] == pytest.approx([1.0, 1.0, 1.0])
    assert not h.sup.connection.machine.dormant


# ---- a ping racing our close (trio-websocket #184) -----------------------------------------


async def test_ws184_ping_racing_our_close_does_not_crash_the_supervisor(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The peer's ping reaches us while our close is in flight.

    trio-websocket 0.12.2's client answered it with a pong that wsproto refused, raising in
    its reader task inside our socket nursery (its issue #184). The gateway's own client
    does not answer a ping once its close frame is out (RFC 6455 section 5.5.2 asks for a pong
    only while open): the socket ends with our close and the supervisor re-dials.
    """
    held: list[tuple[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]] = []

    class Racing(FakeConnector):
        async def dialer(self, nursery: trio.Nursery, url: str, **kw: Any) -> Any:
            from tests.runtime.conftest import wrap_client

            n = len(self.dial_times)
            self.dial_times.append(trio.current_time())
            c2s_send, c2s_recv = trio.testing.memory_stream_one_way_pair()
            s2c_send, s2c_recv = trio.testing.memory_stream_one_way_pair()
            held.append((s2c_send, s2c_recv))
            self.nursery.start_soon(
                self._serve, trio.StapledStream(s2c_send, c2s_recv), "accept", n
            )
            return await wrap_client(
                nursery,
                trio.StapledStream(c2s_send, s2c_recv),
                kw["headers"],
                kw["max_message_size"],
            )

    connector = Racing(nursery)
    # Never send a descriptor on the first socket: we close it at the handshake timeout.
    connector.descriptor_for = lambda n, p: None if n == 0 else descriptor(p)
    h = await launch(nursery, connector, wait_ready=False)
    conn = await connector.connection(0)
    await trio.sleep_until(29.0)
    # Hold the peer->gateway direction, have the peer ping, then release it after our close.
    held[0][0].send_all_hook = None

    async def peer_ping() -> None:
        import contextlib

        with contextlib.suppress(Exception):
            await conn.ws.ping(b"race")

    nursery.start_soon(peer_ping)
    await trio.sleep_until(30.5)  # our close 1000 "handshake timeout" went out at t=30
    held[0][0].send_all_hook = lambda: trio.testing.memory_stream_pump(*held[0])
    trio.testing.memory_stream_pump(*held[0])
    await h.sup.wait_ready()
    assert h.sup.state == "ready"
    assert len(connector.dial_times) == 2
    assert h.errors == []
    assert h.sup.stats.last_close == (1000, "handshake timeout")


# ---- later additions ---------------------------------------------------------------------


async def test_R60_backpressure_is_not_mistaken_for_a_dead_peer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector, inbound_size=1)
    conn = await connector.connection(0)
    # Enough frames to fill our channel, stall our reader and fill trio-websocket's own
    # queue, so that its reader stops processing pongs as well.
    for i in range(6):
        await conn.send({"type": "inbound", "event": {"text": str(i)}})
    # Nobody drains the inbound channel for far longer than the keepalive timeout.
    await trio.sleep(600)
    assert h.sup.state == "ready"
    assert len(connector.dial_times) == 1
    texts = [(await h.inbound.receive()).event.text for _ in range(6)]
    assert texts == [str(i) for i in range(6)]


async def test_wait_ready_counts_handshakes_for_per_ready_work(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector)
    first = await h.sup.wait_ready()
    assert first == h.sup.handshakes == 1
    assert await h.sup.wait_ready() == 1  # already READY: at once
    await (await connector.connection(0)).close(1012, "restart")
    assert await h.sup.wait_ready(after=first) == 2
    h.sup.stop()
    with trio.fail_after(60):
        assert await h.sup.wait_ready(after=2) == 2  # returns when stopped


async def test_R72_after_the_ack_pending_requests_get_up_to_5s_before_the_close(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    async def script(conn: PeerConn, frame: JSON) -> None:
        if frame["type"] == "outbound":
            await conn.send({"type": "going_idle_ack"})
            await trio.sleep(3)
            await answer_outbound(conn, frame)

    connector.on_frame = script
    h = await launch(nursery, connector)
    conn = await connector.connection(0)
    results: list[Any] = []

    async def one() -> None:
        results.append(await h.sup.outbound.request(Send("c1", "last words")))

    nursery.start_soon(one)
    await conn.next("outbound")
    start = trio.current_time()
    assert await h.sup.go_idle() is True
    await conn.closed.wait()
    assert results[0].success
    assert trio.current_time() - start == pytest.approx(3.0)
    assert conn.close_code == 1000


async def test_wait_next_ready_blocks_once_terminal(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, connector: FakeConnector
) -> None:
    h = await launch(nursery, connector)
    assert await h.sup.wait_next_ready(0) == 1
    h.sup.stop()
    await h.finished.wait()
    with trio.move_on_after(3600) as scope:
        await h.sup.wait_next_ready(1)
    assert scope.cancelled_caught


class HangingDialer(FakeConnector):
    """A connector whose TCP/upgrade never completes."""

    async def dialer(self, nursery: trio.Nursery, url: str, **kw: Any) -> Any:
        self.dial_times.append(trio.current_time())
        await trio.sleep_forever()


async def test_dial_is_bounded_by_the_handshake_timeout_and_laddered(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    connector = HangingDialer(nursery)
    h = await launch(nursery, connector, wait_ready=False)
    await trio.sleep(100)
    # Each dial times out after 30 s; the ladder waits 2, 4, then 8 s (next dial at 104 s).
    assert connector.dial_times == pytest.approx([0.0, 32.0, 66.0])
    assert h.sup.stats.dial_failures == 3
    assert h.sup.state == "backoff"


async def test_stop_while_dialing_abandons_the_dial(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    connector = HangingDialer(nursery)
    h = await launch(nursery, connector, wait_ready=False)
    await trio.sleep(5)
    assert h.sup.state == "dialing"
    h.sup.stop()
    with trio.fail_after(1):
        await h.finished.wait()
    await trio.sleep(3600)
    assert h.sup.state == "closed"
    assert len(connector.dial_times) == 1


# ---- backpressure episodes (RC §7.2: one ERROR per episode) -------------------------------


def _inbound_lines(texts: list[str]) -> str:
    """Many ``inbound`` frames in one WebSocket message (the reader splits them)."""
    return "".join(f'{{"type":"inbound","event":{{"text":"{text}"}}}}\n' for text in texts)


def _stall_records(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "inbound queue full" in r.getMessage()
    ]
    ends = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and "inbound backpressure ended" in r.getMessage()
    ]
    return errors, ends


async def test_R60_long_stall_with_many_frames_logs_one_error_then_one_info(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay_runtime.supervisor")
    h = await launch(nursery, connector, inbound_size=4)
    conn = await connector.connection(0)
    await conn.send_raw(_inbound_lines([str(i) for i in range(40)]))
    await trio.testing.wait_all_tasks_blocked()
    started = trio.current_time()
    # A slow dispatcher: one frame a second, so the queue sits at the brim for ~36 s and
    # the reader waits on every frame after the first four.
    texts = []
    for _ in range(40):
        await trio.sleep(1)
        texts.append((await h.inbound.receive()).event.text)
    assert texts == [str(i) for i in range(40)]
    errors, ends = _stall_records(caplog)
    assert len(errors) == 1
    assert ends == []  # the reader has not handed anything over since
    assert h.sup.stats.inbound_stalls == 1
    assert h.sup.stats.inbound_stalled_frames == 36

    # The queue is empty now: the next frame goes straight through and ends the episode.
    await conn.send({"type": "inbound", "event": {"text": "after"}})
    assert (await h.inbound.receive()).event.text == "after"
    errors, ends = _stall_records(caplog)
    assert len(errors) == 1 and len(ends) == 1
    match = re.search(r"after ([0-9.]+) s; (\d+) frame\(s\) waited", ends[0])
    assert match is not None, ends[0]
    assert 35 <= float(match.group(1)) <= 37 and trio.current_time() - started >= 40
    assert int(match.group(2)) == 36
    assert h.sup.state == "ready"


async def test_R60_queue_hovering_at_the_brim_is_one_episode_a_new_stall_is_another(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay_runtime.supervisor")
    h = await launch(nursery, connector, inbound_size=4)
    conn = await connector.connection(0)
    await conn.send_raw(_inbound_lines([f"a{i}" for i in range(12)]))
    await trio.testing.wait_all_tasks_blocked()
    # Take two at a time: the reader then hands a frame over without waiting while the
    # queue is still above half full; that is the same episode, not a new one.
    received = []
    while len(received) < 12:
        await trio.sleep(1)
        received += [(await h.inbound.receive()).event.text for _ in range(2)]
        await trio.testing.wait_all_tasks_blocked()
    assert received == [f"a{i}" for i in range(12)]
    errors, ends = _stall_records(caplog)
    assert len(errors) == 1 and ends == []

    # A second burst after the queue drained is a second episode, with its own ERROR.
    await conn.send_raw(_inbound_lines([f"b{i}" for i in range(8)]))
    await trio.testing.wait_all_tasks_blocked()
    errors, ends = _stall_records(caplog)
    assert len(errors) == 2 and len(ends) == 1
    assert h.sup.stats.inbound_stalls == 2
    assert [(await h.inbound.receive()).event.text for _ in range(8)] == [f"b{i}" for i in range(8)]


async def test_R60_backpressure_episode_ends_when_the_socket_ends(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay_runtime.supervisor")
    h = await launch(nursery, connector, inbound_size=1)
    conn = await connector.connection(0)
    await conn.send_raw(_inbound_lines(["0", "1", "2"]))
    await trio.sleep(5)
    # The stalled reader cannot see the connector's frames, so the going_idle_ack never
    # arrives; the close after the ack timeout ends the socket and with it the episode.
    h.sup.stop()
    await h.finished.wait()
    assert conn.close_code == 1000
    errors, ends = _stall_records(caplog)
    assert len(errors) == 1
    assert len(ends) == 1 and "the socket ended" in ends[0], ends
    assert h.sup.stats.inbound_stalls == 1


async def test_R60_a_result_behind_a_waiting_inbound_is_routed_after_it(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
) -> None:
    """A message is routed inline while the reader is idle; once the dispatcher's queue is
    full, the frames after the waiting ``inbound`` (here an ``outbound_result``) wait too,
    in order, and later messages queue behind them."""
    h = await launch(nursery, connector, inbound_size=4)
    conn = await connector.connection(0)
    results: list[Any] = []

    async def request() -> None:
        results.append(await h.sup.outbound.request(Typing("c1")))

    nursery.start_soon(request)
    frame = await conn.next("outbound")
    answer = json.dumps(
        {"type": "outbound_result", "requestId": frame["requestId"], "result": {"success": True}}
    )
    await conn.send_raw(_inbound_lines([f"q{i}" for i in range(5)]) + answer + "\n")
    await conn.send_raw(_inbound_lines(["later"]))
    await trio.testing.wait_all_tasks_blocked()
    assert results == []  # behind q4, which waits for room
    assert h.sup.stats.inbound_stalls == 1
    assert (await h.inbound.receive()).event.text == "q0"
    await trio.testing.wait_all_tasks_blocked()
    assert len(results) == 1 and results[0].success
    texts = [(await h.inbound.receive()).event.text for _ in range(5)]
    assert texts == ["q1", "q2", "q3", "q4", "later"]
