"""The reply policy and the durable outbox (R43-R47, the send re-submit rule, DISABLED)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from protocol import Action, Edit, FollowUp, Send, Typing
from protocol._results import (
    DISABLED,
    NOT_CONNECTED,
    OUTBOUND_TIMED_OUT,
    OUTBOX_FULL,
    TRANSPORT_CLOSED,
    ErrorKind,
    SendResult,
)
from relay_runtime._replies import SWEEP_INTERVAL_S, Replies
from relay_runtime._state import StateDB
from tests.runtime.dispatch_helpers import FakeLink, MemoryState, ok

DAY = 86400.0


@attrs.define
class Clock:
    """A settable wall clock for outbox timestamps."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def send(text: str, chat: str = "c1") -> Send:
    return Send(chat_id=chat, content=text)


def sent_texts(link: FakeLink) -> list[str]:
    return [r.action.content for r in link.requests if isinstance(r.action, Send | FollowUp)]


async def test_R43_edit_and_typing_fail_fast_when_not_ready() -> None:
    link = FakeLink(state="backoff")
    state = MemoryState()
    replies = Replies(link, state)
    for action in (Edit(chat_id="c1", message_id="m1", content="x"), Typing(chat_id="c1")):
        result = await replies.perform(action, platform_raw="discord")
        assert (result.success, result.error, result.retryable) == (False, NOT_CONNECTED, True)
    assert state.outbox == {}


async def test_R44_send_when_not_ready_is_committed_and_queued(tmp_path: Path) -> None:
    link = FakeLink(state="backoff")
    async with await StateDB.open(tmp_path, now=0) as db:
        replies = Replies(link, db)
        result = await replies.send(send("hello"), platform_raw="discord")
        assert result.queued
        assert not result.success
        assert result.error == "relay not connected; queued for delivery after reconnect"
        (entry,) = await db.entries()
        assert entry.id == result.outbox_id
        assert (entry.kind, entry.platform, entry.bot_id) == ("send", "discord", "b1")
        assert '"content":"hello"' in entry.action_json
        follow = FollowUp(session_key="k", kind="reply", content="later")
        assert (await replies.send(follow, platform_raw="discord")).queued
        assert [e.kind for e in await db.entries()] == ["send", "follow_up"]
    assert link.requests == []


async def test_R45_outbox_survives_restart_and_flushes_fifo_with_stored_ids(
    tmp_path: Path,
) -> None:
    down = FakeLink(state="backoff")
    async with await StateDB.open(tmp_path, now=0) as db:
        replies = Replies(down, db)
        for text in ("one", "two", "three"):
            assert (await replies.send(send(text), platform_raw="discord")).queued
        stored = [e.request_id for e in await db.entries()]
    # A restart: a new process opens the same state dir.
    link = FakeLink(state="ready")
    async with await StateDB.open(tmp_path, now=0) as db:
        replies = Replies(link, db)
        await replies.sweep()  # what the flusher does when it starts
        # While the outbox is non-empty, new sends queue behind it even when READY.
        assert (await replies.send(send("four"), platform_raw="discord")).queued
        assert link.requests == []
        assert await replies.flush() == 4
        assert await db.count() == 0
    assert sent_texts(link) == ["one", "two", "three", "four"]
    assert [r.request_id for r in link.requests[:3]] == stored
    assert all(r.platform_raw == "discord" for r in link.requests)
    # Empty again: sends go out directly.
    replies_after = Replies(link, MemoryState())
    assert (await replies_after.send(send("five"), platform_raw="discord")).success


async def test_R45_order_is_kept_per_chat_and_other_chats_are_not_held_up() -> None:
    link = FakeLink(state="backoff")
    state = MemoryState()
    replies = Replies(link, state)
    await replies.load_lanes()  # what the flusher does when it starts
    assert (await replies.send(send("a1", chat="A"), platform_raw="discord")).queued
    link.state = "ready"
    # Chat B has nothing queued: it goes out at once. Chat A queues behind its backlog.
    assert (await replies.send(send("b1", chat="B"), platform_raw="discord")).success
    assert (await replies.send(send("a2", chat="A"), platform_raw="discord")).queued
    assert sent_texts(link) == ["b1"]
    assert await replies.flush() == 2
    assert sent_texts(link) == ["b1", "a1", "a2"]
    # A's backlog is gone: A sends directly again.
    assert (await replies.send(send("a3", chat="A"), platform_raw="discord")).success
    assert replies.outbox_count == 0


async def test_lanes_are_loaded_from_an_outbox_left_by_a_previous_run(tmp_path: Path) -> None:
    async with await StateDB.open(tmp_path, now=0) as db:
        replies = Replies(FakeLink(state="backoff"), db)
        assert (await replies.send(send("old", chat="A"), platform_raw="discord")).queued
    link = FakeLink(state="ready")
    async with await StateDB.open(tmp_path, now=0) as db:
        replies = Replies(link, db)
        await replies.load_lanes()
        assert (await replies.send(send("new", chat="A"), platform_raw="discord")).queued
        assert (await replies.send(send("other", chat="B"), platform_raw="discord")).success
        assert await replies.flush() == 2
    assert sent_texts(link) == ["other", "old", "new"]


async def test_R45_drop_or_timeout_keeps_the_entry_only_a_timeout_counts(tmp_path: Path) -> None:
    failures = iter(
        [
            SendResult.failure(TRANSPORT_CLOSED, retryable=True, kind=ErrorKind.DROPPED),
            SendResult.failure(OUTBOUND_TIMED_OUT, ambiguous=True, kind=ErrorKind.TIMED_OUT),
        ]
    )

    async def flaky(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return next(failures, SendResult.from_wire({"success": False, "error": "bad chat"}))

    link = FakeLink(state="backoff", responder=flaky)
    async with await StateDB.open(tmp_path, now=0) as db:
        replies = Replies(link, db)
        await replies.send(send("a"), platform_raw="discord")
        link.state = "ready"
        assert await replies.flush() == 0  # dropped while pending: kept, not counted
        assert [e.attempts for e in await db.entries()] == [0]
        assert await replies.flush() == 0  # timed out: kept, one unanswered attempt
        assert [e.attempts for e in await db.entries()] == [1]
        # Any outbound_result deletes the entry, a failed one too (logged).
        assert await replies.flush() == 0
        assert await db.entries() == []
    assert len(link.requests) == 3
    assert len({r.request_id for r in link.requests}) == 1  # the stored id each time


async def test_drops_never_use_up_an_entrys_attempts(tmp_path: Path) -> None:
    async def dropped(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return SendResult.failure(TRANSPORT_CLOSED, retryable=True, kind=ErrorKind.DROPPED)

    link = FakeLink(state="backoff", responder=dropped)
    async with await StateDB.open(tmp_path, now=0) as db:
        replies = Replies(link, db)
        await replies.send(send("a"), platform_raw="discord")
        link.state = "ready"
        for _ in range(20):
            await replies.flush()
        assert [e.attempts for e in await db.entries()] == [0]
        link.responder = ok
        assert await replies.flush() == 1
        assert await db.entries() == []


async def test_R45_five_unanswered_attempts_drop_the_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def unanswered(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return SendResult.failure(OUTBOUND_TIMED_OUT, ambiguous=True, kind=ErrorKind.TIMED_OUT)

    link = FakeLink(state="backoff", responder=unanswered)
    async with await StateDB.open(tmp_path, now=0) as db:
        replies = Replies(link, db)
        await replies.send(send("a"), platform_raw="discord")
        link.state = "ready"
        with caplog.at_level(logging.ERROR):
            for _ in range(5):
                await replies.flush()
        assert await db.entries() == []
        assert replies.outbox_count == 0
    assert any("after 5 failed attempts" in r.getMessage() for r in caplog.records)


async def test_R46_expired_entries_dropped_with_warning_never_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    link = FakeLink(state="backoff")
    async with await StateDB.open(tmp_path, now=clock.now) as db:
        replies = Replies(link, db, clock=clock)
        await replies.send(send("old send"), platform_raw="discord")
        await replies.send(
            FollowUp(session_key="k", kind="reply", content="old follow"), platform_raw="discord"
        )
        clock.now += 15 * 60 + 1  # past the follow_up TTL, within the send TTL
        link.state = "ready"
        with caplog.at_level(logging.WARNING):
            assert await replies.flush() == 1
        assert sent_texts(link) == ["old send"]
        link.state = "backoff"
        await replies.send(send("stale"), platform_raw="discord")
        clock.now += DAY + 1
        link.state = "ready"
        with caplog.at_level(logging.WARNING):
            assert await replies.flush() == 0
        assert sent_texts(link) == ["old send"]
        assert await db.entries() == []
    expired = [r for r in caplog.records if "expired unsent" in r.getMessage()]
    assert [r.levelno for r in expired] == [logging.WARNING, logging.WARNING]


async def test_R46_sweep_every_ten_minutes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = MemoryState()
    link = FakeLink(state="backoff")
    replies = Replies(link, state, clock=trio.current_time)
    await nursery.start(replies.run_flusher)
    await replies.send(FollowUp(session_key="k", kind="r", content="x"), platform_raw="discord")
    await trio.sleep(SWEEP_INTERVAL_S + 1)  # first sweep at 600 s: still live (TTL 900 s)
    assert len(state.outbox) == 1
    await trio.sleep(SWEEP_INTERVAL_S)  # second sweep at 1200 s: expired
    assert state.outbox == {}
    assert replies.outbox_count == 0
    assert link.requests == []


async def test_R47_full_outbox_rejects_new_requests(tmp_path: Path) -> None:
    link = FakeLink(state="backoff")
    async with await StateDB.open(tmp_path, now=0, outbox_max=2) as db:
        replies = Replies(link, db)
        for text in ("a", "b"):
            assert (await replies.send(send(text), platform_raw="discord")).queued
        full = await replies.send(send("c"), platform_raw="discord")
        assert (full.success, full.error, full.retryable, full.queued) == (
            False,
            OUTBOX_FULL,
            True,
            False,
        )
        assert len(await db.entries()) == 2  # accepted replies are never evicted


async def test_full_outbox_makes_a_waiting_producer_wait_for_room_not_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = FakeLink(state="backoff")
    state = MemoryState(outbox_max=2)
    replies = Replies(link, state)
    for text in ("a", "b"):
        assert (await replies.send(send(text), platform_raw="discord")).queued
    results: list[SendResult] = []

    async def reply_c() -> None:
        results.append(await replies.send_waiting_for_room(send("c"), platform_raw="discord"))

    async with trio.open_nursery() as nursery:
        await nursery.start(replies.run_flusher)
        async with trio.open_nursery() as producers:
            producers.start_soon(reply_c)
            await trio.sleep(20)
            # Still waiting: nothing was dropped, and R47 still holds for a plain send.
            assert results == []
            assert replies.stats()["replies_waited_for_outbox_room"] == 1
            assert (await replies.send(send("d"), platform_raw="discord")).error == OUTBOX_FULL
            link.state = "ready"
            replies.poke()  # what every READY does
        await replies.wait_empty()
        nursery.cancel_scope.cancel()
    # The flush made room; the waiting reply then went out behind the queued ones, in order.
    assert results[0].success or results[0].queued
    assert [r.action.content for r in link.requests] == ["a", "b", "c"]  # type: ignore[union-attr]


async def test_waiting_for_room_is_ended_by_the_callers_scope_not_by_a_bound_of_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A turn's reply is never dropped for lack of room (it used to give up after 30 s while
    # its inbound was acked): only the turn's time limit or shutdown ends the wait, and then
    # nothing was queued and the turn is not recorded as answered.
    state = MemoryState(outbox_max=1)
    replies = Replies(FakeLink(state="backoff"), state)
    assert (await replies.send(send("a"), platform_raw="discord")).queued
    with trio.move_on_after(3600) as waited:
        await replies.send_waiting_for_room(send("b"), platform_raw="discord")
    assert waited.cancelled_caught
    assert len(await state.entries()) == 1  # only "a": "b" was never queued
    assert replies.stats()["replies_waited_for_outbox_room"] == 1


async def test_producers_waiting_for_room_take_it_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = FakeLink(state="backoff")
    state = MemoryState(outbox_max=1)
    replies = Replies(link, state)
    assert (await replies.send(send("a"), platform_raw="discord")).queued
    async with trio.open_nursery() as nursery:
        await nursery.start(replies.run_flusher)
        async with trio.open_nursery() as producers:
            for text in ("b", "c", "d"):
                producers.start_soon(
                    functools.partial(
                        replies.send_waiting_for_room, send(text), platform_raw="discord"
                    )
                )
                await trio.sleep(1)  # arrival order b, c, d
            link.state = "ready"
            replies.poke()
        await replies.wait_empty()
        nursery.cancel_scope.cancel()
    assert [r.action.content for r in link.requests] == ["a", "b", "c", "d"]  # type: ignore[union-attr]


async def test_outbox_max_zero_fails_fast() -> None:
    replies = Replies(FakeLink(state="backoff"), MemoryState(outbox_max=0))
    result = await replies.send(send("a"), platform_raw="discord")
    assert (result.error, result.queued) == (NOT_CONNECTED, False)


async def test_retryable_unambiguous_send_failure_resubmitted_once_via_outbox() -> None:
    async def refuse(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return SendResult.from_wire({"success": False, "error": "rate limited", "retryable": True})

    state = MemoryState()
    link = FakeLink(responder=refuse)
    replies = Replies(link, state)
    result = await replies.send(send("a"), platform_raw="discord")
    assert result.queued
    (entry,) = state.outbox.values()
    assert entry.request_id == link.requests[0].request_id
    # The flush delivers it once more; its result (a failure again) deletes it: no loop.
    await replies.flush()
    assert state.outbox == {}
    assert len(link.requests) == 2


@pytest.mark.parametrize(
    "result",
    [
        SendResult.from_wire({"success": False, "error": "egress declined: no", "retryable": True}),
        SendResult.from_wire({"success": False, "error": "forbidden"}),
    ],
    ids=["egress_declined", "not_retryable"],
)
async def test_final_send_failures_are_not_resubmitted(result: SendResult) -> None:
    async def answer(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return result

    state = MemoryState()
    replies = Replies(FakeLink(responder=answer), state)
    assert await replies.send(send("a"), platform_raw="discord") == result
    assert state.outbox == {}


@pytest.mark.parametrize("retryable", [True, False], ids=["drop", "shutdown"])
async def test_send_and_follow_up_pending_at_close_go_to_the_outbox_under_their_id(
    retryable: bool,
) -> None:
    # RC §6.2 as changed by issue 11: a send or follow_up pending when the socket closed
    # (a drop: retryable; our own shutdown: not) may or may not have been performed, so it
    # is queued under its requestId, and the connector drops the repeat. (Before issue 11
    # a follow_up, and anything failed at shutdown, was returned as a failure and lost.)
    async def close(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return SendResult.failure(
            TRANSPORT_CLOSED,
            retryable=retryable,
            kind=ErrorKind.DROPPED if retryable else ErrorKind.CLOSED,
        )

    state = MemoryState()
    replies = Replies(FakeLink(responder=close), state)
    sent = await replies.send(send("a"), platform_raw="discord", request_id="a" * 32)
    follow = await replies.send(
        FollowUp(session_key="k", kind="r", content="x"), platform_raw=None, request_id="b" * 32
    )
    assert sent.queued and follow.queued
    assert sorted((e.kind, e.request_id) for e in state.outbox.values()) == [
        ("follow_up", "b" * 32),
        ("send", "a" * 32),
    ]


async def test_disabled_halts_the_flush_and_refuses_sends() -> None:
    state = MemoryState()
    link = FakeLink(state="backoff")
    replies = Replies(link, state)
    await replies.send(send("kept"), platform_raw="discord")
    link.state = "disabled"
    assert await replies.flush() == 0
    assert len(state.outbox) == 1
    result = await replies.send(send("new"), platform_raw="discord")
    assert (result.error, result.queued) == (DISABLED, False)
    assert link.requests == []


async def test_unconfigured_identity_entry_dropped_with_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = MemoryState()
    link = FakeLink()
    await state.put("telegram", "", '{"op":"send","chat_id":"c","content":"x"}', "r1", "send", 2e9)
    replies = Replies(link, state, clock=lambda: 2e9)
    with caplog.at_level(logging.WARNING):
        assert await replies.flush() == 0
    assert state.outbox == {}
    assert link.requests == []
    assert any("unconfigured identity" in r.getMessage() for r in caplog.records)


async def test_flusher_delivers_on_poke_and_on_enqueue_while_live(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    state = MemoryState()
    link = FakeLink(state="backoff")
    replies = Replies(link, state, clock=trio.current_time)
    await nursery.start(replies.run_flusher)
    await replies.send(send("queued while down"), platform_raw="discord")
    await trio.sleep(1)
    assert link.requests == []
    link.state = "ready"
    replies.poke()  # what the gateway does on each READY
    await trio.testing.wait_all_tasks_blocked()
    assert sent_texts(link) == ["queued while down"]
    assert replies.outbox_count == 0


async def test_a_flush_stopped_by_an_unanswered_entry_tries_again_while_the_link_is_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A timeout on a live link stopped the flush, and nothing poked the flusher again before
    # the next READY: turns waiting for room in a full outbox then waited out their time
    # limit on a healthy connection. Now the flusher tries again after a pause.
    answers = [SendResult.failure(OUTBOUND_TIMED_OUT, ambiguous=True, kind=ErrorKind.TIMED_OUT)]

    async def answer(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return answers.pop(0) if answers else SendResult.from_wire({"success": True})

    link = FakeLink(state="backoff", responder=answer)
    state = MemoryState(outbox_max=1)
    replies = Replies(link, state)
    assert (await replies.send(send("a"), platform_raw="discord")).queued
    async with trio.open_nursery() as nursery:
        await nursery.start(replies.run_flusher)
        link.state = "ready"
        replies.poke()  # the READY; no other poke follows
        with trio.fail_after(60):
            await replies.wait_empty()
        nursery.cancel_scope.cancel()
    assert link.requests[0].request_id == link.requests[1].request_id  # the same entry again
    assert len(link.requests) == 2


async def test_a_newcomer_does_not_take_the_room_freed_for_a_waiting_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    state = MemoryState(outbox_max=1)
    replies = Replies(FakeLink(state="backoff"), state)
    assert (await replies.send(send("a"), platform_raw="discord")).queued
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(replies.send_waiting_for_room, send("b"), platform_raw="discord")
        )
        await trio.sleep(1)  # "b" waits for room
        state.outbox.clear()  # room in the store that the waiter has not been told of yet
        nursery.start_soon(
            functools.partial(replies.send_waiting_for_room, send("c"), platform_raw="discord")
        )
        await trio.sleep(1)
        # "c" queued behind "b" rather than taking the free entry ahead of it.
        assert state.outbox == {}
        assert replies.stats()["replies_waited_for_outbox_room"] == 2
        nursery.cancel_scope.cancel()


async def test_a_send_nobody_answered_goes_to_the_outbox_under_its_id() -> None:
    # A timeout is ambiguous (it may have gone out); dropping it lost the reply while the
    # turn's inbound was acked. Queued under the same requestId, a repeat is de-duplicated.
    async def answer(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return SendResult.failure(OUTBOUND_TIMED_OUT, ambiguous=True, kind=ErrorKind.TIMED_OUT)

    state = MemoryState()
    link = FakeLink(responder=answer)
    replies = Replies(link, state)
    result = await replies.send(send("a"), platform_raw="discord", request_id="ab" * 16)
    assert result.queued
    (entry,) = state.outbox.values()
    assert entry.request_id == link.requests[0].request_id == "ab" * 16


async def test_a_reply_that_can_never_go_out_is_final_not_queued() -> None:
    # An unencodable, too large or unsupported reply would fail the same way from the
    # outbox: the owner marks it REJECTED, and the reply policy returns it as it is.
    async def rejected(action: Action, platform_raw: str | None, rid: str | None) -> SendResult:
        return SendResult.failure("relay frame too large", kind=ErrorKind.REJECTED)

    state = MemoryState()
    replies = Replies(FakeLink(responder=rejected), state)
    result = await replies.send(send("a"), platform_raw="discord")
    assert (result.error, result.queued) == ("relay frame too large", False)
    assert state.outbox == {}
    assert replies.resubmitted == 0
