"""Outbound correlation and the RC §3 rules, against an in-memory link (no socket)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import trio
import trio.testing

from protocol import (
    CapabilityDescriptor,
    Edit,
    FollowUp,
    Frame,
    GetChatInfo,
    Identity,
    InboundAck,
    MessageEvent,
    Outbound,
    OutboundResult,
    RelayProtocolError,
    Send,
    SessionSource,
    Typing,
    encode_frame,
    placeholder_descriptor,
)
from protocol._framing import exceeds_limit
from protocol._results import ErrorKind, SendResult
from relay_runtime._outbound import (
    QUEUED,
    ChatMemory,
    FrameNotEncodable,
    FrameTooLarge,
    OutboundRouter,
    Queued,
    Retry,
    new_request_id,
    retry_for,
)


class FakeLink:
    """A link whose writes land in a list; the test plays the connector."""

    def __init__(self, descriptor: CapabilityDescriptor | None = None) -> None:
        self.live = True
        self.state = "ready"
        self.written: list[dict[str, Any]] = []
        self.write_error: str | None = None
        self.descriptor = descriptor or placeholder_descriptor("discord")
        self.arrived = trio.Event()
        self.received: dict[str, CapabilityDescriptor] = {}
        self.queued: list[Frame] = []
        self.max_frame = 1 << 20

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        return self.received.get(platform, self.descriptor)

    def send_nowait(self, frame: Frame) -> bool:
        if self.live:
            self.queued.append(frame)
        return self.live

    def encode(self, frame: Outbound) -> str:
        if not self.live:  # as RelayConnection.send refuses
            raise RelayProtocolError(f"cannot send outbound in state {self.state}")
        try:
            return encode_frame(frame)
        except (TypeError, ValueError) as exc:
            raise FrameNotEncodable(str(exc)) from exc

    async def send(self, frame: Outbound) -> str | None:
        """As the supervisor's: encode through the connection, check the size, write."""
        text = self.encode(frame)
        if exceeds_limit(text[:-1], self.max_frame):
            raise FrameTooLarge(f"{len(text) - 1} characters encoded")
        return await self.write(text)

    async def write(self, text: str) -> str | None:
        await trio.lowlevel.checkpoint()
        if self.write_error is not None:
            return self.write_error
        assert text.endswith("\n") and text.count("\n") == 1
        self.written.append(json.loads(text))
        self.arrived.set()
        self.arrived = trio.Event()
        return None


def router(
    link: FakeLink, *identities: Identity, timeout: float = 30.0, max_frame: int = 1 << 20
) -> OutboundRouter:
    link.max_frame = max_frame
    return OutboundRouter(
        link,
        identities=identities or (Identity("discord", "d1"),),
        outbound_timeout_s=timeout,
    )


def inbound(chat_id: str, platform: str = "discord", guild_id: str | None = None) -> MessageEvent:
    return MessageEvent(
        text="hi", source=SessionSource(platform=platform, chat_id=chat_id, guild_id=guild_id)
    )


async def answered(r: OutboundRouter, link: FakeLink, action: Any, result: Any, **kw: Any) -> Any:
    """Run one request and answer it with ``result`` once its frame is written."""
    out: list[Any] = []

    async def go() -> None:
        out.append(await r.request(action, **kw))

    async with trio.open_nursery() as n:
        n.start_soon(go)
        await link.arrived.wait()
        frame = link.written[-1]
        r.resolve(OutboundResult(frame["requestId"], result))
    return out[0]


def test_R9_request_ids_are_32_lowercase_hex_and_unique() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


async def test_R10_result_maps_to_send_result() -> None:
    link = FakeLink()
    r = router(link)
    result = await answered(r, link, Send("c1", "x"), {"success": True, "message_id": 42})
    assert result.success and result.message_id == "42"
    assert r.pending_count == 0
    assert r.resolve(OutboundResult("0" * 32, {})) is False


async def test_R12_single_identity_never_tags() -> None:
    link = FakeLink()
    r = router(link, Identity("discord", "d1"))
    r.memory.remember(inbound("c1", "discord"))
    await answered(r, link, Send("c1", "x"), {"success": True})
    await answered(r, link, Send("c1", "x"), {"success": True}, platform_raw="discord")
    assert all(list(f) == ["type", "requestId", "action"] for f in link.written)


async def test_R13_multi_identity_tags_target_and_leaves_unresolved_untagged() -> None:
    link = FakeLink()
    r = router(link, Identity("discord", "d1"), Identity("telegram", ""), Identity("slack", "s1"))
    r.memory.remember(inbound("sc", "slack"))
    r.memory.remember(inbound("tc", "telegram"))
    r.memory.remember(inbound("dc", "discord"))
    r.memory.remember(inbound("xc", "matrix"))
    for chat in ("sc", "tc", "dc", "xc", "never-seen"):
        await answered(r, link, Send(chat, "x"), {"success": True})
    tags = [(f.get("platform"), f.get("botId")) for f in link.written]
    assert tags == [
        ("slack", "s1"),
        ("telegram", None),  # botId omitted when ""
        ("discord", "d1"),  # primary is tagged too (our choice, as later upstream)
        (None, None),
        (None, None),
    ]
    # An explicit platform (e.g. the outbox's stored identity) wins over the memory.
    await answered(r, link, Send("sc", "x"), {"success": True}, platform_raw="telegram")
    assert link.written[-1]["platform"] == "telegram"


async def test_R18_scope_injection_never_overwrites_and_skips_unknown_chats() -> None:
    link = FakeLink()
    r = router(link)
    r.memory.remember(inbound("c1", guild_id="g1"))
    r.memory.remember(inbound("c2"))
    await answered(r, link, Send("c1", "x"), {"success": True})
    await answered(r, link, Edit("c1", "m", "x", metadata={"guild_id": "mine"}), {"success": True})
    await answered(r, link, Typing("c1", metadata={"scope_id": "s"}), {"success": True})
    await answered(r, link, Send("c2", "x"), {"success": True})
    await answered(r, link, Send("c9", "x"), {"success": True})
    await answered(r, link, FollowUp("k", "reply", "x"), {"success": True})
    metas = [f["action"]["metadata"] for f in link.written]
    assert metas == [
        {"guild_id": "g1", "scope_id": "g1"},
        {"guild_id": "mine"},
        {"scope_id": "s", "guild_id": "g1"},
        {},
        {},
        {},
    ]


async def test_R17_ops_gated_by_descriptor_without_a_frame() -> None:
    no_edit = CapabilityDescriptor(1, "discord", "D", 2000, False, False, False, "plain", "chars")
    link = FakeLink(no_edit)
    r = router(link)
    result = await r.request(Edit("c", "m", "x"))
    assert result.error == "relay op not supported by connector: edit"
    ops = CapabilityDescriptor(
        1, "discord", "D", 2000, False, True, False, "plain", "chars", supported_ops=("edit",)
    )
    link.descriptor = ops
    for action, op in ((Typing("c"), "typing"), (GetChatInfo("c"), "get_chat_info")):
        result = await r.request(action)
        assert result.error == f"relay op not supported by connector: {op}"
    assert link.written == []


class GatedLink(FakeLink):
    """A link whose connection refuses the frame although the link still says live."""

    def encode(self, frame: Outbound) -> str:
        raise RelayProtocolError("cannot send outbound in state idle_acked")


async def test_every_outbound_frame_is_encoded_by_the_connection_which_may_refuse_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[Outbound] = []
    link = FakeLink()
    encode = link.encode

    def recording(frame: Outbound) -> str:
        sent.append(frame)
        return encode(frame)

    link.encode = recording  # type: ignore[method-assign]
    r = router(link)
    result = await answered(r, link, Send("c", "x"), {"success": True, "message_id": "m"})
    assert result.success
    assert [f.request_id for f in sent] == [link.written[0]["requestId"]]
    gated = GatedLink()
    res = await router(gated).request(Send("c", "x"))
    assert (res.error, res.retryable, res.error_kind) == (
        "relay transport not connected",
        True,
        ErrorKind.NOT_CONNECTED,
    )
    assert gated.written == []


async def test_R20_local_failures_are_results_not_exceptions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = FakeLink()
    r = router(link, max_frame=1024)
    link.live, link.state = False, "backoff"
    assert (await r.request(Send("c", "x"))).error == "relay transport not connected"
    link.state = "disabled"
    res = await r.request(Send("c", "x"))
    assert (res.error, res.retryable) == ("relay disabled", False)
    link.state = "closed"
    res = await r.request(Send("c", "x"))
    assert (res.error, res.retryable) == ("relay transport closed", False)
    link.live, link.state = True, "ready"
    link.write_error = "connection closed"
    res = await r.request(Send("c", "x"))
    assert (res.error, res.retryable) == ("relay send failed: connection closed", True)
    link.write_error = None
    res = await r.request(Send("c", "x" * 2000))
    assert res.error == "relay frame too large"
    res = await r.request(Send("c", "x", metadata={"bad": object()}))
    assert res.error is not None and res.error.startswith("relay send failed: cannot encode")
    assert r.pending_count == 0


async def test_R42_timeout_counts_from_the_completed_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class SlowLink(FakeLink):
        async def write(self, text: str) -> str | None:
            await trio.sleep(7)
            return await super().write(text)

    link = SlowLink()
    r = router(link, timeout=30.0)
    start = trio.current_time()
    res = await r.request(Send("c", "x"))
    assert trio.current_time() - start == pytest.approx(37.0)
    assert (res.error, res.ambiguous, res.retryable) == ("relay outbound timed out", True, False)
    assert r.resolve(OutboundResult(link.written[0]["requestId"], {"success": True})) is False


async def test_R41_fail_all_resolves_every_pending_request_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = FakeLink()
    r = router(link)
    results: list[Any] = []

    async def one() -> None:
        results.append(await r.request(Send("c", "x")))

    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        assert r.pending_count == 3
        start = trio.current_time()
        assert r.fail_all("relay transport closed", retryable=True) == 3
    assert trio.current_time() == start
    assert [x.raw for x in results] == [
        {"success": False, "error": "relay transport closed", "retryable": True}
    ] * 3
    await r.wait_drained()


async def test_wait_drained_returns_when_the_last_request_ends_even_if_more_started_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = FakeLink()
    r = router(link)
    drained_at: list[float] = []

    async def one() -> None:
        await r.request(Send("c", "x"))

    async def drain() -> None:
        await r.wait_drained()
        drained_at.append(trio.current_time())

    async with trio.open_nursery() as n:
        n.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(drain)  # waits while the first request is pending
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(one)  # a second request starts before the first ends
        await trio.testing.wait_all_tasks_blocked()
        assert r.pending_count == 2 and not drained_at
        for sent in link.written:
            r.resolve(OutboundResult(sent["requestId"], {"success": True}))
        await trio.testing.wait_all_tasks_blocked()
        assert r.pending_count == 0
        assert drained_at == [trio.current_time()]


async def test_caller_cancellation_propagates_and_cleans_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = FakeLink()
    r = router(link)
    with trio.move_on_after(5) as scope:
        await r.request(Send("c", "x"))
    assert scope.cancelled_caught
    assert r.pending_count == 0


def test_chat_memory_is_an_lru_of_bounded_size() -> None:
    memory = ChatMemory(size=3)
    for chat in ("a", "b", "c"):
        memory.remember(inbound(chat, guild_id="g-" + chat))
    assert memory.get("a") is not None  # refreshes "a"
    memory.remember(inbound("d"))
    assert len(memory) == 3
    assert memory.get("b") is None
    facts = memory.get("a")
    assert facts is not None and facts.guild_id == "g-a" and facts.platform_raw == "discord"
    memory.remember(MessageEvent(text="no chat"))
    assert len(memory) == 3


# ----------------------------------------------------------------------------- the owner


def test_identity_and_reply_platform_are_resolved_in_one_place() -> None:
    link = FakeLink()
    slack = CapabilityDescriptor(1, "slack", "S", 4000, True, True, True, "plain", "chars")
    link.received = {"slack": slack}
    r = router(link, Identity("discord", "d1"), Identity("slack", "s1"))
    assert r.identity_for("slack") == Identity("slack", "s1")
    assert r.identity_for("matrix") is None
    assert r.identity_for(None) is None
    assert r.identity_for("") is None
    assert r.reply_platform("slack") == "slack"
    assert r.reply_platform("") == "discord"  # the primary identity's when none is named
    # Descriptors are the connection's (RelayConnection.descriptor_for decides): asked
    # through the link.
    assert r.descriptor_for("slack") is slack
    assert r.descriptor_for("") is link.descriptor


@pytest.mark.parametrize(
    ("result", "retry"),
    [
        (SendResult.from_wire({"success": True}), Retry.NO),
        (SendResult.queued_result(1), Retry.NO),
        (SendResult.from_wire({"success": False, "error": "x", "retryable": True}), Retry.OUTBOX),
        (
            SendResult.from_wire(
                {"success": False, "error": "x", "retryable": True, "ambiguous": True}
            ),
            Retry.NO,
        ),
        (SendResult.from_wire({"success": False, "error": "forbidden"}), Retry.NO),
        (SendResult.from_wire({"success": False, "code": "egress_declined"}), Retry.NO),
        (SendResult.failure("any text", kind=ErrorKind.REJECTED), Retry.NO),
        (SendResult.failure("any text", kind=ErrorKind.DISABLED), Retry.HALT),
        (SendResult.failure("any text", kind=ErrorKind.NOT_CONNECTED), Retry.AFTER_RECONNECT),
        (SendResult.failure("any text", kind=ErrorKind.CLOSED), Retry.AFTER_RECONNECT),
        (SendResult.failure("any text", kind=ErrorKind.DROPPED), Retry.AFTER_RECONNECT),
        (SendResult.failure("any text", kind=ErrorKind.TIMED_OUT), Retry.UNANSWERED),
        (SendResult.failure("any text", kind=ErrorKind.OUTBOX_FULL), Retry.NO),
    ],
)
def test_retry_is_decided_by_the_error_kind_not_the_text(result: SendResult, retry: Retry) -> None:
    assert retry_for(result) is retry


def test_every_error_kind_has_a_retry() -> None:
    for kind in ErrorKind:
        assert isinstance(retry_for(SendResult.failure("x", kind=kind)), Retry)


async def test_local_failures_carry_their_kind(autojump_clock: trio.testing.MockClock) -> None:
    link = FakeLink()
    r = router(link, max_frame=1024, timeout=5.0)
    link.live, link.state = False, "backoff"
    assert (await r.request(Send("c", "x"))).error_kind is ErrorKind.NOT_CONNECTED
    link.state = "disabled"
    assert (await r.request(Send("c", "x"))).error_kind is ErrorKind.DISABLED
    link.state = "closed"
    assert (await r.request(Send("c", "x"))).error_kind is ErrorKind.CLOSED
    link.live, link.state = True, "ready"
    link.write_error = "connection closed"
    assert (await r.request(Send("c", "x"))).error_kind is ErrorKind.DROPPED
    link.write_error = None
    assert (await r.request(Send("c", "x" * 2000))).error_kind is ErrorKind.REJECTED
    bad = Send("c", "x", metadata={"bad": object()})
    unencodable = await r.request(bad)
    assert unencodable.error_kind is ErrorKind.REJECTED
    assert retry_for(unencodable) is Retry.NO  # it would never encode: not queued
    assert (await r.request(Send("c", "x"))).error_kind is ErrorKind.TIMED_OUT


async def test_stop_makes_a_refusal_say_the_transport_closed() -> None:
    link = FakeLink()
    r = router(link)
    link.live, link.state = False, "idle_acked"  # a going-idle close in progress
    before = await r.request(Send("c", "x"))
    assert (before.error, before.retryable) == ("relay transport not connected", True)
    r.stop()
    after = await r.request(Send("c", "x"))
    assert (after.error, after.retryable, after.error_kind) == (
        "relay transport closed",
        False,
        ErrorKind.CLOSED,
    )
    assert link.written == []


@pytest.mark.parametrize(
    ("error", "retryable", "kind"),
    [
        ("relay transport closed", True, ErrorKind.DROPPED),
        ("relay transport closed", False, ErrorKind.CLOSED),
        ("relay disabled", False, ErrorKind.DISABLED),
    ],
)
async def test_fail_all_names_what_the_pending_requests_came_to(
    error: str, retryable: bool, kind: ErrorKind
) -> None:
    link = FakeLink()
    r = router(link)
    results: list[SendResult] = []

    async def one() -> None:
        results.append(await r.request(Send("c", "x")))

    async with trio.open_nursery() as n:
        n.start_soon(one)
        await link.arrived.wait()
        assert r.fail_all(error, retryable=retryable) == 1
    (result,) = results
    assert (result.error, result.retryable, result.error_kind) == (error, retryable, kind)


async def test_acks_and_interrupts_go_out_through_the_owner_link() -> None:
    link = FakeLink()
    r = router(link)
    assert r.send_nowait(InboundAck("b1")) is True
    link.live = False
    assert r.send_nowait(InboundAck("b2")) is False
    assert link.queued == [InboundAck("b1")]


class QueuedLink(FakeLink):
    """A link that answers ``QUEUED`` and writes later, as the supervisor's socket writer
    does: it reports each write (or its failure) to the router's ``write_done``."""

    def __init__(self, write_after_s: float) -> None:
        super().__init__()
        self.write_after_s = write_after_s
        self.router: OutboundRouter | None = None
        self.nursery: trio.Nursery | None = None

    async def send(self, frame: Outbound) -> str | Queued | None:
        text = self.encode(frame)
        assert self.nursery is not None
        self.nursery.start_soon(self._write_later, frame.request_id, text)
        return QUEUED

    async def _write_later(self, request_id: str, text: str) -> None:
        await trio.sleep(self.write_after_s)
        assert self.router is not None
        error = await self.write(text)
        self.router.write_done(request_id, error)


async def test_R42_a_queued_frame_times_out_counted_from_its_write(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    link = QueuedLink(write_after_s=7)
    r = link.router = router(link, timeout=30.0)
    link.nursery = nursery
    start = trio.current_time()
    res = await r.request(Send("c", "x"))
    assert trio.current_time() - start == pytest.approx(37.0)
    assert (res.error, res.ambiguous, res.retryable) == ("relay outbound timed out", True, False)
    assert r.pending_count == 0


async def test_a_queued_frame_answered_before_its_timeout_and_a_failed_write(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    link = QueuedLink(write_after_s=1)
    r = link.router = router(link)
    link.nursery = nursery
    results: list[SendResult] = []

    async def one() -> None:
        results.append(await r.request(Send("c", "x")))

    nursery.start_soon(one)
    await link.arrived.wait()
    assert r.resolve(OutboundResult(link.written[0]["requestId"], {"success": True}))
    await trio.testing.wait_all_tasks_blocked()
    assert results[0].success
    link.write_error = "connection closed"
    res = await r.request(Send("c", "x"))
    assert (res.error, res.retryable, res.error_kind) == (
        "relay send failed: connection closed",
        True,
        ErrorKind.DROPPED,
    )
    assert retry_for(res) is Retry.AFTER_RECONNECT
    assert r.write_done("unknown", None) is False
    assert r.pending_count == 0


# ---- the router's own timer (one task instead of a cancel scope per reply) ---------------


async def test_R42_with_the_router_timer_a_queued_frame_times_out_counted_from_its_write(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    link = QueuedLink(write_after_s=7)
    r = link.router = router(link, timeout=30.0)
    link.nursery = nursery
    nursery.start_soon(r.run_timer)
    await trio.testing.wait_all_tasks_blocked()
    start = trio.current_time()
    res = await r.request(Send("c", "x"))
    assert trio.current_time() - start == pytest.approx(37.0)
    assert (res.error, res.ambiguous, res.retryable) == ("relay outbound timed out", True, False)
    assert (r.pending_count, r.timeouts) == (0, 1)
    assert r.resolve(OutboundResult(link.written[0]["requestId"], {"success": True})) is False


async def test_R42_with_the_router_timer_a_written_frame_times_out_counted_from_its_write(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    class SlowLink(FakeLink):
        async def write(self, text: str) -> str | None:
            await trio.sleep(7)
            return await super().write(text)

    link = SlowLink()
    r = router(link, timeout=30.0)
    nursery.start_soon(r.run_timer)
    start = trio.current_time()
    res = await r.request(Send("c", "x"))
    assert trio.current_time() - start == pytest.approx(37.0)
    assert res.error == "relay outbound timed out"


async def test_with_the_router_timer_answers_and_timeouts_interleave_each_at_its_own_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Requests written a second apart: the answered ones end when answered, the others
    each 30 s after their own write; the timer's heap is empty afterwards."""
    link = QueuedLink(write_after_s=1)
    r = link.router = router(link, timeout=30.0)
    link.nursery = nursery
    nursery.start_soon(r.run_timer)
    ended: dict[int, tuple[float, bool]] = {}

    async def one(n: int) -> None:
        await trio.sleep(n)
        res = await r.request(Send("c", str(n)))
        ended[n] = (trio.current_time(), res.success)

    async with trio.open_nursery() as inner:
        for n in range(4):
            inner.start_soon(one, n)
        await trio.sleep(5)
        for frame in link.written:
            if frame["action"]["content"] in ("1", "3"):
                assert r.resolve(OutboundResult(frame["requestId"], {"success": True}))
    assert ended == {
        0: (pytest.approx(31.0), False),
        1: (pytest.approx(5.0), True),
        2: (pytest.approx(33.0), False),
        3: (pytest.approx(5.0), True),
    }
    assert r.timeouts == 2
    await trio.testing.wait_all_tasks_blocked()
    assert r._deadlines == []


async def test_R42_a_request_waiting_when_the_timer_stops_keeps_its_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The timer's owner ends while a reply waits (written, and one not yet written): each
    goes on waiting in its own scope and still times out 30 s after its write."""
    link = QueuedLink(write_after_s=20)
    r = link.router = router(link, timeout=30.0)
    link.nursery = nursery
    ended: dict[str, float] = {}

    async def one(name: str, after: float) -> None:
        await trio.sleep(after)
        res = await r.request(Send("c", name))
        assert res.error == "relay outbound timed out"
        ended[name] = trio.current_time()

    async with trio.open_nursery() as inner, trio.open_nursery() as timer:
        timer.start_soon(r.run_timer)
        inner.start_soon(one, "early", 0)  # written at 20
        inner.start_soon(one, "late", 5)  # written at 25
        await trio.sleep(22)
        timer.cancel_scope.cancel()
    assert ended == {"early": pytest.approx(50.0), "late": pytest.approx(55.0)}
    assert r.pending_count == 0


async def test_the_router_timer_runs_once_at_a_time(nursery: trio.Nursery) -> None:
    r = router(FakeLink())
    nursery.start_soon(r.run_timer)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(RuntimeError, match="already running"):
        await r.run_timer()
