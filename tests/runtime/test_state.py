"""The durable state database (RC §6.2 outbox, §7.3 dedupe, turn results).

Real SQLite files under tmp_path; a restart is close + reopen of the same file.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import stat
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from relay_runtime._state import (
    DB_FILENAME,
    FOLLOW_UP_TTL_S,
    OUTBOX_MAX_ATTEMPTS,
    SCHEMA_VERSION,
    ClaimRequest,
    ClaimStatus,
    OutboxFull,
    StateDB,
    StateError,
)
from relay_runtime._state._schema import _MIGRATIONS, _statements
from relay_runtime._state._turns import TURN_SWEEP_S
from relay_runtime.testing import (
    count_completion_bulks,
    probe_connection,
    run_operation,
    trace_commits,
    write_behind,
)
from tests.runtime import state_steps as steps

if TYPE_CHECKING:
    from pathlib import Path

T0 = 1_700_000_000.0
DAY = 86400.0


async def open_db(path: Path, now: float = T0, **kw: int | float) -> StateDB:
    return await StateDB.open(path, now=now, **kw)  # type: ignore[arg-type]


async def put_send(db: StateDB, text: str, now: float = T0, kind: str = "send") -> int:
    return await db.put("relay", "bot1", f'{{"op":"{kind}","content":"{text}"}}', text, kind, now)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- outbox


async def test_R45_outbox_entries_survive_restart_in_fifo_order(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    ids = [await put_send(db, f"m{i}", T0 + i) for i in range(3)]
    follow = await db.put("discord", "b2", '{"op":"follow_up"}', "rf", "follow_up", T0 + 3)
    await db.aclose()

    db = await open_db(tmp_path, now=T0 + 10)
    async with db:
        assert await db.count() == 4
        entries = await db.entries()
        assert [e.id for e in entries] == [*ids, follow]
        assert entries[3].platform == "discord"
        assert entries[3].bot_id == "b2"
        assert entries[3].kind == "follow_up"
        assert entries[0].action_json == '{"op":"send","content":"m0"}'
        assert entries[0].expires_at == T0 + DAY
        assert entries[3].expires_at == T0 + 3 + FOLLOW_UP_TTL_S

        # FIFO: the flusher peeks, delivers, deletes; new sends queue behind.
        newer = await put_send(db, "late", T0 + 11)
        seen = []
        while (entry := await steps.peek_next(db, T0 + 12)) is not None:
            seen.append(entry.request_id)
            assert await db.delete(entry.id)
        assert seen == ["m0", "m1", "m2", "rf", "late"]
        assert newer > follow
        assert await db.count() == 0
        assert not await db.delete(newer)


async def test_R46_expired_entries_are_dropped_with_warning_never_peeked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with await open_db(tmp_path) as db:
        send_id = await put_send(db, "s", T0)
        follow_id = await put_send(db, "f", T0, kind="follow_up")

        # At 15 min the follow_up has expired: peek skips it and expire removes it.
        at = T0 + FOLLOW_UP_TTL_S
        first = await steps.peek_next(db, at)
        assert first is not None
        assert first.id == send_id
        await db.delete(send_id)
        assert await steps.peek_next(db, at) is None
        caplog.set_level(logging.WARNING, logger="relay_runtime.state")
        expired = await db.expire(at)
        assert [e.id for e in expired] == [follow_id]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "expired" in warnings[0].getMessage()
        assert f"outbox_id={follow_id}" in warnings[0].getMessage()
        assert await db.count() == 0

        # A send lives 24 h: still there a second before, gone at the mark.
        send2 = await put_send(db, "s2", T0)
        assert await db.expire(T0 + DAY - 1) == []
        peeked = await steps.peek_next(db, T0 + DAY - 1)
        assert peeked is not None
        assert peeked.id == send2
        assert [e.id for e in await db.expire(T0 + DAY)] == [send2]
        assert await db.count() == 0


async def test_R46_outbox_ttl_follows_config(tmp_path: Path) -> None:
    async with await open_db(tmp_path, outbox_ttl_s=60) as db:
        await put_send(db, "s", T0)
        assert await steps.peek_next(db, T0 + 59) is not None
        assert await steps.peek_next(db, T0 + 60) is None


async def test_R47_full_outbox_rejects_and_never_evicts(tmp_path: Path) -> None:
    async with await open_db(tmp_path, outbox_max=3) as db:
        ids = [await put_send(db, f"m{i}") for i in range(3)]
        with pytest.raises(OutboxFull, match="relay outbox full"):
            await put_send(db, "overflow")
        assert [e.id for e in await db.entries()] == ids
        # Room made by a delivery is usable again.
        await db.delete(ids[0])
        await put_send(db, "again")
        assert await db.count() == 3


async def test_R47_expired_entries_do_not_hold_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relay_runtime.state")
    async with await open_db(tmp_path, outbox_max=1) as db:
        await put_send(db, "old", T0, kind="follow_up")
        with pytest.raises(OutboxFull):
            await put_send(db, "new", T0 + 1)
        new_id = await put_send(db, "new", T0 + FOLLOW_UP_TTL_S)
        assert [e.id for e in await db.entries()] == [new_id]
        assert any("expired" in r.getMessage() for r in caplog.records)


async def test_R47_outbox_max_zero_fails_fast(tmp_path: Path) -> None:
    async with await open_db(tmp_path, outbox_max=0) as db:
        with pytest.raises(OutboxFull, match=r"outbox_max=0"):
            await put_send(db, "x")
        assert await db.count() == 0


async def test_outbox_five_failed_attempts_delete_with_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="relay_runtime.state")
    async with await open_db(tmp_path) as db:
        entry_id = await put_send(db, "m")
        for n in range(1, OUTBOX_MAX_ATTEMPTS):
            attempt = await db.bump_attempts(entry_id)
            assert (attempt.attempts, attempt.dropped) == (n, False)
        assert not caplog.records
        last = await db.bump_attempts(entry_id)
        assert (last.attempts, last.dropped) == (OUTBOX_MAX_ATTEMPTS, True)
        assert await db.count() == 0
        [record] = caplog.records
        assert record.levelno == logging.ERROR
        assert f"outbox_id={entry_id}" in record.getMessage()
        # Unknown id: nothing happens.
        gone = await db.bump_attempts(entry_id)
        assert (gone.attempts, gone.dropped) == (0, False)


async def test_outbox_attempts_survive_restart(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        entry_id = await put_send(db, "m")
        await db.bump_attempts(entry_id)
        await db.bump_attempts(entry_id)
    async with await open_db(tmp_path) as db:
        entry = await steps.peek_next(db, T0)
        assert entry is not None
        assert entry.attempts == 2


async def test_outbox_rejects_unknown_kind(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        with pytest.raises(
            StateError, match="outbox kind must be 'send' or 'follow_up', got 'edit'"
        ):
            await put_send(db, "x", kind="edit")
        assert await db.count() == 0


async def test_outbox_concurrent_puts_all_commit_with_distinct_ids(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        ids: list[int] = []

        async def one(i: int) -> None:
            ids.append(await put_send(db, f"m{i}", T0 + i))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert len(set(ids)) == 20
        assert await db.count() == 20


# ---------------------------------------------------------------------- dedupe window

K1 = ("telegram", "chat1", "m1")
K2 = ("telegram", "chat1", "m2")


async def test_R61_completed_key_replay_is_completed_by_either_key(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        first = await steps.claim(db, K1, "buf-1", T0)
        assert first.status is ClaimStatus.NEW
        assert first.handle is not None
        await steps.complete(db, first.handle, T0 + 1)
        # Replay by the same bufferId, by the same message under a new bufferId, and by both.
        for k_msg, k_buf in ((None, "buf-1"), (K1, "buf-9"), (K1, "buf-1"), (K1, None)):
            again = await steps.claim(db, k_msg, k_buf, T0 + 2)
            assert again.status is ClaimStatus.COMPLETED
            assert again.handle == first.handle
        # A different message is new.
        assert (await steps.claim(db, K2, "buf-2", T0 + 3)).status is ClaimStatus.NEW


async def test_R62_duplicate_mid_turn_is_in_flight(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        first = await steps.claim(db, K1, None, T0)
        dup = await steps.claim(db, K1, "buf-7", T0 + 1)
        assert dup.status is ClaimStatus.IN_FLIGHT
        assert dup.handle == first.handle
        # The duplicate did not take over the claim: completing the original completes it.
        await steps.complete(db, first.handle, T0 + 2)
        assert (await steps.claim(db, K1, "buf-7", T0 + 3)).status is ClaimStatus.COMPLETED
        # Its bufferId was not registered by the refused claim.
        assert (await steps.claim(db, None, "buf-7", T0 + 3)).status is ClaimStatus.NEW


async def test_completed_wins_over_in_flight_when_keys_disagree(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        done = await steps.claim(db, K1, None, T0)
        await steps.complete(db, done.handle, T0)
        running = await steps.claim(db, None, "buf-x", T0)
        assert running.status is ClaimStatus.NEW
        both = await steps.claim(db, K1, "buf-x", T0 + 1)
        assert both.status is ClaimStatus.COMPLETED
        assert both.handle == done.handle


async def test_R63_completed_keys_survive_restart(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        claim = await steps.claim(db, K1, "buf-1", T0)
        await steps.complete(db, claim.handle, T0 + 1)
    async with await open_db(tmp_path, now=T0 + 100) as db:
        assert (await steps.claim(db, None, "buf-1", T0 + 100)).status is ClaimStatus.COMPLETED
        assert (await steps.claim(db, K1, None, T0 + 100)).status is ClaimStatus.COMPLETED
        assert await steps.claim_status(db, K1, None) is ClaimStatus.COMPLETED


async def test_R64_released_claim_runs_again_on_replay(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        claim = await steps.claim(db, K1, "buf-1", T0)
        await steps.release(db, claim.handle)
        replay = await steps.claim(db, K1, "buf-1", T0 + 1)
        assert replay.status is ClaimStatus.NEW
        assert replay.handle != claim.handle
        # A completed claim cannot be released.
        await steps.complete(db, replay.handle, T0 + 2)
        await steps.release(db, replay.handle)
        assert (await steps.claim(db, K1, None, T0 + 3)).status is ClaimStatus.COMPLETED


async def test_dedupe_window_expires_completed_keys(tmp_path: Path) -> None:
    async with await open_db(tmp_path, dedupe_window_s=DAY) as db:
        claim = await steps.claim(db, K1, "buf-1", T0)
        await steps.complete(db, claim.handle, T0)
        assert (await steps.claim(db, K1, None, T0 + DAY - 1)).status is ClaimStatus.COMPLETED
        assert (await steps.claim(db, K1, None, T0 + DAY)).status is ClaimStatus.NEW


async def test_dedupe_max_evicts_oldest_completed(tmp_path: Path) -> None:
    async with await open_db(tmp_path, dedupe_max=3) as db:
        for i in range(4):
            claim = await steps.claim(db, ("relay", "c", f"m{i}"), f"b{i}", T0 + i)
            await steps.complete(db, claim.handle, T0 + i)
        # m0 (oldest) was evicted under both of its keys; m1..m3 are remembered.
        assert await steps.claim_status(db, ("relay", "c", "m0"), None) is ClaimStatus.NEW
        assert await steps.claim_status(db, None, "b0") is ClaimStatus.NEW
        for i in (1, 2, 3):
            assert await steps.claim_status(db, None, f"b{i}") is ClaimStatus.COMPLETED
        # In-flight claims do not count and are never evicted.
        running = await steps.claim(db, ("relay", "c", "run"), None, T0 + 10)
        claim = await steps.claim(db, ("relay", "c", "m4"), None, T0 + 11)
        await steps.complete(db, claim.handle, T0 + 11)
        assert await steps.claim_status(db, ("relay", "c", "run"), None) is ClaimStatus.IN_FLIGHT
        assert await steps.claim_status(db, None, "b1") is ClaimStatus.NEW
        assert running.status is ClaimStatus.NEW


def completed_rows(path: Path) -> list[tuple[int, str]]:
    """(claim_id, key) of every completed claim in the file at ``path``."""
    with sqlite3.connect(path / DB_FILENAME) as raw:
        rows = raw.execute(
            "SELECT claim_id, key1 FROM relay_dedupe WHERE key1 IS NOT NULL"
            " UNION ALL SELECT claim_id, key2 FROM relay_dedupe WHERE key2 IS NOT NULL"
            " ORDER BY 1, 2"
        ).fetchall()
    raw.close()
    return rows


async def test_file_follows_the_window_through_trim_expiry_and_release(tmp_path: Path) -> None:
    async with await open_db(tmp_path, dedupe_max=3) as db:
        for i in range(5):
            claim = await steps.claim(db, ("relay", "c", f"m{i}"), None, T0 + i)
            assert claim.handle is not None
            await steps.complete(db, claim.handle, T0 + i)
            await steps.complete(db, claim.handle, T0 + i + 0.5)  # twice: no effect
        running = await steps.claim(db, ("relay", "c", "run"), None, T0 + 6)
        await steps.release(db, running.handle)
        await steps.release(db, running.handle)
        assert await steps.claim_status(db, ("relay", "c", "run"), None) is ClaimStatus.NEW
        assert [k for _, k in completed_rows(tmp_path)] == [
            '["msg","relay","c","m2"]',
            '["msg","relay","c","m3"]',
            '["msg","relay","c","m4"]',
        ]
        await db.prune(T0 + DAY + 3.5)  # m2 and m3 leave the window
        assert [k for _, k in completed_rows(tmp_path)] == ['["msg","relay","c","m4"]']
        assert await steps.claim_status(db, ("relay", "c", "m3"), None) is ClaimStatus.NEW
        assert await steps.claim_status(db, ("relay", "c", "m4"), None) is ClaimStatus.COMPLETED


async def test_restart_reads_the_window_back_and_trims_it_to_a_lower_bound(
    tmp_path: Path,
) -> None:
    async with await open_db(tmp_path) as db:
        handles = []
        for i in range(4):
            claim = await steps.claim(db, ("relay", "c", f"m{i}"), f"b{i}", T0 + i)
            handles.append(claim.handle)
            await steps.complete(db, claim.handle, T0 + i)
        released = await steps.claim(db, ("relay", "c", "gone"), None, T0 + 5)
        await steps.release(db, released.handle)
    async with await open_db(tmp_path, now=T0 + 10, dedupe_max=2) as db:
        for i, expected in enumerate(["new", "new", "completed", "completed"]):
            assert (await steps.claim_status(db, None, f"b{i}")).value == expected
            assert (await steps.claim_status(db, ("relay", "c", f"m{i}"), None)).value == expected
        assert {c for c, _ in completed_rows(tmp_path)} == {h.claim_id for h in handles[2:]}
        # Ids are never reused, not even a released claim's.
        fresh = await steps.claim(db, ("relay", "c", "fresh"), None, T0 + 11)
        assert fresh.handle is not None and released.handle is not None
        assert fresh.handle.claim_id > released.handle.claim_id


async def test_claim_turns_decides_at_once_and_records_behind(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        commits = trace_commits(db)
        requests = [ClaimRequest("s", ("relay", "c", f"m{i}"), None) for i in range(3)]
        results = await db.claim_turns(requests, T0)
        assert commits == []  # decided without a commit
        assert [r.status for r, _ in results] == [ClaimStatus.NEW] * 3
        again = await db.claim_turns(requests[:1], T0)
        assert again[0][0].status is ClaimStatus.IN_FLIGHT
        # The next operation commits what was written behind first.
        records = await db.turns()
        assert [t.turn_id for t in records] == [t for _, t in results]
        assert len(commits) == 1
        handle = results[0][0].handle
        await db.complete_turn(handle, results[0][1], "completed", T0 + 1)
        assert (await db.claim_turns(requests[:1], T0 + 2))[0][0].status is ClaimStatus.COMPLETED


async def test_written_behind_records_are_flushed_and_committed_on_close(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        waiter_saw: list[str] = []

        async def flusher() -> None:
            await db.wait_queued()
            waiter_saw.append("queued")
            await db.flush()
            waiter_saw.append("flushed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher)
            await trio.testing.wait_all_tasks_blocked()
            assert waiter_saw == []
            await db.claim_turns([ClaimRequest("s", ("relay", "c", "m1"), None)], T0)
        assert waiter_saw == ["queued", "flushed"]
        assert [t.session_key for t in await db.turns()] == ["s"]
        await db.claim_turns([ClaimRequest("t", ("relay", "c", "m2"), None)], T0)
    # Closed with a record still written behind: closing committed it.
    async with await open_db(tmp_path, now=T0 + 1) as db:
        assert [(t.session_key, t.state) for t in await db.turns()] == [
            ("s", "crashed"),
            ("t", "crashed"),
        ]


async def test_a_completion_written_behind_is_decided_at_once_and_committed_later(
    tmp_path: Path,
) -> None:
    async with await open_db(tmp_path) as db:
        claim, turn_id = await steps.claim_turn(db, "s", K1, None, T0)
        commits = trace_commits(db)
        await db.complete_turn(claim.handle, turn_id, "completed", T0 + 1, write_behind=True)
        assert commits == []
        assert await steps.claim_status(db, K1, None) is ClaimStatus.COMPLETED
        assert (await steps.claim(db, K1, None, T0 + 2)).status is ClaimStatus.COMPLETED
        assert len(commits) == 1  # the claim above went to the file behind it
        assert completed_rows(tmp_path) != []
        other, other_turn = await steps.claim_turn(db, "s", ("telegram", "chat1", "m2"), None, T0)
        await db.complete_turn(other.handle, other_turn, "failed", T0 + 3, "E", write_behind=True)
    # Closing committed it.
    async with await open_db(tmp_path, now=T0 + 4) as db:
        assert (
            await steps.claim_status(db, ("telegram", "chat1", "m2"), None) is ClaimStatus.COMPLETED
        )
        record = await db.turn(other_turn)  # type: ignore[arg-type]
        assert record is not None and (record.state, record.error) == ("failed", "E")


async def test_a_failed_record_written_behind_is_kept_in_order_and_flush_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with await open_db(tmp_path) as db:
        ran: list[str] = []

        def flaky(conn: sqlite3.Connection) -> None:
            ran.append("flaky")
            if ran.count("flaky") == 1:
                raise sqlite3.OperationalError("disk I/O error")

        def after(conn: sqlite3.Connection) -> None:
            ran.append("after")

        write_behind(db, flaky)
        write_behind(db, after)
        caplog.set_level(logging.ERROR, logger="relay_runtime.state")
        with pytest.raises(StateError, match="disk I/O error"):
            await db.flush()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        # One ERROR opens the storage-failure episode, naming its cause (issue 11).
        assert len(errors) == 1 and "2 record(s) kept" in errors[0].message
        assert "OperationalError: disk I/O error" in errors[0].message
        assert ran == ["flaky"]  # the batch stopped there: nothing after it was committed
        await db.flush()  # retried whole, in order; then nothing is left behind
        assert ran == ["flaky", "flaky", "after"]
        await db.flush()
        assert ran == ["flaky", "flaky", "after"]


async def test_a_cancelled_completion_is_still_recorded(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        claim, turn_id = await steps.claim_turn(db, "s", K1, None, T0)
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.prune, T0)  # leads a batch that waits for the lock
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await db.complete_turn(claim.handle, turn_id, "completed", T0 + 1)
            assert scope.cancelled_caught
            blocker.execute("COMMIT")
        blocker.close()
        assert await steps.claim_status(db, K1, None) is ClaimStatus.COMPLETED
        await db.flush()
        assert claim.handle is not None
        key = '["msg","telegram","chat1","m1"]'
        assert completed_rows(tmp_path) == [(claim.handle.claim_id, key)]
        record = await db.turn(turn_id)  # type: ignore[arg-type]
        assert record is not None and record.state == "completed"


async def test_delivery_without_keys_is_not_deduplicated(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        for k_msg in (None, ("relay", "", "m1"), ("relay", "c", "")):
            result = await steps.claim(db, k_msg, None, T0)
            assert result.status is ClaimStatus.NEW
            assert result.handle is None
            result = await steps.claim(db, k_msg, "", T0)
            assert result.status is ClaimStatus.NEW
        await steps.complete(db, None, T0)
        await steps.release(db, None)


async def test_msg_key_parts_cannot_collide(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        claim = await steps.claim(db, ("a:b", "c", "d"), None, T0)
        await steps.complete(db, claim.handle, T0)
        assert (await steps.claim(db, ("a", "b:c", "d"), None, T0)).status is ClaimStatus.NEW
        # A bufferId equal to a message id is a different key.
        assert (await steps.claim(db, None, "d", T0)).status is ClaimStatus.NEW


async def test_R29_numeric_and_string_ids_are_one_key(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        claim = await steps.claim(db, ("telegram", 42, 12345), None, T0)  # type: ignore[arg-type]
        await steps.complete(db, claim.handle, T0)
        assert (
            await steps.claim_status(db, ("telegram", "42", "12345"), None) is ClaimStatus.COMPLETED
        )


# ------------------------------------------------------------------------ turn results


async def test_complete_turn_records_result_and_completes_claim_together(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        claim, turn_id = await steps.claim_turn(db, "agent:main:telegram:dm:chat1", K1, "buf-1", T0)
        assert turn_id is not None
        running = await db.turn(turn_id)
        assert running is not None
        assert running.state == "running"
        assert running.ended_at is None
        await db.complete_turn(claim.handle, turn_id, "failed", T0 + 5, error="ValueError: x")
        rec = await db.turn(turn_id)
        assert rec is not None
        assert (rec.state, rec.started_at, rec.ended_at, rec.error) == (
            "failed",
            T0,
            T0 + 5,
            "ValueError: x",
        )
        assert rec.k_msg == K1
        assert rec.k_buf == "buf-1"
        assert rec.session_key == "agent:main:telegram:dm:chat1"
        # R66: a raising handler counts as completed.
        assert await steps.claim_status(db, None, "buf-1") is ClaimStatus.COMPLETED


async def test_release_turn_records_cancelled_and_frees_claim(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        claim, turn_id = await steps.claim_turn(db, "s", K1, "buf-1", T0)
        assert turn_id is not None
        await db.release_turn(claim.handle, turn_id, T0 + 1)
        rec = await db.turn(turn_id)
        assert rec is not None
        assert rec.state == "cancelled"
        assert (await steps.claim(db, K1, "buf-1", T0 + 2)).status is ClaimStatus.NEW


@pytest.mark.parametrize("state", ["completed", "failed", "interrupted", "denied", "cancelled"])
async def test_turn_end_states(tmp_path: Path, state: str) -> None:
    async with await open_db(tmp_path) as db:
        turn_id = await steps.turn_started(db, "s", T0)
        await steps.turn_finished(db, turn_id, state, T0 + 1)  # type: ignore[arg-type]
        # An ended turn is not ended twice.
        await steps.turn_finished(db, turn_id, "completed", T0 + 2)
        rec = await db.turn(turn_id)
        assert rec is not None
        assert (rec.state, rec.ended_at) == (state, T0 + 1)


async def test_turn_end_state_is_validated(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        turn_id = await steps.turn_started(db, "s", T0)
        with pytest.raises(StateError, match=r"turn end state must be one of .* got 'running'"):
            await steps.turn_finished(db, turn_id, "running", T0)  # type: ignore[arg-type]


async def test_turn_results_kept_24h(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        old = await steps.turn_started(db, "s", T0)
        await steps.turn_finished(db, old, "completed", T0)
        live = await steps.turn_started(db, "s", T0 + 10)
        assert await db.prune(T0 + DAY - 1) == 0
        assert await db.turn(old) is not None
        assert await db.prune(T0 + DAY) == 1
        assert await db.turn(old) is None
        # A running turn is never pruned, however old.
        assert await db.prune(T0 + 10 * DAY) == 0
        assert [t.turn_id for t in await db.turns("running")] == [live]


async def test_crash_recovery_marks_running_turns_crashed_and_releases_claims(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = await open_db(tmp_path)
    in_flight, running = await steps.claim_turn(db, "s", K1, "buf-1", T0)
    done, finished = await steps.claim_turn(db, "s", K2, "buf-2", T0)
    assert running is not None and finished is not None
    await db.complete_turn(done.handle, finished, "completed", T0 + 1)
    await db.aclose()  # no clean end for `running`: as after a crash

    caplog.set_level(logging.WARNING, logger="relay_runtime.state")
    async with await open_db(tmp_path, now=T0 + 50) as db:
        rec = await db.turn(running)
        assert rec is not None
        assert (rec.state, rec.ended_at) == ("crashed", T0 + 50)
        fin = await db.turn(finished)
        assert fin is not None
        assert fin.state == "completed"
        assert await db.turns("running") == []
        assert any("crash" in r.getMessage() for r in caplog.records)
        # The in-flight delivery runs again on replay; the completed one does not.
        replay = await steps.claim(db, K1, "buf-1", T0 + 51)
        assert replay.status is ClaimStatus.NEW
        assert replay.handle != in_flight.handle
        assert (await steps.claim(db, K2, None, T0 + 51)).status is ClaimStatus.COMPLETED


# --------------------------------------------------------------------- file and schema


async def test_database_file_is_wal_and_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "new" / "state"
    async with await open_db(state_dir) as db:
        await put_send(db, "m")
        path = state_dir / DB_FILENAME
        assert db.path == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for suffix in ("-wal", "-shm"):
            side = state_dir / (DB_FILENAME + suffix)
            assert side.exists()
            assert stat.S_IMODE(side.stat().st_mode) & 0o077 == 0
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {
                r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        raw.close()
        ours = {t for t in tables if not t.startswith("sqlite_")}
        assert ours
        assert all(t.startswith("relay_") for t in ours)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700


async def test_existing_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    path.touch(mode=0o644)
    path.chmod(0o644)
    async with await open_db(tmp_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def plant_symlink(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A state dir whose ``name`` is a symlink to an outside file (mode 0644, empty)."""
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    target.chmod(0o644)
    (state / name).symlink_to(target)
    return state, target


@pytest.mark.parametrize("name", [DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-journal"])
async def test_a_planted_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path, name: str
) -> None:
    state, target = plant_symlink(tmp_path, name)
    with pytest.raises(StateError, match="symbolic link"):
        await open_db(state)
    assert target.read_bytes() == b""
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


async def test_a_second_gateway_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    async with await open_db(tmp_path):
        with pytest.raises(StateError, match="in use by another gateway"):
            await open_db(tmp_path)
    async with await open_db(tmp_path):  # released on close
        pass


async def test_synchronous_full_on_the_connection(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        level = await run_operation(
            db, lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]
        )
        assert level == 2  # FULL


async def test_schema_version_recorded_and_newer_schema_refused(tmp_path: Path) -> None:
    async with await open_db(tmp_path):
        pass
    path = tmp_path / DB_FILENAME
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM relay_schema").fetchall() == [(SCHEMA_VERSION,)]
        raw.execute("UPDATE relay_schema SET version = ?", (SCHEMA_VERSION + 1,))
    raw.close()
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await open_db(tmp_path)


async def test_trust_tables_in_the_same_file_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE trust_clients (id TEXT PRIMARY KEY)")
        raw.execute("INSERT INTO trust_clients VALUES ('u1')")
    raw.close()
    async with await open_db(tmp_path) as db:
        await put_send(db, "m")
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT id FROM trust_clients").fetchall() == [("u1",)]
    raw.close()


async def test_lock_held_too_long_is_a_state_error(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        await run_operation(db, lambda conn: conn.execute("PRAGMA busy_timeout = 0"))
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StateError, match="database is locked"):
                await put_send(db, "m")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await db.count() == 0


async def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="is unusable"):
        await open_db(tmp_path)


async def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="outbox_max must be >= 0, got -1"):
        await open_db(tmp_path, outbox_max=-1)
    with pytest.raises(StateError, match="dedupe_max must be > 0, got 0"):
        await open_db(tmp_path, dedupe_max=0)


async def test_closed_database_refuses_calls(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    await db.aclose()
    await db.aclose()
    with pytest.raises(StateError, match="closed"):
        await db.count()


async def test_aclose_in_a_cancelled_scope_still_closes_the_connection(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    with trio.CancelScope() as scope:
        scope.cancel()
        await db.aclose()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        probe_connection(db)


async def test_aclose_waits_for_a_running_call_then_closes(tmp_path: Path) -> None:
    db = await open_db(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(put_send, db, "m")
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await db.aclose()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        probe_connection(db)
    async with await open_db(tmp_path) as again:
        assert await again.count() == 1


# ------------------------------------------------------------------------ event loop


async def test_database_calls_do_not_block_the_trio_loop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A put stuck behind another writer's lock leaves the loop free to run other tasks.

    Another connection holds the write lock; the put waits for it in its worker thread. A
    ticker task keeps running meanwhile and only it releases the lock, so the put can only
    finish if the loop kept running while the put was waiting.
    """
    async with await open_db(tmp_path) as db:
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        events: list[str] = []

        async def writer() -> None:
            await put_send(db, "m")
            events.append("put done")

        async def ticker() -> None:
            for _ in range(10):
                await trio.sleep(1)
                events.append("tick")
            events.append("release")
            blocker.execute("COMMIT")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            nursery.start_soon(ticker)
        blocker.close()
        assert events == ["tick"] * 10 + ["release", "put done"]
        assert await db.count() == 1


# ---------------------------------------------------------------------- group commit


async def test_calls_queued_during_a_batch_commit_together_in_one_transaction(
    tmp_path: Path,
) -> None:
    """While the first put waits for the write lock, nine more queue; they commit as one."""
    async with await open_db(tmp_path) as db:
        commits = trace_commits(db)
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        ids: dict[str, int] = {}

        async def put(text: str) -> None:
            ids[text] = await put_send(db, text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, "first")
            await trio.testing.wait_all_tasks_blocked()
            for i in range(9):
                nursery.start_soon(put, f"m{i}")
            await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
        blocker.close()
        assert len(commits) == 2
        assert len(set(ids.values())) == 10
        assert (await db.entries())[0].request_id == "first"
        assert {e.request_id: e.id for e in await db.entries()} == ids


async def test_a_failing_operation_rolls_back_alone_and_raises_to_its_caller(
    tmp_path: Path,
) -> None:
    async with await open_db(tmp_path, outbox_max=2) as db:
        commits = trace_commits(db)
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        outcomes: dict[str, object] = {}

        def insert_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO relay_turns (session_key, state, started_at) VALUES ('x', 'running', 0)"
            )
            raise ValueError("operation failed after writing")

        async def call(name: str, fn: object) -> None:
            try:
                outcomes[name] = await fn()  # type: ignore[operator]
            except Exception as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "lead", lambda: steps.turn_started(db, "s", T0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "put1", lambda: put_send(db, "a"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "bad", lambda: run_operation(db, insert_then_fail))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "put2", lambda: put_send(db, "b"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "full", lambda: put_send(db, "c"))
            await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
        blocker.close()
        assert len(commits) == 2
        assert isinstance(outcomes["bad"], ValueError)
        assert isinstance(outcomes["full"], OutboxFull)
        assert [e.request_id for e in await db.entries()] == ["a", "b"]
        assert [t.session_key for t in await db.turns()] == ["s"]


async def test_a_call_cancelled_while_queued_does_not_run(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(put_send, db, "leader")
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as queued:
                queued.cancel()
                await put_send(db, "never")
            assert queued.cancelled_caught
            blocker.execute("COMMIT")
        blocker.close()
        assert [e.request_id for e in await db.entries()] == ["leader"]


async def test_a_call_cancelled_inside_its_running_batch_still_waits_for_the_commit(
    tmp_path: Path,
) -> None:
    async with await open_db(tmp_path) as db:
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        returned: list[int] = []

        async def put_then_checkpoint(scope: trio.CancelScope) -> None:
            with scope:
                returned.append(await put_send(db, "taken"))
                await trio.lowlevel.checkpoint()

        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(put_then_checkpoint, scope)
            await trio.testing.wait_all_tasks_blocked()  # its batch waits for the lock
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert returned == []  # not abandoned: still waiting for its commit
            blocker.execute("COMMIT")
        blocker.close()
        assert scope.cancelled_caught
        assert len(returned) == 1
        assert [e.id for e in await db.entries()] == returned


class _TaskSteps(trio.abc.Instrument):
    """Counts the steps each task takes."""

    def __init__(self) -> None:
        self.steps: collections.Counter[trio.lowlevel.Task] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] += 1


async def test_callers_queued_behind_a_running_batch_wake_once_and_one_leads_the_next(
    tmp_path: Path,
) -> None:
    """Of the calls queued while a batch runs, only the first wakes when it ends (to take
    the queue to the thread); the others wake once, when their own batch has run."""
    async with await open_db(tmp_path) as db:
        commits = trace_commits(db)
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        counter = _TaskSteps()
        queued: list[trio.lowlevel.Task] = []
        ids: list[int] = []

        async def put(text: str) -> None:
            queued.append(trio.lowlevel.current_task())
            ids.append(await put_send(db, text))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(put_send, db, "running")
                await trio.testing.wait_all_tasks_blocked()
                trio.lowlevel.add_instrument(counter)
                for i in range(5):
                    nursery.start_soon(put, f"m{i}")
                await trio.testing.wait_all_tasks_blocked()
                blocker.execute("COMMIT")
        finally:
            trio.lowlevel.remove_instrument(counter)
        blocker.close()
        assert len(commits) == 2 and len(set(ids)) == 5
        # Each: its first step, and one wake; the leader of the second batch also wakes
        # when the first ends.
        assert sorted(counter.steps[task] for task in queued) == [2, 2, 2, 2, 3]


async def test_a_call_cancelled_while_waiting_to_lead_the_next_batch_hands_the_lead_on(
    tmp_path: Path,
) -> None:
    async with await open_db(tmp_path) as db:
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        scope = trio.CancelScope()

        async def cancelled_put() -> None:
            with scope:
                await put_send(db, "cancelled")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(put_send, db, "running")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(cancelled_put)  # first behind the batch: it would lead
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(put_send, db, "next")
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                blocker.execute("COMMIT")
        blocker.close()
        assert scope.cancelled_caught
        assert [e.request_id for e in await db.entries()] == ["running", "next"]


def _dump(path: Path) -> list[list[tuple[object, ...]]]:
    """Every row our dedupe and turn tables hold, in a stable order."""
    with sqlite3.connect(path / DB_FILENAME) as raw:
        dump = [
            sorted(raw.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in ("relay_dedupe", "relay_turns")
        ]
    raw.close()
    return dump


async def test_neighbouring_completions_run_in_bulk_with_the_effects_of_one_by_one(
    tmp_path: Path,
) -> None:
    ends = ["completed", "failed", "denied", "completed", "interrupted", "completed", "failed"]

    async def deliveries(db: StateDB) -> list[tuple[object, int | None]]:
        claimed = []
        for i in range(len(ends)):
            claim, turn_id = await steps.claim_turn(
                db, f"s{i % 2}", ("relay", "c", f"m{i}"), None, T0
            )
            claimed.append((claim.handle, turn_id))
        return claimed

    def completions(claimed: list[tuple[object, int | None]]) -> list[tuple[object, ...]]:
        calls: list[tuple[object, ...]] = [
            (handle, turn_id, end, T0 + 1 + i, "E: x" if end == "failed" else None)
            for i, ((handle, turn_id), end) in enumerate(zip(claimed, ends, strict=True))
        ]
        calls.insert(3, (*claimed[1], "completed", T0 + 3.5, None))  # again: no effect
        calls.insert(5, (None, None, "completed", T0 + 4.5, None))  # nothing to record
        return calls

    one_by_one = tmp_path / "one"
    async with await open_db(one_by_one, dedupe_max=4) as db:
        for call in completions(await deliveries(db)):
            await db.complete_turn(*call)  # type: ignore[arg-type]

    in_bulk = tmp_path / "bulk"
    async with await open_db(in_bulk, dedupe_max=4) as db:
        claimed = await deliveries(db)
        bulk_runs = count_completion_bulks(db)
        blocker = sqlite3.connect(in_bulk / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.prune, T0)  # leads a batch that waits for the lock
            await trio.testing.wait_all_tasks_blocked()
            for call in completions(claimed):
                nursery.start_soon(db.complete_turn, *call)
                await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
        blocker.close()
        assert bulk_runs == [len(ends) + 2]

    assert _dump(in_bulk) == _dump(one_by_one)
    claims, turns = _dump(in_bulk)
    assert len(claims) == 4  # completed, trimmed to dedupe_max
    assert [t[4] for t in turns] == ends


async def test_a_failing_bulk_is_rolled_back_and_its_operations_run_one_by_one(
    tmp_path: Path,
) -> None:
    async with await open_db(tmp_path) as db:
        bulk_calls: list[list[object]] = []

        def bulk(conn: sqlite3.Connection, args: list[object]) -> list[object]:
            bulk_calls.append(args)
            conn.execute(
                "INSERT INTO relay_turns (session_key, state, started_at) VALUES ('bulk', 'running', 0)"
            )
            raise RuntimeError("bulk failed")

        def insert(name: str) -> object:
            def fn(conn: sqlite3.Connection) -> str:
                if name == "bad":
                    raise ValueError("this one fails")
                conn.execute(
                    "INSERT INTO relay_turns (session_key, state, started_at)"
                    " VALUES (?, 'running', 0)",
                    (name,),
                )
                return f"{name} done"

            return fn

        outcomes: dict[str, object] = {}

        async def call(name: str, bulk_fn: object) -> None:
            try:
                outcomes[name] = await run_operation(db, insert(name), bulk_fn, name)  # type: ignore[arg-type]
            except Exception as exc:
                outcomes[name] = exc

        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "lead", None)
            await trio.testing.wait_all_tasks_blocked()
            for name, bulk_fn in [("a", bulk), ("bad", bulk), ("b", bulk), ("alone", None)]:
                nursery.start_soon(call, name, bulk_fn)
                await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
        blocker.close()
        assert bulk_calls == [["a", "bad", "b"]]
        assert isinstance(outcomes.pop("bad"), ValueError)
        assert outcomes == {n: f"{n} done" for n in ("lead", "a", "b", "alone")}
        assert [t.session_key for t in await db.turns()] == ["lead", "a", "b", "alone"]


async def test_claim_turn_claims_and_records_the_turn_in_one_transaction(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        commits = trace_commits(db)
        claim, turn_id = await steps.claim_turn(db, "s", K1, "buf-1", T0)
        assert len(commits) == 1
        assert claim.status is ClaimStatus.NEW and turn_id is not None
        record = await db.turn(turn_id)
        assert record is not None and record.state == "running" and record.k_buf == "buf-1"
        dup, dup_turn = await steps.claim_turn(db, "s", K1, None, T0 + 1)
        assert dup.status is ClaimStatus.IN_FLIGHT and dup_turn is None
        await db.complete_turn(claim.handle, turn_id, "completed", T0 + 2)
        done, done_turn = await steps.claim_turn(db, "s", None, "buf-1", T0 + 3)
        assert done.status is ClaimStatus.COMPLETED and done_turn is None
        assert len(await db.turns()) == 1


async def test_release_unstarted_frees_the_claim_and_forgets_the_turn(tmp_path: Path) -> None:
    async with await open_db(tmp_path) as db:
        claim, turn_id = await steps.claim_turn(db, "s", K1, "buf-1", T0)
        await db.release_unstarted(claim.handle, turn_id)
        assert await db.turns() == []
        assert await steps.claim_status(db, K1, "buf-1") is ClaimStatus.NEW
        again, _ = await steps.claim_turn(db, "s", K1, "buf-1", T0 + 1)
        assert again.status is ClaimStatus.NEW


async def test_claim_turns_records_in_one_transaction_and_resolves_like_sequential_claims(
    tmp_path: Path,
) -> None:
    async with await open_db(tmp_path) as db:
        first, first_turn = await steps.claim_turn(db, "s0", ("discord", "c", "done"), None, T0)
        await db.complete_turn(first.handle, first_turn, "completed", T0)
        commits = trace_commits(db)
        results = await db.claim_turns(
            [
                ClaimRequest("s1", K1, "buf-1"),
                ClaimRequest("s1", K1, "buf-2"),  # same K_msg later in the same batch
                ClaimRequest("s2", None, None),  # no keys: not deduplicated
                ClaimRequest("s0", ("discord", "c", "done"), "buf-3"),
                ClaimRequest("s3", None, "buf-2"),  # the K_buf the second request brought
            ],
            T0 + 1,
        )
        assert commits == []  # decided at once, recorded behind in one transaction:
        await db.flush()
        assert len(commits) == 1
        statuses = [claim.status for claim, _ in results]
        assert statuses == [
            ClaimStatus.NEW,
            ClaimStatus.IN_FLIGHT,
            ClaimStatus.NEW,
            ClaimStatus.COMPLETED,
            ClaimStatus.NEW,
        ]
        new_claim = results[0][0]
        assert results[1][0].handle == new_claim.handle and results[1][1] is None
        assert results[3][1] is None
        started = [turn_id for _, turn_id in results if turn_id is not None]
        assert len(started) == 3
        records = {r.turn_id: r for r in await db.turns("running")}
        assert sorted(records) == sorted(started)
        assert records[started[0]].session_key == "s1" and records[started[0]].k_buf == "buf-1"
        assert records[started[2]].session_key == "s3"
        assert await db.claim_turns([], T0 + 2) == []


def _file_at_version_2(path: Path) -> None:
    """A state file as schema version 2 left it: two completed claims (one with both keys),
    one in flight, its running turn and an ended one."""
    path.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path / DB_FILENAME, isolation_level=None) as raw:
        for script in _MIGRATIONS[:2]:
            for statement in _statements(script):
                raw.execute(statement)
        raw.execute("CREATE TABLE relay_schema (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO relay_schema VALUES (2)")
        raw.executemany(
            "INSERT INTO relay_dedupe_claims (claim_id, state, created_at, completed_at)"
            " VALUES (?, ?, ?, ?)",
            [
                (7, "completed", T0, T0 + 2),
                (8, "completed", T0, T0 + 1),
                (9, "in_flight", T0, None),
            ],
        )
        raw.executemany(
            "INSERT INTO relay_dedupe_keys (key, claim_id) VALUES (?, ?)",
            [
                ('["msg","relay","c","m7"]', 7),
                ('["buf","b7"]', 7),
                ('["msg","relay","c","m8"]', 8),
                ('["msg","relay","c","m9"]', 9),
            ],
        )
        raw.executemany(
            "INSERT INTO relay_turns (turn_id, session_key, k_msg, state, started_at, ended_at)"
            " VALUES (?, 's', ?, ?, ?, ?)",
            [(3, '["relay","c","m8"]', "completed", T0, T0 + 1), (4, None, "running", T0, None)],
        )
    raw.close()


async def test_a_version_2_file_keeps_its_completed_claims_through_the_migration(
    tmp_path: Path,
) -> None:
    _file_at_version_2(tmp_path)
    async with await open_db(tmp_path, now=T0 + 5) as db:
        assert await steps.claim_status(db, ("relay", "c", "m7"), None) is ClaimStatus.COMPLETED
        assert await steps.claim_status(db, None, "b7") is ClaimStatus.COMPLETED
        assert await steps.claim_status(db, ("relay", "c", "m8"), None) is ClaimStatus.COMPLETED
        assert await steps.claim_status(db, ("relay", "c", "m9"), None) is ClaimStatus.NEW
        assert [(t.turn_id, t.state) for t in await db.turns()] == [
            (3, "completed"),
            (4, "crashed"),
        ]
        fresh = await steps.claim(db, ("relay", "c", "new"), None, T0 + 6)
        assert fresh.handle is not None and fresh.handle.claim_id > 9
        assert max(t.turn_id for t in await db.turns()) == 5  # ids go on from the file's
    with sqlite3.connect(tmp_path / DB_FILENAME) as raw:
        # Completion order (m8 first), both keys of m7 in its one row; the view shows them.
        assert raw.execute("SELECT claim_id, key1, key2 FROM relay_dedupe ORDER BY seq").fetchall()[
            :2
        ] == [
            (8, '["msg","relay","c","m8"]', None),
            (7, '["buf","b7"]', '["msg","relay","c","m7"]'),
        ]
        assert raw.execute("SELECT version FROM relay_schema").fetchall() == [(SCHEMA_VERSION,)]
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
    raw.close()
    assert "relay_dedupe_keys" not in names and "relay_turns_state" not in names


def count_writes(db: StateDB) -> collections.Counter[str]:
    """From now on, count the rows the store's statements write, as "VERB table"."""
    seen: collections.Counter[str] = collections.Counter()

    def trace(sql: str) -> None:
        words = sql.split()
        table = next((w for w in words if w.startswith("relay_")), "")
        if words[0] in ("INSERT", "UPDATE", "DELETE"):
            seen[f"{words[0]} {table}"] += 1

    conn: sqlite3.Connection = db._conn  # type: ignore[assignment]
    conn.set_trace_callback(trace)
    return seen


async def test_a_turn_claimed_and_completed_in_one_batch_is_one_insert_and_the_window_one_range(
    tmp_path: Path,
) -> None:
    """The per-message record (issue 15): deliveries whose claims and completions share a
    batch are one turn row each, inserted ended (the frame never written), and one dedupe
    row each; the completions the window forgets go in one range DELETE."""
    async with await open_db(tmp_path, dedupe_max=3) as db:
        seen = count_writes(db)
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.prune, T0)  # leads a batch that waits for the lock
            await trio.testing.wait_all_tasks_blocked()
            requests = [
                ClaimRequest("s", ("relay", "c", f"m{i}"), f"b{i}", "{frame}") for i in range(6)
            ]
            claims = await db.claim_turns(requests, T0)
            for i, (claim, turn_id) in enumerate(claims):
                nursery.start_soon(db.complete_turn, claim.handle, turn_id, "completed", T0 + i)
                await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
        blocker.close()
        assert seen == {
            "INSERT relay_turns": 6,  # one row each (executemany: one per row), ended
            "INSERT relay_dedupe": 3,  # the three completions the window keeps
            "DELETE relay_dedupe": 1,  # the others were forgotten before being written
            "DELETE relay_turns": 1,  # prune's 24 h expiry (completions' waits TURN_SWEEP_S)
            "INSERT relay_meta": 2,  # the first claim and turn ids reserved
        }
        assert [t.state for t in await db.turns()] == ["completed"] * 6
        kept = {c.handle.claim_id for c, _ in claims[3:] if c.handle is not None}
        assert {claim_id for claim_id, _ in completed_rows(tmp_path)} == kept
        assert len(completed_rows(tmp_path)) == 6  # both keys of each
        with sqlite3.connect(tmp_path / DB_FILENAME) as raw:
            framed = raw.execute("SELECT count(*) FROM relay_turns WHERE inbound IS NOT NULL")
            assert framed.fetchone() == (0,)
        raw.close()
        # Three more, started in an earlier batch: ended in one UPDATE, and the three
        # completions they push out of the window leave in one range DELETE.
        more = await db.claim_turns(
            [ClaimRequest("s", ("relay", "c", f"n{i}"), None) for i in range(3)], T0 + 10
        )
        await db.flush()
        seen.clear()
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.prune, T0)
            await trio.testing.wait_all_tasks_blocked()
            for claim, turn_id in more:
                nursery.start_soon(db.complete_turn, claim.handle, turn_id, "completed", T0 + 11)
                await trio.testing.wait_all_tasks_blocked()
            blocker.execute("COMMIT")
        blocker.close()
        assert seen["DELETE relay_dedupe"] == 1
        assert seen["UPDATE relay_turns"] == 1
        assert seen["INSERT relay_dedupe"] == 3
        assert {claim_id for claim_id, _ in completed_rows(tmp_path)} == {
            c.handle.claim_id for c, _ in more if c.handle is not None
        }


async def test_completions_expire_turn_records_by_their_24_hours_every_sweep_interval(
    tmp_path: Path,
) -> None:
    async with await open_db(tmp_path) as db:

        async def turn(ended: float) -> int:
            ((claim, turn_id),) = await db.claim_turns([ClaimRequest("s", None, None)], ended)
            await db.complete_turn(claim.handle, turn_id, "completed", ended)
            assert turn_id is not None
            return turn_id

        assert TURN_SWEEP_S < DAY
        a = await turn(T0)  # swept at T0
        b = await turn(T0 + 100)
        c = await turn(T0 + DAY + 50)  # swept: a ended more than 24 h ago
        assert [t.turn_id for t in await db.turns()] == [b, c]
        d = await turn(T0 + DAY + 50 + TURN_SWEEP_S / 2)
        # b is past its 24 h too, but the expiry waits TURN_SWEEP_S after the last sweep...
        assert [t.turn_id for t in await db.turns()] == [b, c, d]
        e = await turn(T0 + DAY + 50 + TURN_SWEEP_S)
        # ... and comes with the first completion after it.
        assert [t.turn_id for t in await db.turns()] == [c, d, e]
        assert a not in {t.turn_id for t in await db.turns()}
