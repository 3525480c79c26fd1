"""Issue 11: idempotent reply ids and the durable inbox (live deliveries resumed).

Real SQLite files throughout; a "crash" is the committed state a dead process leaves,
taken with SQLite's online backup while the turn still runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from protocol._auth import RequestIdKey, derive_request_id
from relay_runtime import Turn
from relay_runtime._dispatcher import Dispatcher
from relay_runtime._outbound import RequestIds, reply_ids_for
from relay_runtime._replies import Replies
from relay_runtime._state import DB_FILENAME, RESUME_MAX, StateDB
from tests.runtime import state_steps as steps
from tests.runtime.dispatch_helpers import FakeLink, Verdict, inbound

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_reply_ids_are_hex_unique_per_ordinal_and_derived_from_key_and_delivery() -> None:
    key = b"k" * 32
    first = reply_ids_for(key, ("discord", "c1", "m1"), "buf-1")
    again = reply_ids_for(key, ("discord", "c1", "m1"), "buf-other")  # K_msg wins
    assert first is not None and again is not None
    ids = [first.next() for _ in range(50)]
    assert all(HEX32.fullmatch(i) for i in ids)
    assert len(set(ids)) == 50
    assert [again.next() for _ in range(50)] == ids
    other_key = reply_ids_for(b"x" * 32, ("discord", "c1", "m1"), None)
    other_msg = reply_ids_for(key, ("discord", "c1", "m2"), None)
    assert other_key is not None and other_msg is not None
    assert other_key.next() != ids[0] and other_msg.next() != ids[0]
    by_buf = reply_ids_for(key, None, "buf-1")
    no_message_id = reply_ids_for(key, ("discord", "c1", ""), "buf-1")
    assert by_buf is not None and no_message_id is not None
    assert by_buf.next() == no_message_id.next() != ids[0]
    assert reply_ids_for(key, None, None) is None
    assert reply_ids_for(key, ("discord", "c1", ""), None) is None
    assert RequestIds(key, "d").next() == RequestIds(key, "d").next()


def test_reply_ids_are_the_documented_hmac_whichever_way_the_key_is_given() -> None:
    # Ids must not change across versions: a re-run after an upgrade re-sends under the
    # same ids. HMAC-SHA256(key, delivery || 0x00 || str(n)) cut to 32 hex digits, where
    # delivery is the compact JSON of ["msg", platform, chat, message] (or ["buf", K_buf]).
    key = b"k" * 32
    delivery = json.dumps(["msg", "discord", "c1", "m\u00e9"], separators=(",", ":")).encode()
    expected = [
        hmac.new(key, delivery + b"\x00" + str(n).encode(), hashlib.sha256).hexdigest()[:32]
        for n in range(3)
    ]
    for given in (key, RequestIdKey(key)):
        ids = reply_ids_for(given, ("discord", "c1", "m\u00e9"), "buf-1")
        assert ids is not None
        assert [ids.next() for _ in range(3)] == expected
    assert [RequestIdKey(key).derive(delivery, n) for n in range(3)] == [
        derive_request_id(key, delivery, n) for n in range(3)
    ]
    by_buf = reply_ids_for(RequestIdKey(key), None, "buf-1")
    assert by_buf is not None
    assert by_buf.next() == derive_request_id(key, b'["buf","buf-1"]', 0)


async def test_the_reply_key_is_random_per_state_db_and_kept(tmp_path: Path) -> None:
    async with await StateDB.open(tmp_path / "a", now=1000.0) as db:
        key = db.reply_key
    async with await StateDB.open(tmp_path / "a", now=1000.0) as db:
        assert db.reply_key == key
    async with await StateDB.open(tmp_path / "b", now=1000.0) as db:
        assert db.reply_key != key
    assert len(key) == 32


async def run_dispatcher(
    db: StateDB,
    agent: Callable[[Turn], Awaitable[str | None]],
    body: Callable[[trio.MemorySendChannel[Any], Dispatcher], Awaitable[None]],
    link: FakeLink,
) -> Dispatcher:
    """A dispatcher over ``db`` for the duration of ``body``; then cancelled (shutdown)."""
    dispatcher = Dispatcher(
        agent=agent,
        trust=Verdict(),
        replies=Replies(link, db),
        db=db,
        outbound=link,
        reply_key=db.reply_key,
    )
    send, recv = trio.open_memory_channel[Any](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run, recv, nursery)
        await body(send, dispatcher)
        nursery.cancel_scope.cancel()
    return dispatcher


async def test_a_live_turn_cut_by_shutdown_is_resumed_under_the_same_request_ids(
    tmp_path: Path,
) -> None:
    first_link, second_link = FakeLink(), FakeLink()
    started = trio.Event()

    async def stuck_after_one_reply(turn: Turn) -> str:
        await turn.reply("one")
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def feed_and_cut(send: trio.MemorySendChannel[Any], _: Dispatcher) -> None:
        await send.send(inbound("x", message_id="m1"))  # live: no bufferId
        await started.wait()

    async with await StateDB.open(tmp_path, now=1000.0) as db:
        await run_dispatcher(db, stuck_after_one_reply, feed_and_cut, first_link)
        assert [t.state for t in await db.turns()] == ["running"]  # kept for the next one

    texts: list[str] = []

    async def answers_twice(turn: Turn) -> str:
        texts.append(turn.text)
        await turn.reply("one, written differently")
        return "two"

    async def wait_done(send: trio.MemorySendChannel[Any], dispatcher: Dispatcher) -> None:
        await dispatcher.wait_idle()
        await dispatcher.db.flush()

    async with await StateDB.open(tmp_path, now=1001.0) as db:
        dispatcher = await run_dispatcher(db, answers_twice, wait_done, second_link)
        assert dispatcher.stats.resumed == 1
        assert texts == ["x"]
        [turn] = await db.turns()
        assert (turn.state, turn.k_msg) == ("completed", ("discord", "c1", "m1"))
        with sqlite3.connect(tmp_path / DB_FILENAME) as raw:
            assert raw.execute("SELECT inbound, resumes FROM relay_turns").fetchall() == [(None, 1)]
        raw.close()
    first_ids = [r.request_id for r in first_link.requests]
    second_ids = [r.request_id for r in second_link.requests]
    assert len(first_ids) == 1 and len(second_ids) == 2
    # The re-run's first reply carries the id of the first run's: the connector keeps the
    # first text and drops this one; the second reply is new.
    assert second_ids[0] == first_ids[0]
    assert second_ids[1] != first_ids[0]
    assert all(i is not None and HEX32.fullmatch(i) for i in second_ids)
    # Nothing is resumed twice.
    async with await StateDB.open(tmp_path, now=1002.0) as db:
        assert db.take_resumable() == []


async def test_a_crash_leaves_a_committed_live_delivery_that_the_next_process_runs(
    tmp_path: Path,
) -> None:
    """What a kill -9 leaves: the committed file while the turn runs (SQLite's backup)."""
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    started = trio.Event()

    async def stuck(turn: Turn) -> str:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def feed_and_snapshot(send: trio.MemorySendChannel[Any], d: Dispatcher) -> None:
        await send.send(inbound("x", message_id="m1"))
        await send.send(inbound("y", message_id="m2"))  # same session: queued behind x
        await started.wait()
        await d.db.flush()  # the dispatcher commits within 50 ms; here at once
        with (
            sqlite3.connect(tmp_path / "live" / DB_FILENAME) as source,
            sqlite3.connect(crashed / DB_FILENAME) as target,
        ):
            source.backup(target)
        source.close()
        target.close()

    async with await StateDB.open(tmp_path / "live", now=1000.0) as db:
        await run_dispatcher(db, stuck, feed_and_snapshot, FakeLink())

    texts: list[str] = []

    async def quick(turn: Turn) -> str:
        texts.append(turn.text)
        return "ok"

    async def wait_two(send: trio.MemorySendChannel[Any], dispatcher: Dispatcher) -> None:
        assert dispatcher.pending == 2
        await dispatcher.wait_idle()

    async with await StateDB.open(crashed, now=1001.0) as db:
        await run_dispatcher(db, quick, wait_two, FakeLink())
        assert [t.state for t in await db.turns()] == ["completed", "completed"]
    assert texts == ["x", "y"]  # in arrival order


async def test_buffered_deliveries_are_not_kept_in_the_inbox(tmp_path: Path) -> None:
    """The connector replays a buffered delivery: nothing to resume, its claim released."""
    started = trio.Event()

    async def stuck(turn: Turn) -> str:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def feed(send: trio.MemorySendChannel[Any], _: Dispatcher) -> None:
        await send.send(inbound("x", message_id="m1", buffer_id="b1"))
        await started.wait()

    async with await StateDB.open(tmp_path, now=1000.0) as db:
        await run_dispatcher(db, stuck, feed, FakeLink())
    async with await StateDB.open(tmp_path, now=1001.0) as db:
        assert db.take_resumable() == []


async def test_a_live_message_that_keeps_being_cut_is_given_up_after_resume_max(
    tmp_path: Path,
) -> None:
    runs = 0
    started = trio.Event()

    async def stuck(turn: Turn) -> str:
        nonlocal runs
        runs += 1
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def feed(send: trio.MemorySendChannel[Any], d: Dispatcher) -> None:
        nonlocal started
        if runs == 0:
            await send.send(inbound("x", message_id="m1"))
        await started.wait()
        started = trio.Event()
        await d.db.flush()

    for i in range(RESUME_MAX + 1):
        async with await StateDB.open(tmp_path, now=1000.0 + i) as db:
            await run_dispatcher(db, stuck, feed, FakeLink())
    assert runs == RESUME_MAX + 1
    async with await StateDB.open(tmp_path, now=2000.0) as db:
        assert db.take_resumable() == []
        assert [t.state for t in await db.turns()] == ["crashed"]


async def test_turn_records_are_bounded_by_count_as_well_as_age(tmp_path: Path) -> None:
    async with await StateDB.open(tmp_path, now=1000.0, turns_max=5) as db:
        await steps.claim_turn(db, "s", ("discord", "c", "first"), None, 1000.0)
        for i in range(12):
            claim, turn_id = await steps.claim_turn(
                db, "s", ("discord", "c", f"m{i}"), None, 1000.0
            )
            await db.complete_turn(claim.handle, turn_id, "completed", 1001.0)
        kept = await db.turns()
    # The newest five ended ones, and the one still running (never dropped).
    assert [t.k_msg[2] for t in kept if t.k_msg] == ["first", "m7", "m8", "m9", "m10", "m11"]
    assert [t.state for t in kept] == ["running"] + ["completed"] * 5
