"""Store invites (TR §6) on both backends."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import trio

from tests.trust.conftest import WallClock, open_store
from trust import _functions as fn
from trust._invites import check_invite, create_invite, generate_code, revoke_invite
from trust._model import StateChange
from trust._records import PreconditionFailed, TrustOpError
from trust._store import ApplyContext, SqlClientStore
from trust._store.tx import Tx

OP = "local:tester"
CODE_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}")


def test_generated_codes_are_crockford_80_bits() -> None:
    codes = {generate_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(CODE_RE.fullmatch(c) for c in codes)


async def _dump(store: SqlClientStore) -> str:
    def everything(tx: Tx) -> str:
        tables = ("trust_invites", "trust_audit", "trust_invite_uses")
        return "\n".join(repr(tx.rows(f"SELECT * FROM {table}")) for table in tables)

    return await store.transaction(everything, write=False)


async def test_T49_invites_are_stored_as_digests_and_never_listed(store: SqlClientStore) -> None:
    created = await create_invite(store, by=OP, max_uses=3, note="for bob")
    canonical = created.code.replace("-", "")
    assert CODE_RE.fullmatch(created.code)
    (invite,) = await store.list_invites()
    assert invite.code_sha256 == hashlib.sha256(canonical.encode()).digest()
    dumped = await _dump(store)
    assert canonical not in dumped and created.code not in dumped
    assert created.code not in repr(created) and created.code not in repr(invite)
    (row,) = await store.audit()
    assert (row.action, row.client_id, row.invite_id) == ("invite_create", None, invite.invite_id)


async def test_check_classifies_codes(store: SqlClientStore, wall: WallClock) -> None:
    created = await create_invite(store, by=OP, expires_in="1h")
    # Typed codes are canonicalised: lower case, spaces, no dashes.
    typed = created.code.lower().replace("-", " ")
    assert (await check_invite(store, typed)).ok
    assert (await check_invite(store, "AAAA-BBBB-CCCC-DDDD")).reason == "unknown"
    assert (await check_invite(store, None)).reason == "missing code"
    wall.advance(3600)
    assert (await check_invite(store, created.code)).reason == "expired"
    other = await create_invite(store, by=OP, expires_in="never")
    await revoke_invite(store, other.invite_id, by=OP)
    assert (await check_invite(store, other.code)).reason == "revoked"
    with pytest.raises(TrustOpError) as info:
        await revoke_invite(store, other.invite_id, by=OP)
    assert info.value.code == "not_applicable"


async def test_create_validation(store: SqlClientStore) -> None:
    for kwargs, code in [
        ({"max_uses": 0}, "invalid_max_uses"),
        ({"max_uses": 10_001}, "invalid_max_uses"),
        ({"expires_in": "366d"}, "invalid_expiry"),
        ({"expires_in": "0s"}, "invalid_expiry"),
        ({"expires_in": "1w"}, "invalid_expiry"),
        ({"code": "short-code"}, "invalid_code"),
    ]:
        with pytest.raises(TrustOpError) as info:
            await create_invite(store, by=OP, **kwargs)  # type: ignore[arg-type]
        assert info.value.code == code
        assert "short-code" not in str(info.value)
    custom = await create_invite(store, by=OP, code="welcome-friends-2026")
    assert (await check_invite(store, "WELCOMEFRIENDS2026")).invite_id == custom.invite_id
    with pytest.raises(TrustOpError):
        await create_invite(store, by=OP, code="Welcome Friends 2026")
    with pytest.raises(TrustOpError) as info:
        await create_invite(store, by="x:nobody", tier="admin")
    assert info.value.code == "not_authorized"


async def test_consumption_is_guarded_and_recorded(store: SqlClientStore) -> None:
    created = await create_invite(store, by=OP, max_uses=1)
    change = StateChange("promote_to_contact", invite_id=created.invite_id, rule_index=3)
    (entry,) = await store.apply([change], "rule:p", "rule", ApplyContext("x:a", policy="p"))
    assert entry.invite_id == created.invite_id
    (invite,) = await store.list_invites()
    assert invite.uses == 1
    assert (await check_invite(store, created.code)).reason == "exhausted"
    with pytest.raises(PreconditionFailed):
        await store.apply([change], "rule:p", "rule", ApplyContext("x:b", policy="p"))
    assert (await store.get("x:b")).stored is False


async def test_T51_single_use_invite_raced_by_two_strangers_admits_one(
    store: SqlClientStore, backend: tuple[str, str | None], tmp_path: Path, wall: WallClock
) -> None:
    created = await create_invite(store, by=OP, max_uses=1)
    other = await open_store(backend, tmp_path, wall)
    results: dict[str, str] = {}

    async def redeem(handle: SqlClientStore, cid: str) -> None:
        check = await check_invite(handle, created.code)
        if not check.ok:  # the race was already lost before the lookup
            assert check.reason == "exhausted"
            results[cid] = "refused"
            return
        try:
            await handle.apply(
                [StateChange("promote_to_contact", invite_id=check.invite_id, rule_index=3)],
                "rule:careful",
                "rule",
                ApplyContext(cid, policy="careful"),
            )
            results[cid] = "admitted"
        except PreconditionFailed:
            results[cid] = "refused"

    try:
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(redeem, store if i % 2 else other, f"x:s{i}")
    finally:
        await other.aclose()
    assert sorted(results.values()) == ["admitted"] + ["refused"] * 5
    (invite,) = await store.list_invites()
    assert invite.uses == 1
    contacts = await store.list_clients()
    assert len(contacts) == 1


async def test_policy_codes_consume_nothing(store: SqlClientStore) -> None:
    change = StateChange("promote_to_contact", invite_id="policy:legacy#0", rule_index=0)
    (entry,) = await store.apply([change], "rule:legacy", "rule", ApplyContext("x:a"))
    assert entry.invite_id == "policy:legacy#0"
    await fn.demote_to_stranger(store, "x:a", actor=OP, tier="operator")
    await store.apply([change], "rule:legacy", "rule", ApplyContext("x:a"))
