"""The fixed operations (TR §8) through the Python API, on both backends."""

from __future__ import annotations

import pytest

from trust._ops import TrustOps
from trust._policy import Policy, load_preset
from trust._records import TrustOpError
from trust._store import SqlClientStore

OP = "local:alice"


async def test_T67_tier_comes_from_the_caller_not_the_actor_spelling(
    store: SqlClientStore,
) -> None:
    policy = Policy.from_text("---\nname: locked\ndisable: [block]\ndefault: deny\n---\n")
    ops = TrustOps(store, policy)
    await ops.set_admin("local:bob", OP, tier="operator")
    with pytest.raises(TrustOpError) as info:  # an admin on platform 'local' is an admin
        await ops.block("discord:2", "spam", "local:bob")
    assert info.value.code == "disabled"
    with pytest.raises(TrustOpError) as info:
        await ops.block("discord:2", "spam", "import:/x")  # not an admin at all
    assert info.value.code in ("disabled", "not_authorized")
    result = await ops.block("discord:2", "spam", OP, tier="operator")
    assert result.message.startswith("discord:2 blocked")


@pytest.mark.parametrize("preset", ["open", "careful", "strict"])
async def test_T64_every_operation_exists_on_the_api_under_every_preset(
    store: SqlClientStore, preset: str
) -> None:
    ops = TrustOps(store, load_preset(preset))
    await ops.set_admin("discord:1", OP, tier="operator")
    admin = "discord:1"
    results = [
        await ops.promote("discord:2", "contact", admin),
        await ops.promote("discord:2", "whitelist", admin),
        await ops.demote("discord:2", "contact", admin),
        await ops.demote("discord:2", "stranger", admin),
        await ops.block("discord:2", "spam", admin),
        await ops.unblock("discord:2", admin),
        await ops.set_admin("discord:2", admin),
        await ops.remove_admin("discord:2", admin),
        await ops.level("discord:2", admin),
    ]
    assert all(r.message for r in results)
    audit, rows = await ops.audit("discord:2", admin)
    assert len(rows) == 8 and audit.message.startswith(f"#{rows[0].id} remove_admin discord:2")
    created = await ops.create_invite(OP, tier="operator")
    assert [i.invite_id for i in await ops.list_invites()] == [created.invite_id]
    await ops.revoke_invite(created.invite_id, OP, tier="operator")
    await ops.revert(rows[0].id, OP, tier="operator")
    assert (await store.get("discord:2")).is_admin


async def test_T65_non_admin_api_calls_are_refused_and_audited(store: SqlClientStore) -> None:
    ops = TrustOps(store, load_preset("careful"))
    for call in (
        ops.set_admin("discord:5", "discord:4"),
        ops.block("discord:5", "spam", "discord:4"),
        ops.promote("discord:5", "contact", "discord:4"),
        ops.level("discord:5", "discord:4"),
        ops.create_invite("discord:4"),
    ):
        with pytest.raises(TrustOpError) as info:
            await call
        assert info.value.code == "not_authorized"
    actions = sorted(r.action for r in await store.audit())
    assert actions == [
        "refused:block",
        "refused:invite/create",
        "refused:level",
        "refused:promote_to_contact",
        "refused:set_admin",
    ]
    assert await store.list_clients() == []


async def test_T67_disable_binds_admin_api_not_the_operator(store: SqlClientStore) -> None:
    policy = Policy.from_text(
        "---\nname: locked\ndisable: [block, admin/set]\ndefault: deny\n---\n"
    )
    ops = TrustOps(store, policy)
    await ops.set_admin("discord:1", OP, tier="operator")  # the operator is not bound
    for call in (
        ops.block("discord:2", "spam", "discord:1"),
        ops.set_admin("discord:3", "discord:1"),
    ):
        with pytest.raises(TrustOpError) as info:
            await call
        assert info.value.code == "disabled"
        assert info.value.message.startswith("disabled: '")
        assert info.value.message.endswith("' is disabled by policy 'locked'")
    await ops.promote("discord:2", "contact", "discord:1")  # not disabled


async def test_typed_ids_and_levels_are_checked(store: SqlClientStore) -> None:
    ops = TrustOps(store)
    for call, code in (
        (ops.block("nocolon", "x", OP, tier="operator"), "invalid_client_id"),
        (ops.block("anonymous", "x", OP, tier="operator"), "anonymous"),
        (ops.promote("discord:1", "stranger", OP, tier="operator"), "invalid_level"),
        (ops.demote("discord:1", "whitelist", OP, tier="operator"), "invalid_level"),
        (ops.promote("discord:1", "boss", OP, tier="operator"), "invalid_level"),
        (ops.block("discord:abc", "x", OP, tier="operator"), "invalid_client_id"),
    ):
        with pytest.raises(TrustOpError) as info:
            await call
        assert info.value.code == code
    assert await store.list_clients() == []
    result = await ops.promote("Discord: 007", "contact", OP, tier="operator")
    assert result.message.startswith("discord:7 promoted: stranger → contact")
