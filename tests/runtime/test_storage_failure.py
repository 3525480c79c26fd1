"""Issue 11: a failing state-db write is bounded (no spin, one ERROR, backoff, exit after
the limit, resume when space is back).

The file really fails: SQLite's ``max_page_count`` caps it at its current size, so the
next write that needs a page gets ``SQLITE_FULL`` ("database or disk is full"), exactly as
on a full disk; raising the cap is space coming back. The clock is a ``MockClock`` moved by
hand (no autojump: the state db's worker thread would let it fire timers early).
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from relay_runtime._gateway import _watch_storage
from relay_runtime._state import ClaimRequest, StateDB, StateError, StorageFailed
from relay_runtime.testing import batch_running, between_batches, cap_file, count_batches

T0 = 1000.0


async def fill(db: StateDB, count: int = 40) -> None:
    """Admit ``count`` live deliveries (1 KiB frames): records that need new pages."""
    await db.claim_turns(
        [ClaimRequest("s", ("discord", "c", f"m{i}"), None, "x" * 1024) for i in range(count)],
        T0,
    )


@attrs.define
class Link:
    """The supervisor as the watchdog sees it: its state, and suspends asked for."""

    state: str = "ready"
    suspends: int = 0

    async def suspend(self) -> bool:
        self.suspends += 1
        self.state = "backoff"
        return True


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(rate=0)


async def test_a_full_disk_is_one_error_retried_and_resumes_when_space_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay_runtime.state")
    link = Link()
    async with await StateDB.open(tmp_path, now=T0) as db, trio.open_nursery() as nursery:
        nursery.start_soon(_watch_storage, db, link, 60.0)
        await cap_file(db)
        await fill(db)
        for _ in range(20):  # every retry fails the same way
            with pytest.raises(StateError, match="database or disk is full"):
                await db.flush()
        assert db.failing_since == 0.0
        assert db.failure_cause is not None and "database or disk is full" in db.failure_cause
        await trio.testing.wait_all_tasks_blocked()
        assert link.suspends == 1  # going_idle: the connector buffers meanwhile
        clock.jump(59.0)
        await trio.testing.wait_all_tasks_blocked()
        await cap_file(db, 1_000_000)  # space is back before the limit
        await db.flush()
        assert db.failing_since is None
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(3600.0)  # the watchdog saw the recovery: no exit
        await trio.testing.wait_all_tasks_blocked()
        assert len(await db.turns("running")) == 40  # nothing lost: all recorded now
        nursery.cancel_scope.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.message for r in errors]
    assert "SQLITE_FULL" in errors[0].message or "disk is full" in errors[0].message
    recovered = [r for r in caplog.records if "writable again after 59.0 s" in r.message]
    assert len(recovered) == 1


async def test_storage_broken_for_the_limit_raises_storage_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: trio.testing.MockClock
) -> None:
    link = Link(state="backoff")  # not connected: nothing to go idle from
    db = await StateDB.open(tmp_path, now=T0)
    try:
        with pytest.RaisesGroup(pytest.RaisesExc(StorageFailed, match="for 60 s")):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_storage, db, link, 60.0)
                await cap_file(db)
                await fill(db)
                with pytest.raises(StateError):
                    await db.flush()
                await trio.testing.wait_all_tasks_blocked()
                clock.jump(59.9)
                await trio.testing.wait_all_tasks_blocked()
                assert db.failing_since is not None  # still alive, still failing
                clock.jump(0.1)
                await trio.sleep_forever()
    finally:
        await cap_file(db, 1_000_000)  # so that closing does not wait on the mock clock
        await db.aclose()
    assert link.suspends == 0
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "exiting" in critical[0].message


async def test_closing_while_storage_fails_is_bounded_and_says_what_was_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: trio.testing.MockClock
) -> None:
    """The shutdown path used to spin (a failing batch retried at once, ~2,000 ERROR/s);
    now a few tries back off, then the records are given up with one ERROR."""
    caplog.set_level(logging.DEBUG, logger="relay_runtime.state")
    db = await StateDB.open(tmp_path, now=T0)
    await cap_file(db)
    await fill(db)
    counted = count_batches(db)
    closed = trio.Event()

    async def close() -> None:
        await db.aclose()
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close)
        # Time moves only here, and only while closing sleeps between tries: a batch in
        # the worker thread looks blocked to trio, so that is waited for instead.
        for _ in range(1000):
            await trio.testing.wait_all_tasks_blocked()
            if closed.is_set():
                break
            if batch_running(db):
                await between_batches(db)
                continue
            clock.jump(0.05)
    assert closed.is_set()
    # Tried, backed off (0.1 s), tried, backed off (0.2 s), tried; then given up: a
    # bounded close, where it used to retry at once forever.
    assert counted.batches == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, [r.message for r in errors]  # the episode, and the give-up
    assert "not committed at close" in errors[1].message
