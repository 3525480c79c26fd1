"""Regression tests for the confirmed findings of the trust-engine review (one block each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from protocol.events import MessageEvent, SessionSource
from tests.trust.conftest import WallClock
from trust import functions as fn
from trust.cli import main
from trust.engine import TrustConfig, open_trust_engine
from trust.policy import Policy
from trust.store import SqlClientStore, open_sqlite_store

OP = "local:tester"


def msg(
    text: str = "hello",
    uid: str = "1",
    *,
    platform: str = "discord",
    chat_type: str = "dm",
) -> MessageEvent:
    source = SessionSource(platform=platform, user_id=uid, chat_type=chat_type)
    return MessageEvent(text=text, source=source, delivered_via_relay=True)


@pytest.fixture
async def db(tmp_path: Path, wall: WallClock) -> SqlClientStore:
    store = await open_sqlite_store(tmp_path, clock=wall)
    yield store  # type: ignore[misc]
    await store.aclose()


# --- 1. the CLI canonicalises with RELAY_TRUST_CASEFOLD_PLATFORMS ----------------------------


def test_T5_cli_block_uses_the_casefold_setting_and_the_engine_still_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_TRUST_CASEFOLD_PLATFORMS", "matrix")
    assert main(["block", "matrix:Alice", "--reason", "spam", "--state-dir", str(tmp_path)]) == 0
    assert "matrix:alice blocked" in capsys.readouterr().out

    async def engine_sees_the_block() -> tuple[bool, str]:
        store = await open_sqlite_store(tmp_path)
        try:
            config = TrustConfig.from_env(policy="open", store=store)
            async with open_trust_engine(config) as engine:  # T5: no non-canonical id stored
                out = await engine.evaluate(msg(uid="Alice", platform="matrix"))
                return out.decision.allow, out.decision.reason
        finally:
            await store.aclose()

    assert trio.run(engine_sees_the_block) == (False, "blocked")


def test_cli_state_dir_flag_wins_over_RELAY_TRUST_DSN(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_TRUST_DSN", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["promote", "discord:5", "--to", "contact", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("discord:5 promoted")
    assert (tmp_path / "trust.db").exists() or any(tmp_path.iterdir())


# --- 2. the tier comes from the entry point, never from the actor's spelling ---------------

NO_BLOCK = """---
name: nob
fast_rules:
  - {if: is_admin, action: allow}
disable: [block, admin/remove]
default: deny
---
"""


async def test_T67_local_platform_admin_in_chat_is_an_admin_not_the_operator(
    db: SqlClientStore,
) -> None:
    await fn.set_admin(db, "local:alice", by_admin=OP, tier="operator")
    await fn.set_admin(db, "discord:1", by_admin=OP, tier="operator")
    async with open_trust_engine(TrustConfig(policy=Policy.from_text(NO_BLOCK), store=db)) as e:
        out = await e.evaluate(msg("/trust block discord:9 spam", "alice", platform="local"))
        assert out.reply is not None and out.reply.startswith("disabled:")
        assert not (await db.get("discord:9")).blocked
    async with open_trust_engine(TrustConfig(policy="careful", store=db)) as e:
        out = await e.evaluate(msg("/trust admin remove discord:1", "alice", platform="local"))
        assert out.reply is not None and "admin" in out.reply
        out = await e.evaluate(msg("/trust admin remove local:alice", "alice", platform="local"))
        assert out.reply is not None and out.reply.startswith("error:")  # the last admin stays
    assert [c.client_id for c in await db.list_clients(admins=True)] == ["local:alice"]
    rows = await db.audit(None, 10)
    assert {r.tier for r in rows if r.actor == "local:alice"} == {"admin"}
