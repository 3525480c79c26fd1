"""Outbound correlation and the RC §3 rules, against an in-memory link (no socket)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import trio
import trio.testing

from protocol.actions import Edit, FollowUp, GetChatInfo, Send, Typing
from protocol.descriptor import CapabilityDescriptor, placeholder_descriptor
from protocol.events import Identity, MessageEvent, SessionSource
from protocol.frames import Frame, OutboundResult
from relay_runtime.outbound import ChatMemory, OutboundRouter, new_request_id


class FakeLink:
    """A link whose writes land in a list; the test plays the connector."""

    def __init__(self, descriptor: CapabilityDescriptor | None = None) -> None:
        self.live = True
        self.state = "ready"
        self.written: list[dict[str, Any]] = []
        self.write_error: str | None = None
        self.descriptor = descriptor or placeholder_descriptor("discord")
        self.arrived = trio.Event()

    @property
    def descriptors(self) -> dict[str, CapabilityDescriptor]:
        return {}

    @property
    def default_descriptor(self) -> CapabilityDescriptor:
        return self.descriptor

    def send_nowait(self, frame: Frame) -> bool:
        return False

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
    return OutboundRouter(
        link,
        identities=identities or (Identity("discord", "d1"),),
        outbound_timeout_s=timeout,
        max_frame_bytes=max_frame,
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
