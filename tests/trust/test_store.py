"""The client store on both backends: schema, pragmas, views, aliases, cache, counters."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
import trio

from tests.trust.conftest import WallClock, open_store
from trust._model import Level, StateChange
from trust._records import CachedVerdict, PreconditionFailed
from trust._store import ApplyContext, CounterDelta, SqlClientStore, open_sqlite_store
from trust._store.schema import SCHEMA_VERSION
from trust._store.sqlite import DB_FILENAME

OP = "local:tester"


async def test_T19_sqlite_file_is_wal_mode_0600_synchronous_full(
    sqlite_store: SqlClientStore, tmp_path: Path
) -> None:
    path = tmp_path / DB_FILENAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    def pragmas(tx: object) -> tuple[str, int, int]:
        mode = tx.rows("PRAGMA journal_mode")[0][0]  # type: ignore[attr-defined]
        sync = tx.rows("PRAGMA synchronous")[0][0]  # type: ignore[attr-defined]
        busy = tx.rows("PRAGMA busy_timeout")[0][0]  # type: ignore[attr-defined]
        return str(mode), int(sync), int(busy)

    mode, sync, busy = await trio.to_thread.run_sync(sqlite_store.backend.run_tx, pragmas, False)
    assert (mode, sync, busy) == ("wal", 2, 5000)  # 2 == FULL
    with sqlite3.connect(path) as other:
        tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "trust_meta",
        "trust_clients",
        "trust_aliases",
        "trust_audit",
        "trust_invites",
        "trust_invite_uses",
        "trust_payments",
        "trust_decision_cache",
        "trust_counters",
    } <= tables


async def test_reopening_keeps_data_and_schema_version(
    tmp_path: Path, wall: WallClock, sqlite_store: SqlClientStore
) -> None:
    await sqlite_store.run_op("promote_to_contact", "x:a", actor=OP, tier="operator", reason=None)
    again = await open_sqlite_store(tmp_path / DB_FILENAME, clock=wall)
    try:
        assert (await again.get("x:a")).level is Level.CONTACT
        version = await again.transaction(
            lambda tx: tx.rows("SELECT value FROM trust_meta WHERE key = 'schema_version'"),
            write=False,
        )
        assert version == [(str(SCHEMA_VERSION),)]
    finally:
        await again.aclose()


async def test_newer_schema_refused(tmp_path: Path, wall: WallClock) -> None:
    store = await open_sqlite_store(tmp_path, clock=wall)
    await store.transaction(
        lambda tx: tx.run("UPDATE trust_meta SET value = '99' WHERE key = 'schema_version'")
    )
    await store.aclose()
    with pytest.raises(Exception, match="schema version 99 is newer"):
        await open_sqlite_store(tmp_path, clock=wall)


async def test_absent_client_is_a_stranger(store: SqlClientStore) -> None:
    rec = await store.get("x:nobody")
    assert (rec.level, rec.blocked, rec.is_admin, rec.stored) == (
        Level.STRANGER,
        False,
        False,
        False,
    )
    assert await store.list_clients() == []


async def test_T10_blocked_secondary_or_alias_blocks_the_primary(store: SqlClientStore) -> None:
    assert await store.bind_alias("x:sec", "x:pri") == "x:pri"
    # First binding wins.
    assert await store.bind_alias("x:sec", "x:other") == "x:pri"
    assert await store.resolve_alias("x:sec") == "x:pri"
    view = await store.view("x:pri", None)
    assert not view.secondary_blocked
    await store.run_op("block", "x:loose", actor=OP, tier="operator", reason="spam")
    # The message's own secondary id is blocked.
    assert (await store.view("x:pri", "x:loose")).secondary_blocked
    # An id aliased to the primary is blocked (the block on an alias acts on its primary,
    # so write the alias row directly, as an older binding would have left it).
    await store.run_op("block", "x:old", actor=OP, tier="operator", reason="spam")
    await store.bind_alias("x:old2", "x:pri")
    await store.transaction(
        lambda tx: tx.run("UPDATE trust_aliases SET alias_id = 'x:old' WHERE alias_id = 'x:old2'")
    )
    assert (await store.view("x:pri", None)).secondary_blocked
    # A message carrying only the secondary id resolves to the primary.
    view = await store.view("x:sec", None)
    assert view.record.client_id == "x:pri"


async def test_operations_on_an_alias_act_on_its_primary(store: SqlClientStore) -> None:
    await store.bind_alias("x:sec", "x:pri")
    result = await store.run_op(
        "promote_to_contact", "x:sec", actor=OP, tier="operator", reason=None
    )
    assert result.client is not None
    assert result.client.client_id == "x:pri"
    assert (await store.get("x:pri")).level is Level.CONTACT


async def test_T61_state_change_drops_cached_verdicts(
    store: SqlClientStore, wall: WallClock
) -> None:
    verdict = CachedVerdict("x:a", "d1", True, "looks fine", wall.now, wall.now + 60_000)
    await store.cache_put(verdict)
    assert await store.cache_get("x:a", "d1") == verdict
    assert await store.cache_get("x:a", "other-digest") is None
    wall.advance(61)
    assert await store.cache_get("x:a", "d1") is None
    wall.advance(-61)
    await store.run_op("promote_to_contact", "x:a", actor=OP, tier="operator", reason=None)
    assert await store.cache_get("x:a", "d1") is None
    await store.cache_put(verdict)
    await store.cache_drop("x:a")
    assert await store.cache_get("x:a", "d1") is None


async def test_counters_add_and_roll_over_buckets(store: SqlClientStore) -> None:
    await store.add_counts([CounterDelta("x:a", 1000, 2000, 3, 10, 3, 240, 3, 1, 2)])
    await store.add_counts([CounterDelta("x:a", 500, 2500, 2, 10, 2, 240, 2, 0, 1)])
    c = await store.counters("x:a")
    assert c is not None
    assert (c.first_seen, c.last_seen, c.requests, c.requests_today, c.requests_hour) == (
        500,
        2500,
        5,
        5,
        5,
    )
    assert (c.agent_calls_hour, c.invite_failures_hour) == (1, 3)
    # Next hour, same day: the hour buckets restart, the day keeps counting.
    await store.add_counts([CounterDelta("x:a", 3000, 3000, 1, 10, 1, 241, 1, 0, 0)])
    c = await store.counters("x:a")
    assert c is not None
    assert (c.requests, c.requests_today, c.requests_hour, c.hour, c.invite_failures_hour) == (
        6,
        6,
        1,
        241,
        0,
    )
    # A late flush from an older bucket does not reset the newer one.
    await store.add_counts([CounterDelta("x:a", 3000, 3000, 1, 9, 1, 239, 1, 0, 0)])
    c = await store.counters("x:a")
    assert c is not None
    assert (c.requests, c.requests_today, c.requests_hour, c.day, c.hour) == (7, 6, 1, 10, 241)


async def test_prune_drops_stale_stranger_counters_and_expired_cache(
    store: SqlClientStore, wall: WallClock
) -> None:
    old = wall.now - 91 * 86_400_000
    await store.add_counts(
        [
            CounterDelta("x:stale", old, old, 1, 1, 1, 1, 1),
            CounterDelta("x:kept", old, old, 1, 1, 1, 1, 1),
            CounterDelta("x:fresh", wall.now, wall.now, 1, 1, 1, 1, 1),
        ]
    )
    await store.run_op("promote_to_contact", "x:kept", actor=OP, tier="operator", reason=None)
    await store.cache_put(CachedVerdict("x:z", "d", False, "no", old, old + 1))
    assert await store.prune() == 2
    assert await store.counters("x:stale") is None
    assert await store.counters("x:kept") is not None
    assert await store.counters("x:fresh") is not None


async def test_T20_changes_since_lists_other_writers(
    store: SqlClientStore,
    backend: tuple[str, str | None],
    tmp_path: Path,
    wall: WallClock,
) -> None:
    start = await store.last_audit_id()
    other = await open_store(backend, tmp_path, wall)
    try:
        await other.run_op("block", "x:a", actor=OP, tier="operator", reason="abuse")
    finally:
        await other.aclose()
    changes = await store.changes_since(start)
    assert [cid for _, cid in changes] == ["x:a"]
    assert await store.changes_since(changes[-1][0]) == []


async def test_T18_apply_rolls_back_every_change_when_one_precondition_fails(
    store: SqlClientStore,
) -> None:
    changes = [
        StateChange("promote_to_contact", reason="r", rule_index=0),
        StateChange("promote_to_whitelist", reason="r", rule_index=1, client_id="x:b"),
    ]
    with pytest.raises(PreconditionFailed) as info:
        await store.apply(changes, "rule:p", "rule", ApplyContext("x:a", policy="p"))
    assert info.value.client_id == "x:b"
    assert (await store.get("x:a")).stored is False
    assert await store.audit() == []


async def test_apply_writes_rule_actor_and_policy(store: SqlClientStore) -> None:
    entries = await store.apply(
        [StateChange("promote_to_contact", reason="invite accepted", rule_index=3)],
        "rule:careful",
        "rule",
        ApplyContext("x:a", policy="careful"),
    )
    assert len(entries) == 1
    e = entries[0]
    assert (e.actor, e.tier, e.policy, e.rule_index, e.from_level, e.to_level) == (
        "rule:careful#3",
        "rule",
        "careful",
        3,
        "stranger",
        "contact",
    )
    assert await store.audit("x:a") == entries


async def test_a_missing_state_dir_is_created_as_a_private_directory(tmp_path: Path) -> None:
    from trust._store import open_sqlite_store

    state = tmp_path / "new" / "state"
    store = await open_sqlite_store(state)
    await store.aclose()
    assert state.is_dir()
    assert (state / "relay.db").is_file()
    assert state.stat().st_mode & 0o777 == 0o700
