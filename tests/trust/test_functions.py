"""The atomic functions of TR §2 on both backends: preconditions, audit, revert, races."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.trust.conftest import WallClock, open_store
from trust import _functions as fn
from trust._model import Level, StateChange
from trust._records import AuditEntry, PreconditionFailed, TrustOpError
from trust._store import ApplyContext, SqlClientStore

OP = "local:tester"


async def _state(store: SqlClientStore, cid: str) -> tuple[str, bool, bool]:
    rec = await store.get(cid)
    return rec.level.value, rec.blocked, rec.is_admin


async def _make(store: SqlClientStore, cid: str, level: str) -> None:
    if level in ("contact", "whitelist"):
        await fn.promote_to_contact(store, cid, actor=OP, tier="operator")
    if level == "whitelist":
        await fn.promote_to_whitelist(store, cid, actor=OP, tier="operator")


async def test_T11_blocked_whitelisted_client_is_blocked_then_whitelisted_again(
    store: SqlClientStore,
) -> None:
    await _make(store, "x:a", "whitelist")
    await fn.block(store, "x:a", "abuse", actor=OP, tier="operator")
    rec = await store.get("x:a")
    assert rec.effective_level == "blocked"
    assert rec.level is Level.WHITELIST
    assert (rec.blocked_reason, rec.blocked_by) == ("abuse", OP)
    await fn.unblock(store, "x:a", actor=OP, tier="operator")
    assert (await store.get("x:a")).effective_level == "whitelist"


async def test_T12_T16_rules_and_agent_cannot_touch_admin_or_unblock(
    store: SqlClientStore,
) -> None:
    await fn.block(store, "x:b", "spam", actor=OP, tier="operator")
    for tier in ("rule", "agent"):
        for op in ("set_admin", "remove_admin", "unblock"):
            with pytest.raises(TrustOpError) as info:
                await store.run_op(op, "x:b", actor=f"{tier}:x", tier=tier, reason=None)  # type: ignore[arg-type]
            assert info.value.code == "not_authorized"
    assert await _state(store, "x:b") == ("stranger", True, False)
    # An invite promotion through apply never sets the admin flag.
    await store.apply(
        [StateChange("promote_to_contact", rule_index=0)],
        "rule:p",
        "rule",
        ApplyContext("x:c", policy="p"),
    )
    assert await _state(store, "x:c") == ("contact", False, False)


REFUSALS = [
    # (op, starting state, expected code)
    ("promote_to_contact", "contact", "not_applicable"),
    ("promote_to_contact", "blocked", "blocked"),
    ("promote_to_whitelist", "stranger", "not_applicable"),
    ("promote_to_whitelist", "blocked-contact", "blocked"),
    ("demote_to_contact", "contact", "not_applicable"),
    ("demote_to_contact", "blocked-whitelist", "blocked"),
    ("demote_to_stranger", "stranger", "not_applicable"),
    ("demote_to_stranger", "blocked-contact", "blocked"),
    ("block", "blocked", "not_applicable"),
    ("block", "admin", "is_admin"),
    ("unblock", "stranger", "not_applicable"),
    ("set_admin", "admin", "not_applicable"),
    ("set_admin", "blocked", "blocked"),
    ("remove_admin", "stranger", "not_applicable"),
]


@pytest.mark.parametrize(("op", "start", "code"), REFUSALS)
async def test_T14_inapplicable_cases_refused_with_their_code(
    store: SqlClientStore, op: str, start: str, code: str
) -> None:
    cid = "x:t"
    await fn.set_admin(store, "x:other-admin", by_admin=OP, tier="operator")
    level = start.removeprefix("blocked-")
    level = level if level in ("contact", "whitelist") else "stranger"
    await _make(store, cid, level)
    if start.startswith("blocked"):
        await fn.block(store, cid, "spam", actor=OP, tier="operator")
    if start == "admin":
        await fn.set_admin(store, cid, by_admin=OP, tier="operator")
    before = (await store.get(cid), len(await store.audit(limit=1000)))
    with pytest.raises(TrustOpError) as info:
        await store.run_op(fn.as_atomic_op(op), cid, actor=OP, tier="operator", reason="why")
    assert info.value.code == code
    assert (await store.get(cid), len(await store.audit(limit=1000))) == before


async def test_T14_block_reason_must_be_1_to_500_chars(store: SqlClientStore) -> None:
    for reason in ("", "   ", "x" * 501):
        with pytest.raises(TrustOpError) as info:
            await fn.block(store, "x:a", reason, actor=OP, tier="operator")
        assert info.value.code == "invalid_reason"
    assert (await store.get("x:a")).stored is False


async def test_T9_anonymous_is_refused(store: SqlClientStore) -> None:
    with pytest.raises(TrustOpError) as info:
        await fn.promote_to_contact(store, "anonymous", actor=OP, tier="operator")
    assert info.value.code == "anonymous"
    assert await store.list_clients() == []


async def test_T15_no_level_is_skipped(store: SqlClientStore) -> None:
    with pytest.raises(TrustOpError) as info:
        await fn.promote_to_whitelist(store, "x:s", actor=OP, tier="operator")
    assert (info.value.code, info.value.message) == (
        "not_applicable",
        "x:s is a stranger; must be a contact first",
    )
    await _make(store, "x:w", "whitelist")
    with pytest.raises(TrustOpError) as info:
        await fn.demote_to_stranger(store, "x:w", actor=OP, tier="operator")
    assert info.value.code == "not_applicable"
    assert await _state(store, "x:s") == ("stranger", False, False)
    assert await _state(store, "x:w") == ("whitelist", False, False)


async def test_T22_each_atomic_function_writes_one_complete_audit_row(
    store: SqlClientStore, wall: WallClock
) -> None:
    await fn.set_admin(store, "x:boss", by_admin=OP, tier="operator")
    steps = [
        ("promote_to_contact", "stranger", "contact", False, False),
        ("promote_to_whitelist", "contact", "whitelist", False, False),
        ("demote_to_contact", "whitelist", "contact", False, False),
        ("block", "contact", "contact+blocked", False, False),
        ("unblock", "contact+blocked", "contact", False, False),
        ("demote_to_stranger", "contact", "stranger", False, False),
        ("set_admin", "stranger", "stranger", False, True),
        ("remove_admin", "stranger", "stranger", True, False),
    ]
    for op, from_level, to_level, from_admin, to_admin in steps:
        wall.advance(1)
        before = len(await store.audit(limit=1000))
        result = await store.run_op(op, "x:a", actor="x:boss", tier="admin", reason="because")  # type: ignore[arg-type]
        rows = await store.audit(limit=1000)
        assert len(rows) == before + 1
        row = rows[0]
        assert result.audit_id == row.id
        assert f"(audit #{row.id})" in result.message
        expected = AuditEntry(
            id=row.id,
            at=wall.now,
            client_id="x:a",
            action=op,
            from_level=from_level,
            to_level=to_level,
            from_admin=from_admin,
            to_admin=to_admin,
            actor="x:boss",
            tier="admin",
            reason="because",
        )
        assert row == expected


async def test_T13_concurrent_promotions_one_succeeds_one_audit_row(
    store: SqlClientStore, backend: tuple[str, str | None], tmp_path: Path, wall: WallClock
) -> None:
    other = await open_store(backend, tmp_path, wall)
    outcomes: list[str] = []

    async def promote(handle: SqlClientStore) -> None:
        try:
            await fn.promote_to_contact(handle, "x:racer", actor=OP, tier="operator")
            outcomes.append("ok")
        except TrustOpError as exc:
            outcomes.append(exc.code)

    try:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(promote, store if i % 2 else other)
    finally:
        await other.aclose()
    assert sorted(outcomes) == ["not_applicable"] * 7 + ["ok"]
    rows = await store.audit("x:racer")
    assert [r.action for r in rows] == ["promote_to_contact"]


async def test_T13_concurrent_apply_of_one_promotion_second_gets_precondition_failed(
    store: SqlClientStore, backend: tuple[str, str | None], tmp_path: Path, wall: WallClock
) -> None:
    other = await open_store(backend, tmp_path, wall)
    results: list[str] = []

    async def apply(handle: SqlClientStore) -> None:
        try:
            await handle.apply(
                [StateChange("promote_to_contact", rule_index=0)],
                "rule:p",
                "rule",
                ApplyContext("x:racer", policy="p"),
            )
            results.append("ok")
        except PreconditionFailed:
            results.append("precondition")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(apply, store)
            nursery.start_soon(apply, other)
    finally:
        await other.aclose()
    assert sorted(results) == ["ok", "precondition"]
    assert len(await store.audit("x:racer")) == 1


async def test_T65_non_admin_set_admin_refused_and_audited(store: SqlClientStore) -> None:
    with pytest.raises(TrustOpError) as info:
        await fn.set_admin(store, "x:me", by_admin="x:me", tier="admin")
    assert info.value.code == "not_authorized"
    assert not (await store.get("x:me")).is_admin
    (row,) = await store.audit()
    assert (row.action, row.actor, row.client_id, row.tier) == (
        "refused:set_admin",
        "x:me",
        "x:me",
        "admin",
    )


async def test_T69_set_admin_records_by_admin_and_last_admin_cannot_remove_itself(
    store: SqlClientStore,
) -> None:
    await fn.set_admin(store, "x:root", by_admin=OP, tier="operator")
    result = await fn.set_admin(store, "x:second", by_admin="x:root", tier="admin")
    assert result.client is not None
    assert result.client.admin_by == "x:root"
    assert (await store.audit("x:second"))[0].actor == "x:root"
    await fn.remove_admin(store, "x:second", by_admin="x:root", tier="admin")
    with pytest.raises(TrustOpError) as info:
        await fn.remove_admin(store, "x:root", by_admin="x:root", tier="admin")
    assert info.value.code == "last_admin"
    assert (await store.get("x:root")).is_admin
    # The local operator may remove the last admin.
    await fn.remove_admin(store, "x:root", by_admin=OP, tier="operator")
    assert not (await store.get("x:root")).is_admin


async def test_T17_bootstrap_admins_only_while_no_admin(store: SqlClientStore) -> None:
    entries = await store.bootstrap_admins(["x:a", "x:b"])
    assert [(e.client_id, e.actor, e.tier, e.action) for e in entries] == [
        ("x:a", "config", "operator", "set_admin"),
        ("x:b", "config", "operator", "set_admin"),
    ]
    assert (await store.get("x:a")).admin_by == "config"
    assert await store.bootstrap_admins(["x:c"]) == []
    assert not (await store.get("x:c")).is_admin


async def test_T24_revert_restores_from_state_then_conflicts_after_a_later_change(
    store: SqlClientStore,
) -> None:
    first = await fn.promote_to_contact(store, "x:a", actor=OP, tier="operator")
    assert first.audit_id is not None
    undone = await store.revert(first.audit_id, actor=OP, tier="operator")
    assert await _state(store, "x:a") == ("stranger", False, False)
    rows = await store.audit("x:a")
    assert rows[0].reverts == first.audit_id
    assert rows[1].reverted_by == undone.audit_id
    with pytest.raises(TrustOpError) as info:
        await store.revert(first.audit_id, actor=OP, tier="operator")
    assert info.value.code == "not_applicable"

    blocked = await fn.block(store, "x:b", "spam", actor=OP, tier="operator")
    await fn.unblock(store, "x:b", actor=OP, tier="operator")
    await fn.promote_to_contact(store, "x:b", actor=OP, tier="operator")
    assert blocked.audit_id is not None
    with pytest.raises(TrustOpError) as info:
        await store.revert(blocked.audit_id, actor=OP, tier="operator")
    assert info.value.code == "conflict"
    assert await _state(store, "x:b") == ("contact", False, False)


async def test_T24_reverting_an_unblock_restores_the_original_reason(
    store: SqlClientStore,
) -> None:
    await fn.block(store, "x:b", "original reason", actor=OP, tier="operator")
    unblocked = await fn.unblock(store, "x:b", actor=OP, tier="operator")
    assert unblocked.audit_id is not None
    await store.revert(unblocked.audit_id, actor=OP, tier="operator")
    rec = await store.get("x:b")
    assert (rec.blocked, rec.blocked_reason) == (True, "original reason")


async def test_revert_refuses_refusal_rows_and_needs_authority(store: SqlClientStore) -> None:
    with pytest.raises(TrustOpError):
        await fn.set_admin(store, "x:me", by_admin="x:me", tier="admin")
    (refusal,) = await store.audit()
    with pytest.raises(TrustOpError) as info:
        await store.revert(refusal.id, actor=OP, tier="operator")
    assert info.value.code == "not_applicable"
    promoted = await fn.promote_to_contact(store, "x:a", actor=OP, tier="operator")
    assert promoted.audit_id is not None
    with pytest.raises(TrustOpError) as info:
        await store.revert(promoted.audit_id, actor="x:nobody", tier="admin")
    assert info.value.code == "not_authorized"
    assert await _state(store, "x:a") == ("contact", False, False)


async def test_T25_after_reverting_an_agent_promotion_the_agent_cannot_promote(
    store: SqlClientStore,
) -> None:
    (entry,) = await store.apply(
        [StateChange("promote_to_contact", reason="seems nice")],
        "agent:m",
        "agent",
        ApplyContext("x:a", policy="careful"),
    )
    assert (entry.tier, entry.actor) == ("agent", "agent:m")
    await store.revert(entry.id, actor=OP, tier="operator")
    rec = await store.get("x:a")
    assert (rec.level, rec.agent_may_promote) == (Level.STRANGER, False)
    with pytest.raises(PreconditionFailed):
        await store.apply(
            [StateChange("promote_to_contact", reason="again")],
            "agent:m",
            "agent",
            ApplyContext("x:a", policy="careful"),
        )
    # A human promotion gives the agent its say back.
    await fn.promote_to_contact(store, "x:a", actor=OP, tier="operator")
    assert (await store.get("x:a")).agent_may_promote


async def test_human_demote_to_stranger_clears_agent_may_promote(store: SqlClientStore) -> None:
    await _make(store, "x:a", "contact")
    await fn.demote_to_stranger(store, "x:a", actor=OP, tier="operator")
    assert not (await store.get("x:a")).agent_may_promote


async def test_T23_reason_control_characters_removed_and_capped() -> None:
    assert fn.clean_reason("a\x00b\x1b[31mc\n") == "ab[31mc"
    assert fn.clean_reason("y" * 900) == "y" * 500


async def test_agent_block_with_overlong_reason_is_cut_not_refused(
    store: SqlClientStore,
) -> None:
    await store.apply(
        [StateChange("block", reason="x" * 900)],
        "agent:m",
        "agent",
        ApplyContext("x:a", policy="careful"),
    )
    rec = await store.get("x:a")
    assert rec.blocked
    assert rec.blocked_reason == "x" * 500
