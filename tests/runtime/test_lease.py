"""The PostgreSQL lease per gateway id (relay_runtime/_state/_lease.py).

The SQL runs against the real server (its clock decides expiry; an expiry is made to
happen by moving the row's ``expires_at`` into the past, not by waiting). The timing of
renewing, giving up and standing by runs under the mock clock with an in-memory stand-in
for the statements (``FakeSql``), in worker threads as the real ones run.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import psycopg
import pytest
import trio
import trio.testing

from relay_runtime._state import ClaimRequest, LeaseLost, StateError
from relay_runtime._state._lease import Lease, LeaseSql
from relay_runtime._state._pg import PgStateDB, open_leased
from relay_runtime.testing import autojump_around_threads
from tests.pg import require_pg
from tests.runtime.state_steps import drop_pg_gateways, pg_gateway_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

T0 = 1_700_000_000.0


# ------------------------------------------------------------------ real PostgreSQL


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    """A gateway id of its own for the test; its rows are deleted afterwards."""
    require_pg()
    yield pg_gateway_id(tmp_path)
    drop_pg_gateways()


def sql_for(gateway: str) -> LeaseSql:
    return LeaseSql(require_pg(), gateway, "postgres")


def expire_now(gateway: str) -> None:
    """As if the holder died ``ttl`` ago: its lease has run out (server clock)."""
    with psycopg.connect(require_pg(), autocommit=True) as conn:
        conn.execute(
            "UPDATE relay_state_lease SET expires_at = clock_timestamp() - interval '1 second'"
            " WHERE gateway_id = %s",
            (gateway,),
        )


@pytest.mark.postgres
async def test_two_processes_race_for_a_lease_and_one_wins(gateway: str) -> None:
    first, second = sql_for(gateway), sql_for(gateway)
    results: list[tuple[int | None, str, float]] = []

    async def take(sql: LeaseSql, holder: str) -> None:
        results.append(await trio.to_thread.run_sync(sql.take, holder, 8.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, first, "host-a pid 1")
        nursery.start_soon(take, second, "host-b pid 2")
    winners = [r for r in results if r[0] is not None]
    losers = [r for r in results if r[0] is None]
    assert len(winners) == 1 and len(losers) == 1
    assert winners[0][0] == 1
    assert losers[0][1] == winners[0][1]  # the loser learns who holds it
    assert 0 < losers[0][2] <= 8.0
    first.discard()
    second.discard()


@pytest.mark.postgres
async def test_an_expired_lease_is_taken_over_with_a_new_token(gateway: str) -> None:
    old, new = sql_for(gateway), sql_for(gateway)
    token, _, _ = old.take("old", 8.0)
    assert token is not None and old.renew(token, 8.0)
    assert new.take("new", 8.0)[0] is None  # still held
    expire_now(gateway)
    taken, holder, _ = new.take("new", 8.0)
    assert taken == token + 1 and holder == "new"
    assert not old.renew(token, 8.0)  # the old holder learns it at its next renewal
    old.release(token)  # and its release does not free the new holder's lease
    third = sql_for(gateway)
    assert third.take("third", 8.0)[0] is None
    third.discard()
    old.discard()
    new.discard()


@pytest.mark.postgres
async def test_a_clean_release_frees_the_lease_at_once(gateway: str) -> None:
    holder, standby = sql_for(gateway), sql_for(gateway)
    token, _, _ = holder.take("holder", 8.0)
    assert token is not None
    holder.release(token)
    assert standby.take("standby", 8.0)[0] == token + 1
    holder.discard()
    standby.discard()


@pytest.mark.postgres
async def test_fencing_refuses_a_stale_holders_writes(gateway: str) -> None:
    dsn = require_pg()
    old_lease = Lease(sql_for(gateway), holder="old")
    await old_lease.acquire()
    old = await PgStateDB.open(dsn, gateway, now=T0, location="pg", lease=old_lease)
    await old.put("relay", "bot", "{}", "before", "send", T0)
    expire_now(gateway)  # the old holder stalled past its lease; a standby takes over
    new_lease = Lease(sql_for(gateway), holder="new")
    await new_lease.acquire()
    assert new_lease.token == (old_lease.token or 0) + 1
    new = await PgStateDB.open(dsn, gateway, now=T0 + 1, location="pg", lease=new_lease)
    with pytest.raises(LeaseLost, match="taken over; write refused"):
        await old.put("relay", "bot", "{}", "stale", "send", T0 + 2)
    assert old_lease.lost_reason is not None  # keep() raises: the gateway stops serving
    with pytest.raises(LeaseLost):
        await old_lease.keep()
    await old.claim_turns([ClaimRequest("s", ("t", "c", "m"), None)], T0 + 2)
    with pytest.raises(StateError):  # a written-behind record is refused too
        await old.flush()
    await new.put("relay", "bot", "{}", "after", "send", T0 + 3)
    assert [e.request_id for e in await new.entries()] == ["before", "after"]
    await old.aclose()
    await new.aclose()
    await new_lease.release()
    await old_lease.release()


class LogSeen(logging.Handler):
    """Sets ``event`` when a ``relay_runtime._state`` record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@contextlib.contextmanager
def seen(text: str) -> Iterator[trio.Event]:
    handler = LogSeen(text)
    state_log = logging.getLogger("relay_runtime.state")
    state_log.addHandler(handler)
    try:
        yield handler.event
    finally:
        state_log.removeHandler(handler)


@pytest.mark.postgres
async def test_a_standby_waits_logs_its_holder_once_and_takes_over_on_release(
    gateway: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "relay_runtime.state")
    holder = Lease(sql_for(gateway), holder="host-a pid 11")
    await holder.acquire()
    standby = Lease(sql_for(gateway), holder="host-b pid 22")
    with seen("relay: standby:") as waiting, seen("took over") as took_over, trio.fail_after(60):
        async with trio.open_nursery() as nursery:  # fail_after: a guard only
            nursery.start_soon(standby.acquire)
            await waiting.wait()
            assert standby.token is None
            await holder.release()
            await took_over.wait()
    assert standby.token == 2
    lines = [r.getMessage() for r in caplog.records if "standby:" in r.getMessage()]
    assert len(lines) == 1 and "host-a pid 11" in lines[0] and gateway in lines[0]
    await standby.release()


@pytest.mark.postgres
async def test_a_standby_stops_at_once_when_cancelled(gateway: str) -> None:
    holder = Lease(sql_for(gateway), holder="holder")
    await holder.acquire()
    standby = Lease(sql_for(gateway), holder="standby", ttl_s=300)
    with trio.move_on_after(0.5):
        await standby.acquire()
    assert standby.token is None
    await holder.release()


@pytest.mark.postgres
async def test_open_leased_hands_the_state_over_on_a_clean_stop(gateway: str) -> None:
    dsn = require_pg()
    async with contextlib.AsyncExitStack() as stack:
        db, lease = await open_leased(stack, dsn, gateway, now=lambda: T0, lease_ttl_s=8.0)
        await db.put("relay", "bot", "{}", "kept", "send", T0)
        assert lease.token == 1
    # Closed: the state first, then the lease released; the next process takes it at once.
    async with contextlib.AsyncExitStack() as stack:
        with trio.fail_after(30):  # a guard: a held lease would make this wait 8 s and more
            db, lease = await open_leased(stack, dsn, gateway, now=lambda: T0, lease_ttl_s=8.0)
        assert lease.token == 2
        assert [e.request_id for e in await db.entries()] == ["kept"]


async def test_an_unreachable_database_is_a_clear_error_at_the_first_try() -> None:
    lease = Lease(LeaseSql("postgresql://nobody@127.0.0.1:9/none", "g", "pg://127.0.0.1:9"))
    with pytest.raises(StateError, match=r"'pg://127.0.0.1:9': cannot take the lease"):
        await lease.acquire()


# ------------------------------------------------------------- timing (mock clock)


class FakeSql(LeaseSql):
    """The lease's statements over one in-memory row; the clock is trio's (mock) clock,
    read by the test through ``now``."""

    def __init__(self, gateway: str = "g") -> None:
        super().__init__("", gateway, "fake")
        self.holder = ""
        self.token = 0
        self.expires_at = -1.0
        self.now = 0.0
        self.down = False
        self.renewals: list[float] = []

    def take(self, holder: str, ttl_s: float) -> tuple[int | None, str, float]:
        if self.down:
            raise psycopg.OperationalError("server closed the connection")
        if self.expires_at <= self.now:
            self.holder, self.token, self.expires_at = holder, self.token + 1, self.now + ttl_s
            return self.token, holder, 0.0
        return None, self.holder, self.expires_at - self.now

    def renew(self, token: int, ttl_s: float) -> bool:
        if self.down:
            raise psycopg.OperationalError("server closed the connection")
        if token != self.token:
            return False
        self.renewals.append(self.now)
        self.expires_at = self.now + ttl_s
        return True

    def release(self, token: int) -> None:
        if token == self.token:
            self.expires_at = -1.0

    def discard(self) -> None:
        pass


async def _ticking(sql: FakeSql) -> None:
    """Keep the fake's notion of now at trio's (mock) clock."""
    while True:
        sql.now = trio.current_time()
        await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def mock_time(clock: trio.testing.MockClock, sql: FakeSql) -> AsyncIterator[None]:
    """Mock time that jumps across the lease's thread calls and that the fake follows."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(autojump_around_threads, clock)
        nursery.start_soon(_ticking, sql)
        yield
        nursery.cancel_scope.cancel()


async def test_the_holder_renews_every_quarter_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sql = FakeSql()
    lease = Lease(sql, ttl_s=8.0, holder="me")
    async with mock_time(autojump_clock, sql):
        await lease.acquire()
        with trio.move_on_after(20.5):
            await lease.keep()
    assert len(sql.renewals) == 10
    gaps = [b - a for a, b in zip(sql.renewals, sql.renewals[1:], strict=False)]
    assert all(1.9 <= gap <= 2.1 for gap in gaps)


async def test_a_holder_that_cannot_renew_stops_before_its_lease_expires(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    sql = FakeSql()
    lease = Lease(sql, ttl_s=8.0, holder="me")
    async with mock_time(autojump_clock, sql):
        await lease.acquire()
        taken_at = trio.current_time()
        sql.down = True  # the database connection is gone
        with pytest.raises(LeaseLost, match="not renewed for 6 s"):
            await lease.keep()
        stopped_at = trio.current_time()
    # Stopped serving at ttl - margin: 2 s before anyone else could take the lease.
    assert stopped_at - taken_at == pytest.approx(6.0, abs=0.05)
    assert stopped_at < sql.expires_at
    assert any("lost the lease" in r.getMessage() for r in caplog.records)
    with pytest.raises(LeaseLost):
        lease.fence_token()  # and its state writes are refused from then on


async def test_a_holder_taken_over_stops_at_its_next_renewal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sql = FakeSql()
    lease = Lease(sql, ttl_s=8.0, holder="me")
    async with mock_time(autojump_clock, sql):
        await lease.acquire()
        sql.token += 1  # another process took it (after a stall of ours)
        with pytest.raises(LeaseLost, match="another process took it over"):
            await lease.keep()
        assert trio.current_time() == pytest.approx(2.0, abs=0.05)


async def test_a_standby_takes_over_a_dead_holder_within_ttl_and_a_poll(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "relay_runtime.state")
    sql = FakeSql("gw-1")
    dead = Lease(sql, ttl_s=8.0, holder="host-a pid 1")
    standby = Lease(sql, ttl_s=8.0, holder="host-b pid 2")
    async with mock_time(autojump_clock, sql):
        await dead.acquire()
        await trio.sleep(2.0)
        assert sql.renew(1, 8.0)  # its last renewal; then it is killed (kill -9)
        died_at = trio.current_time()
        await standby.acquire()
        took_over_after = trio.current_time() - died_at
    assert 8.0 <= took_over_after <= 9.0 + 0.05
    assert standby.token == 2
    waiting = [r.getMessage() for r in caplog.records if "standby:" in r.getMessage()]
    assert waiting == [
        "relay: standby: gateway 'gw-1' is served by host-a pid 1 (lease runs 8.0 s more);"
        " waiting to take over"
    ]
