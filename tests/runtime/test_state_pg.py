"""What only the PostgreSQL store has: many gateways in one database, state that outlives
the process (any host may open it next), its schema created by processes starting
together, and a dropped connection handled as a storage failure that reconnects. The
interface's behaviour itself is ``test_state_contract.py``'s (run on PostgreSQL too)."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING

import psycopg
import pytest
import trio

from relay_runtime._state import PG_SCHEMA_VERSION, ClaimRequest, ClaimStatus, PgStateDB, StateError
from relay_runtime.testing import claim_status, redirect_reconnects, run_operation
from tests.pg import require_pg
from tests.runtime.state_steps import drop_pg_gateways, pg_gateway_id

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000.0
K1 = ("telegram", "chat1", "m1")
K2 = ("telegram", "chat1", "m2")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    require_pg()
    yield pg_gateway_id(tmp_path)
    drop_pg_gateways()


async def open_pg(gateway: str, now: float = T0, **sizes: int) -> PgStateDB:
    return await PgStateDB.open(require_pg(), gateway, now=now, location="pg", **sizes)


async def test_a_new_process_carries_on_where_the_last_stopped(
    gateway: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with await open_pg(gateway) as first:
        key = first.reply_key
        done, done_turn = (await first.claim_turns([ClaimRequest("s", K1, "b1")], T0))[0]
        await first.complete_turn(done.handle, done_turn, "completed", T0 + 1)
        (_, live_turn), _ = await first.claim_turns(
            [ClaimRequest("s", K2, None, '{"n":2}'), ClaimRequest("s", None, "b3")], T0 + 2
        )
        await first.flush()
        await first.put("relay", "bot", '{"op":"send"}', "r1", "send", T0 + 3)
    # "Crashed" with a live turn and a buffered one running; another host opens the state.
    async with await open_pg(gateway, now=T0 + 10) as second:
        assert second.reply_key == key
        assert [e.request_id for e in await second.entries()] == ["r1"]
        (resumed,) = second.take_resumable()
        assert (resumed.turn_id, resumed.inbound, resumed.k_msg) == (live_turn, '{"n":2}', K2)
        assert [t.state for t in await second.turns()] == ["completed", "running", "crashed"]
        again = await second.claim_turns(
            [ClaimRequest("s", K1, None), ClaimRequest("s", None, "b3")], T0 + 11
        )
        await second.flush()
        # The completed one stays deduplicated; the buffered one runs again (replayed).
        assert [claim.status for claim, _ in again] == [ClaimStatus.COMPLETED, ClaimStatus.NEW]
        assert again[1][1] is not None and again[1][1] > (live_turn or 0)
    assert "marked crashed" in caplog.text


async def test_gateways_in_one_database_see_only_their_own_state(tmp_path: Path) -> None:
    require_pg()
    one, two = pg_gateway_id(tmp_path / "one"), pg_gateway_id(tmp_path / "two")
    try:
        async with await open_pg(one) as a, await open_pg(two) as b:
            await a.put("relay", "bot", "{}", "for-one", "send", T0)
            await a.claim_turns([ClaimRequest("s", K1, None)], T0)
            await a.flush()
            assert await b.entries() == [] and await b.count() == 0
            (other, _), *_ = await b.claim_turns([ClaimRequest("s", K1, None)], T0)
            await b.flush()
            assert other.status is ClaimStatus.NEW  # the same key, another gateway
            assert a.reply_key != b.reply_key
        async with await open_pg(two) as b:
            assert await b.turns() and all(t.turn_id == 1 for t in await b.turns())
    finally:
        drop_pg_gateways()


def test_processes_starting_together_create_the_schema_once() -> None:
    dsn = require_pg()
    schema = f"relay_state_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
    scoped = f"{dsn}?options=-csearch_path%3D{schema}"
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    async def open_store(gateway_id: str) -> None:
        async with await PgStateDB.open(scoped, gateway_id, now=T0, location="pg"):
            pass

    def open_one(n: int) -> None:
        try:
            start.wait()
            trio.run(open_store, pg_gateway_id(f"start{n}"))
        except BaseException as exc:  # collected: the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        with psycopg.connect(scoped) as conn:
            rows = conn.execute("SELECT version FROM relay_state_schema").fetchall()
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)
            ).fetchone()
        assert rows == [(PG_SCHEMA_VERSION,)]
        assert tables == (6,)  # five relay_state_* tables and the version
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    dsn = require_pg()
    schema = f"relay_state_test_{uuid.uuid4().hex[:12]}"
    scoped = f"{dsn}?options=-csearch_path%3D{schema}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
        admin.execute(f"CREATE TABLE {schema}.relay_state_schema (version INTEGER)".encode())
        admin.execute(f"INSERT INTO {schema}.relay_state_schema VALUES (99)".encode())
    try:
        with pytest.raises(StateError, match="schema version 99, newer than"):
            await PgStateDB.open(scoped, "g", now=T0, location="pg")
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def _terminate(pid: int) -> None:
    with psycopg.connect(require_pg(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def backend_pid(db: PgStateDB) -> int:
    """The server process serving the store's connection now."""
    row = await run_operation(db, lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone())
    return int(row[0])


async def test_a_dropped_connection_reconnects_without_losing_a_write(gateway: str) -> None:
    async with await open_pg(gateway) as db:
        pid = await backend_pid(db)
        await trio.to_thread.run_sync(_terminate, pid)
        await db.put("relay", "bot", "{}", "after-restart", "send", T0)
        assert db.failing_since is None
        assert [e.request_id for e in await db.entries()] == ["after-restart"]


async def test_an_unreachable_server_is_a_storage_failure_until_it_is_back(
    gateway: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "relay_runtime.state")
    async with await open_pg(gateway) as db:
        pid = await backend_pid(db)
        # Reconnects go to a closed port until the block ends: then the server is back.
        with redirect_reconnects(db, "postgresql://postgres@127.0.0.1:9/test"):
            await trio.to_thread.run_sync(_terminate, pid)
            (claim, turn), *_ = await db.claim_turns([ClaimRequest("s", K1, None, "{}")], T0)
            with pytest.raises(StateError, match="connection failed"):
                await db.flush()
            assert db.failing_since is not None
            assert db.failure_cause is not None and "OperationalError" in db.failure_cause
        await db.flush()  # the kept records are retried, in order, and committed
        assert db.failing_since is None
        assert await db.inbox_frames([turn or 0]) == {turn: "{}"}
        assert claim.status is ClaimStatus.NEW
    assert "is writable again" in caplog.text


async def test_a_version_1_database_keeps_every_gateways_completed_claims(tmp_path: Path) -> None:
    """The migration to one row per completed claim (issue 15), with two gateways' rows."""
    from relay_runtime._state._pg_schema import _MIGRATIONS

    dsn = require_pg()
    schema = f"relay_state_test_{uuid.uuid4().hex[:12]}"
    scoped = f"{dsn}?options=-csearch_path%3D{schema}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        with psycopg.connect(scoped, autocommit=True) as conn:
            conn.execute(_MIGRATIONS[0].encode())
            conn.execute("CREATE TABLE relay_state_schema (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO relay_state_schema VALUES (1)")
            for gateway_id in ("g1", "g2"):
                conn.cursor().executemany(
                    "INSERT INTO relay_state_claims VALUES (%s, %s, %s, %s, %s)",
                    [
                        (gateway_id, 5, "completed", T0, T0 + 2),
                        (gateway_id, 6, "completed", T0, T0 + 1),
                        (gateway_id, 9, "in_flight", T0, None),
                    ],
                )
                conn.cursor().executemany(
                    "INSERT INTO relay_state_keys VALUES (%s, %s, %s)",
                    [
                        (gateway_id, '["msg","telegram","chat1","m1"]', 5),
                        (gateway_id, '["buf","b1"]', 5),
                        (gateway_id, '["msg","telegram","chat1","m2"]', 6),
                        (gateway_id, '["msg","telegram","chat1","m9"]', 9),
                    ],
                )
        for gateway_id in ("g1", "g2"):
            async with await PgStateDB.open(scoped, gateway_id, now=T0 + 5, location="pg") as db:
                statuses = [
                    claim_status(db, k_msg, k_buf)
                    for k_msg, k_buf in (
                        (K1, None),
                        (None, "b1"),
                        (K2, None),
                        (("telegram", "chat1", "m9"), None),
                    )
                ]
                assert statuses == [ClaimStatus.COMPLETED] * 3 + [ClaimStatus.NEW]
                ((fresh, _),) = await db.claim_turns(
                    [ClaimRequest("s", ("t", "c", "new"), None)], T0 + 6
                )
                assert fresh.handle is not None and fresh.handle.claim_id > 9
        with psycopg.connect(scoped) as conn:
            rows = conn.execute(
                "SELECT gateway_id, seq, claim_id FROM relay_state_dedupe ORDER BY 1, 2"
            ).fetchall()
        assert rows == [("g1", 1, 6), ("g1", 2, 5), ("g2", 1, 6), ("g2", 2, 5)]
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())
