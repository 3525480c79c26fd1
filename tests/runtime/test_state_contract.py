"""The state interface's contract, run against every store: the SQLite ``StateDB`` (real
files under tmp_path), the PostgreSQL ``PgStateDB`` (the real server, one gateway id per
test; skipped without it unless RELAY_REQUIRE_PG=1) and the in-memory twin the dispatcher
and reply tests use (``dispatch_helpers.MemoryState``).

Scenarios use only :class:`~relay_runtime._state.StateStore` calls (the ones the dispatcher
and the reply layer make); turn end states, which the interface does not read back, are
observed per store by :func:`turn_states`. A store that passes these behaves like the
other for the dispatcher and the reply layer.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Any

import pytest

from relay_runtime._state import (
    FOLLOW_UP_TTL_S,
    OUTBOX_MAX_ATTEMPTS,
    ClaimRequest,
    ClaimStatus,
    InboxRecord,
    OutboxFull,
    OutboxStore,
    PgStateDB,
    StateDB,
    StateError,
    TurnStore,
)
from tests.pg import require_pg
from tests.runtime.dispatch_helpers import MemoryState
from tests.runtime.state_steps import drop_pg_gateways, pg_gateway_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

T0 = 1_700_000_000.0
K1 = ("telegram", "chat1", "m1")
K2 = ("telegram", "chat1", "m2")

pytestmark = pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "twin"]
)


@pytest.fixture(autouse=True)
def _pg_rows_dropped(kind: str) -> Iterator[None]:
    """The PostgreSQL rows a test wrote are deleted after it."""
    if kind != "postgres":
        yield
        return
    require_pg()
    yield
    drop_pg_gateways()


@contextlib.asynccontextmanager
async def open_store(kind: str, tmp_path: Path, **sizes: Any) -> AsyncIterator[Any]:
    """A fresh store of ``kind`` with the given ``outbox_max`` / ``outbox_ttl_s``."""
    if kind == "twin":
        yield MemoryState(**sizes)
        return
    if kind == "postgres":
        dsn = require_pg()
        opened = await PgStateDB.open(
            dsn, pg_gateway_id(tmp_path), now=T0, location="postgres", **sizes
        )
        async with opened as db:
            yield db
        return
    async with await StateDB.open(tmp_path, now=T0, **sizes) as db:
        yield db


async def turn_states(store: Any) -> list[str]:
    """Every kept turn's state, oldest first."""
    if isinstance(store, MemoryState):
        return store.turn_states()
    return [t.state for t in await store.turns()]


async def claim_one(
    store: TurnStore, k_msg: Any, k_buf: str | None, now: float = T0, inbound: str | None = None
) -> tuple[Any, int | None]:
    (result,) = await store.claim_turns([ClaimRequest("s", k_msg, k_buf, inbound)], now)
    await store.flush()
    return result


def _members(protocol: type) -> set[str]:
    return {
        name
        for klass in protocol.__mro__
        if klass in (TurnStore, OutboxStore)
        for name in vars(klass)
        if not name.startswith("_")
    }


async def test_every_store_has_every_call_of_the_interface(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        for name in sorted(_members(TurnStore) | _members(OutboxStore)):
            member = getattr(store, name)
            expected = getattr(TurnStore, name, None) or getattr(OutboxStore, name)
            if inspect.iscoroutinefunction(expected):
                assert inspect.iscoroutinefunction(member), name


async def test_claims_in_one_call_resolve_like_sequential_claims(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        first, first_turn = await claim_one(store, ("discord", "c", "done"), None)
        await store.complete_turn(first.handle, first_turn, "completed", T0)
        results = await store.claim_turns(
            [
                ClaimRequest("s1", K1, "buf-1"),
                ClaimRequest("s1", K1, "buf-2"),  # same K_msg later in the same call
                ClaimRequest("s2", None, None),  # no keys: not deduplicated
                ClaimRequest("s0", ("discord", "c", "done"), "buf-3"),
                ClaimRequest("s3", None, "buf-2"),  # the K_buf the refused request brought
            ],
            T0 + 1,
        )
        await store.flush()
        assert [claim.status for claim, _ in results] == [
            ClaimStatus.NEW,
            ClaimStatus.IN_FLIGHT,
            ClaimStatus.NEW,
            ClaimStatus.COMPLETED,
            ClaimStatus.NEW,
        ]
        assert [turn_id is not None for _, turn_id in results] == [True, False, True, False, True]
        assert results[1][0].handle == results[0][0].handle
        assert results[3][0].handle == first.handle
        assert results[2][0].handle is None
        assert await turn_states(store) == ["completed", "running", "running", "running"]


async def test_a_completed_delivery_is_completed_by_either_key(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        first, turn_id = await claim_one(store, K1, "buf-1")
        await store.complete_turn(first.handle, turn_id, "failed", T0 + 1, "E: x")
        for k_msg, k_buf in ((None, "buf-1"), (K1, "buf-9"), (K1, "buf-1"), (K1, None)):
            again, again_turn = await claim_one(store, k_msg, k_buf, T0 + 2)
            assert again.status is ClaimStatus.COMPLETED
            assert again.handle == first.handle and again_turn is None
        assert (await claim_one(store, K2, "buf-2", T0 + 3))[0].status is ClaimStatus.NEW
        # R29: an id that arrived as a number is the same key as its text.
        await claim_one(store, ("telegram", "42", "12345"), None)
        numeric, _ = await claim_one(store, ("telegram", 42, 12345), None)
        assert numeric.status is ClaimStatus.IN_FLIGHT


async def test_a_written_behind_completion_is_decided_at_once(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        claim, turn_id = await claim_one(store, K1, None)
        await store.complete_turn(claim.handle, turn_id, "completed", T0 + 1, write_behind=True)
        again, _ = await claim_one(store, K1, "buf-1", T0 + 2)
        assert again.status is ClaimStatus.COMPLETED
        await store.flush()
        assert await turn_states(store) == ["completed"]


async def test_a_turn_ends_once(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        claim, turn_id = await claim_one(store, K1, None)
        await store.complete_turn(claim.handle, turn_id, "failed", T0 + 1, "E: x")
        await store.complete_turn(claim.handle, turn_id, "completed", T0 + 2)
        await store.release_turn(claim.handle, turn_id, T0 + 3)  # completed: left alone
        assert await turn_states(store) == ["failed"]
        assert (await claim_one(store, K1, None))[0].status is ClaimStatus.COMPLETED
        with pytest.raises(StateError, match="turn end state must be one of"):
            await store.complete_turn(None, turn_id, "running", T0)  # type: ignore[arg-type]


async def test_release_turn_frees_the_claim_and_records_cancelled(
    kind: str, tmp_path: Path
) -> None:
    async with open_store(kind, tmp_path) as store:
        claim, turn_id = await claim_one(store, K1, "buf-1")
        await store.release_turn(claim.handle, turn_id, T0 + 1)
        assert await turn_states(store) == ["cancelled"]
        replay, replay_turn = await claim_one(store, K1, "buf-1", T0 + 2)
        assert replay.status is ClaimStatus.NEW and replay_turn is not None
        assert replay.handle != claim.handle


async def test_release_unstarted_frees_the_claim_and_forgets_the_turn(
    kind: str, tmp_path: Path
) -> None:
    async with open_store(kind, tmp_path) as store:
        claim, turn_id = await claim_one(store, K1, "buf-1", inbound='{"kept":1}')
        await store.release_unstarted(claim.handle, turn_id)
        assert await turn_states(store) == []
        assert turn_id is not None and await store.inbox_frames([turn_id]) == {}
        assert (await claim_one(store, K1, "buf-1"))[0].status is ClaimStatus.NEW


async def test_the_inbox_keeps_a_frame_until_its_turn_ends(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        results = await store.claim_turns(
            [
                ClaimRequest("s", K1, None, '{"n":1}'),
                ClaimRequest("s", K2, "buf-2"),  # buffered: the connector replays it
                ClaimRequest("s", K1, None, '{"n":1}'),  # IN_FLIGHT: no turn, no frame
            ],
            T0,
        )
        (claim, live), (_, buffered), (_, none) = results
        assert live is not None and buffered is not None and none is None
        # Queued after the records it needs: it sees them without a flush first.
        assert await store.inbox_frames([live, buffered]) == {live: '{"n":1}'}
        await store.complete_turn(claim.handle, live, "completed", T0 + 1)
        assert await store.inbox_frames([live, buffered]) == {}


async def test_a_resumed_delivery_completed_meanwhile_is_not_run(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        claim, turn_id = await claim_one(store, K1, None, inbound="{}")
        assert turn_id is not None
        await store.complete_turn(claim.handle, None, "completed", T0 + 1)
        other, other_turn = await claim_one(store, K2, None, inbound="{}")
        assert other_turn is not None
        await store.release_unstarted(other.handle, None)  # its claim gone, its turn kept
        results = await store.claim_resumed(
            [InboxRecord(turn_id, "s", K1, "{}", 0), InboxRecord(other_turn, "s", K2, "{}", 0)],
            T0 + 2,
        )
        await store.flush()
        assert [r.status for r in results] == [ClaimStatus.COMPLETED, ClaimStatus.NEW]
        assert await turn_states(store) == ["crashed", "running"]
        assert (await claim_one(store, K2, None))[0].status is ClaimStatus.IN_FLIGHT


async def test_take_resumable_hands_nothing_to_a_first_process(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        assert store.take_resumable() == []


# ---------------------------------------------------------------------------- outbox


async def put(store: OutboxStore, text: str, now: float = T0, kind: str = "send") -> int:
    return await store.put("relay", "bot1", f'{{"op":"{kind}"}}', text, kind, now)  # type: ignore[arg-type]


async def test_the_outbox_is_fifo_and_forgets_what_was_delivered(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path) as store:
        ids = [await put(store, f"m{i}", T0 + i) for i in range(4)]
        assert ids == sorted(ids) and len(set(ids)) == 4
        assert [e.request_id for e in await store.peek_batch(T0 + 5, 3)] == ["m0", "m1", "m2"]
        assert await store.delete(ids[0])
        assert not await store.delete(ids[0])
        assert await store.delete_many([ids[1], ids[0], ids[2]]) == [ids[1], ids[2]]
        assert await store.delete_many([]) == []
        assert [e.request_id for e in await store.entries()] == ["m3"]
        assert await store.count() == 1
        (entry,) = await store.entries()
        assert (entry.platform, entry.bot_id, entry.kind, entry.attempts) == (
            "relay",
            "bot1",
            "send",
            0,
        )


async def test_a_full_outbox_refuses_and_never_evicts(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path, outbox_max=2) as store:
        assert store.outbox_max == 2
        ids = [await put(store, "a"), await put(store, "b")]
        with pytest.raises(OutboxFull, match="outbox_max=2"):
            await put(store, "c")
        assert [e.id for e in await store.entries()] == ids
    async with open_store(kind, tmp_path / "zero", outbox_max=0) as store:
        with pytest.raises(OutboxFull):
            await put(store, "x")
        assert await store.count() == 0


async def test_outbox_entries_expire_by_kind(kind: str, tmp_path: Path) -> None:
    async with open_store(kind, tmp_path, outbox_ttl_s=3600) as store:
        send = await put(store, "s")
        follow = await put(store, "f", kind="follow_up")
        at = T0 + FOLLOW_UP_TTL_S
        assert [e.id for e in await store.peek_batch(at, 10)] == [send]
        assert [e.id for e in await store.expire(at)] == [follow]
        assert await store.expire(T0 + 3599) == []
        assert [e.id for e in await store.expire(T0 + 3600)] == [send]
        assert await store.count() == 0
        with pytest.raises(StateError, match="outbox kind must be 'send' or 'follow_up'"):
            await put(store, "x", kind="edit")


async def test_failed_deliveries_are_counted_and_the_last_one_drops_the_entry(
    kind: str, tmp_path: Path
) -> None:
    async with open_store(kind, tmp_path) as store:
        entry_id = await put(store, "m")
        for n in range(1, OUTBOX_MAX_ATTEMPTS):
            attempt = await store.bump_attempts(entry_id)
            assert (attempt.attempts, attempt.dropped) == (n, False)
        last = await store.bump_attempts(entry_id)
        assert (last.attempts, last.dropped) == (OUTBOX_MAX_ATTEMPTS, True)
        assert await store.count() == 0
        gone = await store.bump_attempts(entry_id)
        assert (gone.attempts, gone.dropped) == (0, False)
