"""The inbound dispatcher: ordering, bounds, dedupe, acks, interrupts (R58-R71)."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from protocol import Action, PassthroughForward, PassthroughForwardFrame, Send, SendResult
from relay_runtime import Turn
from relay_runtime._dispatcher import Dispatcher
from relay_runtime._replies import Replies
from relay_runtime._state import DB_FILENAME, ClaimStatus, StateDB
from tests.runtime import state_steps as steps
from tests.runtime.dispatch_helpers import FakeLink, MemoryState, Verdict, inbound

AgentFn = Callable[[Turn], Awaitable[str | None]]


class Observed(StateDB):
    """A state db that tells a test when a commit a caller awaited is over.

    Acks follow a ``flush`` (admission's duplicates, the recorder) or a ``complete_turn``
    (a finished turn); :meth:`wait_commit` returns after the next one ends, so a test can
    wait for the dispatcher's own commits without making one itself.
    """

    _commit_over: trio.Event | None = None

    async def wait_commit(self) -> None:
        """Wait until the next ``flush`` or ``complete_turn`` ends."""
        if self._commit_over is None:
            self._commit_over = trio.Event()
        await self._commit_over.wait()

    def _signal(self) -> None:
        if self._commit_over is not None:
            self._commit_over.set()
            self._commit_over = None

    async def flush(self) -> None:
        try:
            await super().flush()
        finally:
            self._signal()

    async def complete_turn(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().complete_turn(*args, **kwargs)
        finally:
            self._signal()


@attrs.define(eq=False)
class Rig:
    dispatcher: Dispatcher
    link: FakeLink
    state: Any
    replies: Replies
    inbox: trio.MemorySendChannel[Any]

    async def feed(self, *frames: Any) -> None:
        for frame in frames:
            await self.inbox.send(frame)

    async def settle(self) -> None:
        """Wait until every admitted delivery has finished."""
        await trio.testing.wait_all_tasks_blocked()
        await self.dispatcher.wait_idle()


def make_rig(
    nursery: trio.Nursery,
    agent: AgentFn | None,
    *,
    trust: Any = None,
    state: Any = None,
    link: FakeLink | None = None,
    **limits: int,
) -> Rig:
    link = link or FakeLink()
    state = state if state is not None else MemoryState()
    replies = Replies(link, state)
    dispatcher = Dispatcher(
        agent=agent,
        trust=trust or Verdict(),
        replies=replies,
        db=state,
        outbound=link,
        **limits,
    )
    send, recv = trio.open_memory_channel[Any](0)
    nursery.start_soon(dispatcher.run, recv, nursery)
    return Rig(dispatcher, link, state, replies, send)


async def echo(turn: Turn) -> str:
    return turn.text


def contents(link: FakeLink) -> list[str]:
    return [r.action.content for r in link.requests if isinstance(r.action, Send)]


# ----------------------------------------------------------------------------- R58-R60


async def test_R58_turn_awaiting_an_outbound_result_does_not_block_the_reader(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    second_admitted = trio.Event()

    async def slow_connector(
        action: Action, platform_raw: str | None, request_id: str | None
    ) -> SendResult:
        await second_admitted.wait()  # the result only comes once the reader moved on
        return SendResult.from_wire({"success": True})

    rig = make_rig(nursery, echo, link=FakeLink(responder=slow_connector))
    await rig.feed(inbound("one", chat="a"))
    with trio.fail_after(5):
        await rig.feed(inbound("two", chat="b"))
    second_admitted.set()
    await rig.settle()
    assert sorted(contents(rig.link)) == ["one", "two"]


async def test_R59_same_session_runs_in_arrival_order_others_overlap(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    spans: dict[str, tuple[float, float]] = {}

    async def agent(turn: Turn) -> None:
        start = trio.current_time()
        await trio.sleep(10)
        spans[turn.text] = (start, trio.current_time())

    rig = make_rig(nursery, agent)
    await rig.feed(
        inbound("a1", chat="A"),
        inbound("b1", chat="B"),
        inbound("a2", chat="A"),
        inbound("a3", chat="A"),
    )
    await rig.settle()
    assert [spans[k][0] for k in ("a1", "a2", "a3")] == [0.0, 10.0, 20.0]
    assert spans["b1"] == (0.0, 10.0)  # overlapped with a1


async def test_slow_turn_in_one_session_does_not_delay_another_sessions_reply(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def agent(turn: Turn) -> str:
        if turn.text == "slow":
            await trio.sleep(3600)
        return f"re: {turn.text}"

    rig = make_rig(nursery, agent)
    await rig.feed(inbound("slow", chat="A"), inbound("fast", chat="B"))
    await rig.settle()
    at = {r.action.content: r.at for r in rig.link.requests if isinstance(r.action, Send)}
    assert at["re: fast"] == 0.0
    assert at["re: slow"] == 3600.0


async def test_R60_concurrency_bounded_and_beyond_the_pending_bound_the_inbox_holds_them(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = 0
    peak = 0

    async def agent(turn: Turn) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(10)
        running -= 1
        return turn.text

    rig = make_rig(nursery, agent, max_concurrent_turns=2, max_pending_inbound=3)
    admitted_at: list[float] = []
    with caplog.at_level(logging.WARNING, logger="relay_runtime.dispatcher"):
        for i in range(7):
            await rig.feed(inbound(f"m{i}", chat=f"c{i}"))
            admitted_at.append(trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        # Issue 11 (RC §7.2 as changed): the reader never waits for the dispatcher. Three
        # hold pending slots; the other four wait in the durable inbox (claimed, frames
        # kept in the state db), and come back in order as slots free.
        assert rig.dispatcher.pending == 3 and rig.dispatcher.parked == 4
        assert len(rig.state.inbox) == 7  # live: each frame kept until its turn ends
        await rig.settle()
    assert peak == 2
    assert admitted_at == [0.0] * 7
    assert sorted(contents(rig.link)) == [f"m{i}" for i in range(7)]
    episodes = [r for r in caplog.records if "wait in the durable inbox" in r.getMessage()]
    assert len(episodes) == 1  # one WARNING per episode
    assert rig.dispatcher.pending == 0 and rig.dispatcher.parked == 0


# ----------------------------------------------------------------------------- dedupe


async def test_R61_replay_of_a_completed_delivery_is_acked_not_run(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    rig = make_rig(nursery, echo)
    await rig.feed(inbound("x", message_id="m1", buffer_id="b1"))
    await rig.settle()
    # Same K_msg under a new bufferId, and the same bufferId with no message id.
    await rig.feed(inbound("x", message_id="m1", buffer_id="b2"), inbound("x", buffer_id="b1"))
    await rig.settle()
    assert contents(rig.link) == ["x"]
    assert rig.link.acks == ["b1", "b2", "b1"]
    assert rig.dispatcher.stats.duplicates == 2


async def test_R62_duplicate_mid_turn_not_run_acked_when_original_completes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()

    async def agent(turn: Turn) -> str:
        await release.wait()
        return "done"

    rig = make_rig(nursery, agent)
    await rig.feed(inbound("x", message_id="m1", buffer_id="b1"))
    await rig.feed(inbound("x", message_id="m1", buffer_id="b2"))
    await trio.testing.wait_all_tasks_blocked()
    assert rig.link.acks == []  # the duplicate waits for the original
    release.set()
    await rig.settle()
    assert contents(rig.link) == ["done"]
    assert rig.link.acks == ["b1", "b2"]


async def test_R63_completed_keys_survive_a_restart(tmp_path: Path) -> None:
    calls: list[str] = []

    async def agent(turn: Turn) -> str:
        calls.append(turn.text)
        return "ok"

    for _ in range(2):
        db = await StateDB.open(tmp_path, now=1000.0)
        async with db, trio.open_nursery() as nursery:
            rig = make_rig(nursery, agent, state=db)
            await rig.feed(inbound("x", message_id="m1", buffer_id="b1"))
            await rig.settle()
            nursery.cancel_scope.cancel()
        assert rig.link.acks == ["b1"]
    assert calls == ["x"]


async def test_R64_turn_cancelled_by_shutdown_is_not_acked_and_runs_on_replay(
    tmp_path: Path,
) -> None:
    started = trio.Event()
    calls: list[str] = []

    async def stuck(turn: Turn) -> str:
        calls.append("stuck")
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def quick(turn: Turn) -> str:
        calls.append("quick")
        return "ok"

    db = await StateDB.open(tmp_path, now=1000.0)
    async with db:
        async with trio.open_nursery() as nursery:
            rig = make_rig(nursery, stuck, state=db)
            await rig.feed(inbound("x", message_id="m1", buffer_id="b1"))
            # A queued delivery of the same session that never started.
            await rig.feed(inbound("y", message_id="m2", buffer_id="b2"))
            await started.wait()
            nursery.cancel_scope.cancel()  # shutdown
        assert rig.link.acks == []
        assert await steps.claim_status(db, ("discord", "c1", "m1"), "b1") is ClaimStatus.NEW
        assert await steps.claim_status(db, ("discord", "c1", "m2"), "b2") is ClaimStatus.NEW
        assert [t.state for t in await db.turns()] == ["cancelled"]
        async with trio.open_nursery() as nursery:
            rig = make_rig(nursery, quick, state=db)
            await rig.feed(inbound("x", message_id="m1", buffer_id="b1"))
            await rig.feed(inbound("y", message_id="m2", buffer_id="b2"))
            await rig.settle()
            nursery.cancel_scope.cancel()
    assert calls == ["stuck", "quick", "quick"]
    assert rig.link.acks == ["b1", "b2"]


async def test_admitted_claims_are_recorded_while_their_turns_still_run(tmp_path: Path) -> None:
    """Claims are decided in memory and written behind; the dispatcher commits them soon
    after admission, so a crash during a long turn finds it ``running``."""
    started = trio.Event()

    async def slow(turn: Turn) -> str:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    db = await Observed.open(tmp_path, now=1000.0)
    async with db, trio.open_nursery() as nursery:
        rig = make_rig(nursery, slow, state=db)
        await rig.feed(inbound("x", message_id="m1", buffer_id="b1"))
        await started.wait()

        def read() -> tuple[list[Any], list[Any]]:
            with sqlite3.connect(tmp_path / DB_FILENAME) as raw:  # not through db: no flush
                rows = raw.execute("SELECT session_key, state FROM relay_turns").fetchall()
                claims = raw.execute("SELECT state FROM relay_dedupe_claims").fetchall()
            raw.close()
            return rows, claims

        with trio.fail_after(5):
            while not read()[0]:
                await db.wait_commit()  # the dispatcher's own commit, nobody else's
        rows, claims = read()
        assert rows == [("agent:main:discord:group:c1:u1", "running")]
        assert claims == [("in_flight",)]
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class FileCheckingLink(FakeLink):
    """Reads the state file's claims at each ack: what was committed before it went out."""

    path: Path | None = None
    at_ack: list[list[tuple[Any, ...]]] = attrs.field(factory=list)

    def send_nowait(self, frame: Any) -> bool:
        assert self.path is not None
        with sqlite3.connect(self.path / DB_FILENAME) as raw:
            self.at_ack.append(raw.execute("SELECT state FROM relay_dedupe_claims").fetchall())
        raw.close()
        return super().send_nowait(frame)


async def test_R65_a_replay_of_a_live_delivery_is_acked_after_its_completion_commits(
    tmp_path: Path,
) -> None:
    """A live delivery (no bufferId, nobody to ack) records its completion behind; a
    buffered replay of it is COMPLETED at once and acked only once that is committed."""
    db = await StateDB.open(tmp_path, now=1000.0)
    link = FileCheckingLink(path=tmp_path)
    async with db, trio.open_nursery() as nursery:
        rig = make_rig(nursery, echo, state=db, link=link)
        await rig.feed(inbound("x", message_id="m1"))
        await rig.settle()
        assert await steps.claim_status(db, ("discord", "c1", "m1"), None) is ClaimStatus.COMPLETED
        await rig.feed(inbound("x", message_id="m1", buffer_id="b1"))
        await rig.settle()
        nursery.cancel_scope.cancel()
    assert contents(link) == ["x"]  # run once
    assert link.acks == ["b1"]
    assert link.at_ack == [[("completed",)]]


async def test_R65_in_flight_duplicate_admitted_with_a_completed_one_is_acked(
    tmp_path: Path,
) -> None:
    """One admission holds a replay of a completed delivery (acked after a commit) and a
    replay of a running one: the latter waits for its original and is acked when it ends,
    even if it ends while the former's ack waits for the commit (review finding)."""
    release = trio.Event()

    async def agent(turn: Turn) -> str:
        if turn.text == "slow":
            await release.wait()
        return ""

    class ReleaseOnFlush(Observed):
        async def flush(self) -> None:
            release.set()  # the running turn ends while the admission flushes
            await trio.testing.wait_all_tasks_blocked()
            await super().flush()

    db = await ReleaseOnFlush.open(tmp_path, now=1000.0)
    async with db, trio.open_nursery() as nursery:
        rig = make_rig(nursery, agent, state=db)
        await rig.feed(inbound("done", message_id="m0", buffer_id="b0"))
        await rig.settle()
        await rig.feed(inbound("slow", message_id="m1"))
        with trio.fail_after(5):
            while rig.dispatcher.running != 1:
                await trio.testing.wait_all_tasks_blocked()
        await rig.dispatcher.admit_many(
            [
                inbound("done", message_id="m0", buffer_id="b1"),
                inbound("slow", message_id="m1", buffer_id="b2"),
            ],
            nursery,
        )
        with trio.fail_after(5):
            await rig.settle()
            while len(rig.link.acks) < 3:
                await db.wait_commit()
        nursery.cancel_scope.cancel()
    assert sorted(rig.link.acks) == ["b0", "b1", "b2"]


async def test_R65_a_duplicate_arriving_while_a_completion_is_decided_waits_for_its_commit(
    tmp_path: Path,
) -> None:
    """A live turn's completion is to be written behind; a buffered duplicate admitted just
    before it is decided must still be acked only after the completion is committed."""
    reached, gate = trio.Event(), trio.Event()

    class Gated(Observed):
        async def complete_turn(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("write_behind"):
                reached.set()
                await gate.wait()
            await super().complete_turn(*args, **kwargs)

    db = await Gated.open(tmp_path, now=1000.0)
    link = FileCheckingLink(path=tmp_path)
    async with db, trio.open_nursery() as nursery:
        rig = make_rig(nursery, echo, state=db, link=link)
        await rig.feed(inbound("x", message_id="m1"))
        with trio.fail_after(5):
            await reached.wait()
        await rig.dispatcher.admit_many([inbound("x", message_id="m1", buffer_id="b1")], nursery)
        gate.set()
        with trio.fail_after(5):
            await rig.settle()
            while not link.acks:
                await db.wait_commit()
        nursery.cancel_scope.cancel()
    assert contents(link) == ["x"]
    assert link.acks == ["b1"]
    assert link.at_ack == [[("completed",)]]


# ----------------------------------------------------------------------------- acks


@attrs.define(eq=False)
class Journal(MemoryState):
    """MemoryState that logs when the COMPLETED record commits."""

    log: list[str] = attrs.field(factory=list)

    async def complete_turn(self, *args: Any, **kwargs: Any) -> None:
        await super().complete_turn(*args, **kwargs)
        self.log.append("committed")


@attrs.define(eq=False)
class JournalLink(FakeLink):
    log: list[str] = attrs.field(factory=list)

    def send_nowait(self, frame: Any) -> bool:
        self.log.append(f"ack {frame.buffer_id}")
        return super().send_nowait(frame)


async def test_R65_ack_follows_reply_confirmation_and_commit(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    journal: list[str] = []

    async def confirming(
        action: Action, platform_raw: str | None, request_id: str | None
    ) -> SendResult:
        await trio.sleep(1)
        journal.append("reply confirmed")
        return SendResult.from_wire({"success": True})

    state = Journal(log=journal)
    link = JournalLink(responder=confirming, log=journal)
    rig = make_rig(nursery, echo, state=state, link=link)
    await rig.feed(inbound("x", buffer_id="b1"))
    await rig.settle()
    assert journal == ["reply confirmed", "committed", "ack b1"]


async def test_R65_ack_follows_outboxing_of_the_reply(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    journal: list[str] = []
    state = Journal(log=journal)
    link = JournalLink(log=journal)
    rig = make_rig(nursery, echo, state=state, link=link)
    # A non-empty outbox: new replies queue behind it even while READY.
    queued = '{"op":"send","chat_id":"c0","content":"old"}'
    await state.put("discord", "b1", queued, "r0", "send", time.time())
    await rig.replies.sweep()
    await rig.feed(inbound("x", buffer_id="b1"))
    await rig.settle()
    assert len(state.outbox) == 2
    assert journal == ["committed", "ack b1"]
    assert link.requests == []


async def test_R66_live_inbound_never_acked_raising_handler_completed_and_acked(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(turn: Turn) -> str:
        raise RuntimeError("agent bug")

    state = MemoryState()
    rig = make_rig(nursery, boom, state=state)
    with caplog.at_level(logging.ERROR, logger="relay_runtime.dispatcher"):
        await rig.feed(inbound("live"), inbound("buffered", message_id="m9", buffer_id="b9"))
        await rig.settle()
    assert rig.link.acks == ["b9"]
    assert rig.dispatcher.stats.failed == 2
    assert state.turn_states() == ["failed", "failed"]
    assert any("raised" in r.getMessage() for r in caplog.records)
    # Counted completed: a replay is not run again (no poison loop).
    await rig.feed(inbound("buffered", message_id="m9", buffer_id="b10"))
    await rig.settle()
    assert rig.dispatcher.stats.failed == 2
    assert rig.link.acks == ["b9", "b10"]


# ----------------------------------------------------------------------------- interrupts


async def test_R67_interrupt_cancels_only_that_sessions_running_turn(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cancelled: list[str] = []

    async def agent(turn: Turn) -> str:
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled.append(turn.text)
            raise
        return f"re: {turn.text}"

    state = MemoryState()
    rig = make_rig(nursery, agent, state=state)
    await rig.feed(
        inbound("a1", chat="A", buffer_id="ba1"),
        inbound("a2", chat="A", buffer_id="ba2"),
        inbound("b1", chat="B", buffer_id="bb1"),
    )
    await trio.sleep(1)
    assert rig.dispatcher.interrupt("agent:main:nowhere", "") is False
    assert rig.dispatcher.interrupt("agent:main:discord:group:A:u1", "A") is True
    await rig.settle()
    assert cancelled == ["a1"]
    assert sorted(contents(rig.link)) == ["re: a2", "re: b1"]  # queued a2 still ran
    assert rig.dispatcher.stats.interrupted == 1
    assert sorted(rig.link.acks) == ["ba1", "ba2", "bb1"]  # interrupted counts completed


# ----------------------------------------------------------------------------- trust


async def test_trust_denied_and_empty_events_complete_without_the_agent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    calls: list[str] = []

    async def agent(turn: Turn) -> str:
        calls.append(turn.text)
        return "x"

    trust = Verdict(allow=False, run_agent=False, reply="not allowed here")
    rig = make_rig(nursery, agent, trust=trust)
    await rig.feed(inbound("please", buffer_id="b1"), inbound("", buffer_id="b2"))
    await rig.settle()
    assert calls == []
    assert contents(rig.link) == ["not allowed here"]
    assert [e.text for e in trust.seen] == ["please"]  # an empty event needs no verdict
    assert rig.link.acks == ["b1", "b2"]
    assert rig.dispatcher.stats.denied == 1
    assert rig.dispatcher.stats.empty == 1


async def test_media_only_event_runs_the_agent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[tuple[str, ...]] = []

    async def agent(turn: Turn) -> None:
        seen.append(turn.event.media_urls)

    rig = make_rig(nursery, agent)
    await rig.feed(inbound("", media_urls=("https://x/y.png",)))
    await rig.settle()
    assert seen == [("https://x/y.png",)]


async def test_no_agent_registered_nothing_run_or_acked(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    rig = make_rig(nursery, None)
    await rig.feed(inbound("x", buffer_id="b1"))
    await rig.settle()
    assert rig.link.acks == []
    assert rig.link.requests == []


# ----------------------------------------------------------------------------- passthrough


def forward(platform: str, body: bytes | dict[str, Any], buffer_id: str | None) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return PassthroughForwardFrame(
        forward=PassthroughForward(platform=platform, body=raw), buffer_id=buffer_id
    )


async def test_R70_buffered_discord_passthrough_runs_and_is_acked_after(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    interaction = {
        "id": "i1",
        "type": 2,
        "channel_id": "ch1",
        "guild_id": "g1",
        "data": {"name": "ask"},
        "member": {"user": {"id": "42", "username": "ann"}},
    }
    turns: list[Turn] = []

    async def agent(turn: Turn) -> str:
        turns.append(turn)
        return "answer"

    rig = make_rig(nursery, agent)
    await rig.feed(forward("discord", interaction, "bp1"))
    await rig.settle()
    (turn,) = turns
    assert turn.text == "ask"
    assert turn.session_key == "agent:main:discord:group:ch1:42"
    assert turn.event.delivered_via_relay
    assert contents(rig.link) == ["answer"]
    assert rig.link.acks == ["bp1"]
    # A replay of the same interaction (same K_msg) is acked, not run.
    await rig.feed(forward("discord", interaction, "bp2"))
    await rig.settle()
    assert len(turns) == 1
    assert rig.link.acks == ["bp1", "bp2"]


async def test_R71_other_or_malformed_passthrough_dropped_acked_if_buffered(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig(nursery, echo)
    with caplog.at_level(logging.INFO, logger="relay_runtime.dispatcher"):
        await rig.feed(
            forward("slack", {"x": 1}, "bs1"),
            forward("slack", {"x": 1}, None),
            forward("discord", base64.b64decode("bm90IGpzb24="), "bd1"),
        )
        await rig.settle()
    assert rig.link.requests == []
    assert rig.link.acks == ["bs1", "bd1"]
    assert rig.dispatcher.stats.dropped == 3
    assert any("no handler for slack" in r.getMessage() for r in caplog.records)


async def test_chat_memory_is_fed_from_every_event(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    rig = make_rig(nursery, echo)
    await rig.feed(inbound("x", guild="g1"))
    await rig.settle()
    assert [e.source.guild_id for e in rig.link.remembered] == ["g1"]


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_concurrent_turns"):
        Dispatcher(
            agent=echo,
            trust=Verdict(),
            replies=None,  # type: ignore[arg-type]
            db=MemoryState(),
            outbound=FakeLink(),
            max_concurrent_turns=5,
            max_pending_inbound=4,
        )


# ----------------------------------------------------------------------------- batched admission


def _queued_rig(
    nursery: trio.Nursery, agent: AgentFn, frames: list[Any], **limits: int
) -> tuple[Dispatcher, FakeLink, MemoryState]:
    """A dispatcher whose hand-off channel already holds ``frames`` when it starts."""
    link, state = FakeLink(), MemoryState()
    dispatcher = Dispatcher(
        agent=agent,
        trust=Verdict(),
        replies=Replies(link, state),
        db=state,
        outbound=link,
        **limits,
    )
    send, recv = trio.open_memory_channel[Any](len(frames))
    for frame in frames:
        send.send_nowait(frame)
    send.close()
    nursery.start_soon(dispatcher.run, recv, nursery)
    return dispatcher, link, state


async def test_frames_waiting_in_the_channel_are_claimed_in_one_operation(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    frames = [
        inbound("a1", chat="a", message_id="1", buffer_id="b1"),
        inbound("b1", chat="b", message_id="2", buffer_id="b2"),
        inbound("a1", chat="a", message_id="1", buffer_id="b3"),  # duplicate within the burst
        inbound("a2", chat="a", message_id="3", buffer_id="b4"),
        inbound("b2", chat="b", message_id="4", buffer_id="b5"),
    ]
    dispatcher, link, state = _queued_rig(nursery, echo, frames)
    await trio.testing.wait_all_tasks_blocked()
    await dispatcher.wait_idle()
    assert state.claim_batches == [5]
    sent = contents(link)
    assert sorted(sent) == ["a1", "a2", "b1", "b2"]
    assert [c for c in sent if c[0] == "a"] == ["a1", "a2"]  # per-session order kept
    assert [c for c in sent if c[0] == "b"] == ["b1", "b2"]
    assert dispatcher.stats.duplicates == 1
    # The duplicate is acked when its original completes, not before.
    assert link.acks.index("b3") > link.acks.index("b1")
    assert sorted(link.acks) == ["b1", "b2", "b3", "b4", "b5"]


async def test_a_burst_is_split_at_the_pending_bound_and_at_the_batch_limit(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peak = 0

    async def agent(turn: Turn) -> str:
        nonlocal peak
        peak = max(peak, dispatcher.pending)
        await trio.sleep(1)
        return turn.text

    frames = [inbound(f"m{i}", chat=f"c{i % 3}") for i in range(7)]
    dispatcher, link, state = _queued_rig(
        nursery, agent, frames, max_concurrent_turns=1, max_pending_inbound=3
    )
    await trio.testing.wait_all_tasks_blocked()
    await dispatcher.wait_idle()
    assert peak <= 3
    assert state.claim_batches == [7]  # all admitted at once, four of them parked
    assert sorted(contents(link)) == sorted(f"m{i}" for i in range(7))
    for chat in range(3):
        ours = [c for c in contents(link) if int(c[1:]) % 3 == chat]
        assert ours == sorted(ours, key=lambda c: int(c[1:]))

    frames = [inbound(f"n{i}", chat=f"d{i}") for i in range(70)]
    dispatcher, link, state = _queued_rig(nursery, echo, frames)
    await trio.testing.wait_all_tasks_blocked()
    await dispatcher.wait_idle()
    assert state.claim_batches == [64, 6]
    assert len(contents(link)) == 70


async def test_R60_admit_many_claims_everything_at_once_and_parks_beyond_the_bound(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def agent(turn: Turn) -> str:
        await trio.sleep(10)
        return turn.text

    link, state = FakeLink(), MemoryState()
    dispatcher = Dispatcher(
        agent=agent,
        trust=Verdict(),
        replies=Replies(link, state),
        db=state,
        outbound=link,
        max_concurrent_turns=1,
        max_pending_inbound=3,
    )
    frames = [inbound(f"m{i}", chat=f"c{i}") for i in range(5)]
    # run() starts the unparker; nothing arrives on its channel, admission is called below.
    _, frames_in = trio.open_memory_channel[Any](0)
    await nursery.start(dispatcher.run, frames_in, nursery)
    await dispatcher.admit_many(frames, nursery)  # returns at once: it never waits for room
    assert state.claim_batches == [5]
    assert (dispatcher.pending, dispatcher.parked) == (3, 2)
    await trio.sleep(10.5)
    assert (dispatcher.pending, dispatcher.parked) == (3, 1)
    await dispatcher.wait_idle()
    assert state.claim_batches == [5]
    assert sorted(contents(link)) == [f"m{i}" for i in range(5)]
