"""Regression tests for the confirmed findings of the trust-engine review (one block each)."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from protocol import MessageEvent, SessionSource
from tests.trust.conftest import WallClock
from trust import TrustConfig, decide, open_trust_engine
from trust import _functions as fn
from trust._cli import main
from trust._model import AgentVerdict, ClientState, Decision, Level, RequestFacts, StateChange
from trust._ops import TrustOps
from trust._policy import Policy, TrustConfigError
from trust._records import StoreError, TrustOpError
from trust._store import SqlClientStore, open_sqlite_store
from trust._store.sqlite import DB_FILENAME, SqliteBackend

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
async def db(tmp_path: Path, wall: WallClock) -> AsyncIterator[SqlClientStore]:
    store = await open_sqlite_store(tmp_path, clock=wall)
    yield store
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


def test_T5_import_co_uses_the_casefold_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_TRUST_CASEFOLD_PLATFORMS", "matrix")
    co = tmp_path / "co"
    co.mkdir()
    (co / "contacts.txt").write_text("Alice\n")
    state = tmp_path / "state"
    argv = ["import-co", str(co), "--platform", "matrix", "--state-dir", str(state), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == ["matrix:alice"]


def test_cli_state_dir_flag_wins_over_RELAY_TRUST_DSN(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_TRUST_DSN", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["promote", "discord:5", "--to", "contact", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("discord:5 promoted")
    assert (tmp_path / "relay.db").exists()


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


# --- 3. the audit tail sees a PostgreSQL commit that lands below ids already seen ---------


@pytest.mark.postgres
async def test_T20_late_commit_below_seen_ids_is_tailed_on_postgres(
    pg_schema: str, wall: WallClock
) -> None:
    import psycopg

    from tests.trust.conftest import PG_DSN
    from trust._store import core, open_postgres_store
    from trust._store.postgres import PgTx

    store = await open_postgres_store(PG_DSN, schema=pg_schema, clock=wall)
    slow = psycopg.connect(PG_DSN, autocommit=True, options=f"-c search_path={pg_schema}")
    try:
        config = TrustConfig(policy="open", store=store, tail_interval_s=3600)
        async with open_trust_engine(config) as engine:
            assert (await engine.evaluate(msg(uid="42"))).decision.allow  # view cached
            with slow.transaction():  # instance A's block: id assigned now, committed last
                late = core.run_op(
                    PgTx(slow),
                    "block",
                    "discord:42",
                    actor=OP,
                    tier="operator",
                    reason="abuse",
                    now_ms=wall(),
                )
                early = await fn.promote_to_contact(store, "discord:7", actor=OP, tier="operator")
                assert late.audit_id is not None and early.audit_id is not None
                assert late.audit_id < early.audit_id
                await engine.tail()  # sees the later id first
                assert (await engine.evaluate(msg(uid="42"))).decision.allow
            await engine.tail()
            out = await engine.evaluate(msg(uid="42"))
            assert (out.decision.allow, out.decision.reason) == (False, "blocked")
            await engine.tail()  # the filled gap is not tracked any more
            assert engine.snapshot().audit_gaps == frozenset()
    finally:
        slow.close()
        await store.aclose()


@pytest.mark.postgres
async def test_T20_transaction_in_flight_at_start_is_tailed_on_postgres(
    pg_schema: str, wall: WallClock
) -> None:
    import psycopg

    from tests.trust.conftest import PG_DSN
    from trust._store import core, open_postgres_store
    from trust._store.postgres import PgTx

    store = await open_postgres_store(PG_DSN, schema=pg_schema, clock=wall)
    # Not autocommit: the block below stays one open transaction until commit().
    slow = psycopg.connect(PG_DSN, options=f"-c search_path={pg_schema}")
    try:
        core.run_op(
            PgTx(slow), "block", "discord:42", actor=OP, tier="operator", reason="abuse",
            now_ms=wall(),
        )  # fmt: skip
        await fn.promote_to_contact(store, "discord:7", actor=OP, tier="operator")
        config = TrustConfig(policy="open", store=store, tail_interval_s=3600)
        async with open_trust_engine(config) as engine:
            assert (await engine.evaluate(msg(uid="42"))).decision.allow  # view cached
            slow.commit()
            await engine.tail()
            out = await engine.evaluate(msg(uid="42"))
            assert (out.decision.allow, out.decision.reason) == (False, "blocked")
    finally:
        slow.close()
        await store.aclose()


async def test_tail_gives_up_on_a_gap_that_never_fills(
    db: SqlClientStore, mock_clock: trio.testing.MockClock
) -> None:
    async with open_trust_engine(TrustConfig(policy="open", store=db, tail_interval_s=3600)) as e:
        await fn.promote_to_contact(db, "discord:1", actor=OP, tier="operator")
        await db.transaction(  # a row after a hole: ids 2-4 never commit (rolled back elsewhere)
            lambda tx: tx.run(
                "INSERT INTO trust_audit (id, at, client_id, action, actor, tier) "
                "VALUES (5, 0, 'discord:2', 'block', 'x', 'operator')"
            )
        )
        await e.tail()
        tail = e.snapshot()
        assert (tail.last_audit_id, tail.audit_gaps) == (5, {2, 3, 4})
        mock_clock.jump(29)
        await e.tail()
        assert e.snapshot().audit_gaps == {2, 3, 4}
        mock_clock.jump(2)
        await e.tail()
        assert e.snapshot().audit_gaps == frozenset()


# --- 4. a view read while the tail passed its change is not cached --------------------------


class SlowView(SqlClientStore):
    """A store whose ``view`` result arrives only when the test says so."""

    release: trio.Event

    async def view(self, primary: str, secondary: str | None) -> Any:
        got = await super().view(primary, secondary)
        await self.release.wait()
        return got


async def test_T20_view_read_racing_the_tail_is_used_once_not_cached(
    tmp_path: Path, wall: WallClock
) -> None:
    base = await open_sqlite_store(tmp_path, clock=wall)
    cli = await open_sqlite_store(tmp_path, clock=wall)
    store = SlowView(base.backend, base.clock)
    store.release = trio.Event()
    try:
        config = TrustConfig(policy="open", store=store, tail_interval_s=3600)
        async with open_trust_engine(config) as engine:
            first: list[bool] = []

            async def evaluate() -> None:
                first.append((await engine.evaluate(msg(uid="42"))).decision.allow)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(evaluate)
                await trio.testing.wait_all_tasks_blocked()
                await fn.block(cli, "discord:42", "abuse", actor=OP, tier="operator")
                await engine.tail()  # the block is seen while the read is in flight
                store.release.set()
            assert first == [True]  # that message was read before the block
            out = await engine.evaluate(msg(uid="42"))
            assert (out.decision.allow, out.decision.reason) == (False, "blocked")
    finally:
        await cli.aclose()
        await base.aclose()


# --- 5. PostgreSQL connections that died are replaced ---------------------------------------


@pytest.mark.postgres
async def test_postgres_store_survives_pg_terminate_backend(
    pg_schema: str, wall: WallClock
) -> None:
    import psycopg

    from tests.trust.conftest import PG_DSN
    from trust._store import open_postgres_store
    from trust._store.postgres import PostgresBackend

    store = await open_postgres_store(PG_DSN, schema=pg_schema, clock=wall)
    try:
        backend = store.backend
        assert isinstance(backend, PostgresBackend)
        before = set(backend.server_pids())
        with psycopg.connect(PG_DSN, autocommit=True) as admin:  # a restart, as seen by clients
            for pid in before:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for n in range(3):
            await store.get(f"discord:{n}")
        result = await fn.block(store, "discord:3", "spam", actor=OP, tier="operator")
        assert result.audit_id is not None
        assert (await store.get("discord:3")).blocked
        assert set(backend.server_pids()) != before  # replaced, not reused
    finally:
        await store.aclose()


# --- 6. the agent-promotion budget holds under concurrency ----------------------------------

ASKER = """---
name: asker
default: use_agent
cache: 0
agent_tools: [promote_to_contact]
---
Judge.
"""


class GatedPromoter:
    """A trust agent that answers 'promote' only once ``crowd`` consultations are waiting."""

    def __init__(self, crowd: int) -> None:
        self.crowd = crowd
        self.waiting = 0
        self.gate = trio.Event()

    async def consult(self, request: Any) -> AgentVerdict:
        self.waiting += 1
        if self.waiting >= self.crowd:
            self.gate.set()
        await self.gate.wait()
        change = StateChange("promote_to_contact", reason="seems fine")
        return AgentVerdict(allow=True, reason="ok", staged=(change,), model="m")


async def test_T62_agent_promotions_per_hour_hold_for_concurrent_decisions(
    store: SqlClientStore,
) -> None:
    agent = GatedPromoter(crowd=4)
    config = TrustConfig(
        policy=Policy.from_text(ASKER), store=store, agent=agent, agent_promotions_per_hour=1
    )
    async with open_trust_engine(config) as engine:
        outcomes: list[bool] = []

        async def send(uid: str) -> None:
            outcomes.append((await engine.evaluate(msg(uid=uid))).decision.allow)

        async with trio.open_nursery() as nursery:
            for uid in ("1", "2", "3", "4"):
                nursery.start_soon(send, uid)
        assert outcomes == [True] * 4  # the verdict allows; only the promotion is dropped
        levels = [(await store.get(f"discord:{u}")).level for u in ("1", "2", "3", "4")]
        assert sorted(levels, key=lambda lv: lv.rank) == [Level.STRANGER] * 3 + [Level.CONTACT]
        assert await store.count_audit("promote_to_contact", "agent", 0) == 1
        assert engine.stats().agent_promotions_dropped == 3


# --- 9. a rule-staged block is a deny; each change keeps its own actor -----------------------

BLOCK_THEN_AGENT = """---
name: p
fast_rules:
  - {if: 'requests > 2', action: block, on_success: continue, reason: flood}
default: use_agent
cache: 0
---
Judge.
"""

PROMOTE_THEN_AGENT = """---
name: p
fast_rules:
  - {if: is_stranger, action: promote_to_contact, on_success: continue, reason: welcome}
default: use_agent
cache: 0
---
Judge.
"""


class Allower:
    calls = 0

    async def consult(self, request: Any) -> AgentVerdict:
        self.calls += 1
        return AgentVerdict(allow=True, reason="looks fine", model="m")


async def test_staged_block_denies_without_consulting_the_agent(db: SqlClientStore) -> None:
    agent = Allower()
    config = TrustConfig(policy=Policy.from_text(BLOCK_THEN_AGENT), store=db, agent=agent)
    async with open_trust_engine(config) as engine:
        for _ in range(2):
            assert (await engine.evaluate(msg())).decision.allow
        out = await engine.evaluate(msg())
        assert (out.decision.allow, out.decision.reason, out.decision.tier) == (
            False,
            "flood",
            "rule",
        )
        assert agent.calls == 2
        assert (await db.get("discord:1")).blocked


async def test_T22_rule_staged_change_in_an_agent_decision_is_the_rules(
    db: SqlClientStore,
) -> None:
    config = TrustConfig(policy=Policy.from_text(PROMOTE_THEN_AGENT), store=db, agent=Allower())
    async with open_trust_engine(config) as engine:
        out = await engine.evaluate(msg())
        assert (out.decision.allow, out.decision.tier) == (True, "agent")
    [row] = await db.audit("discord:1", 10)
    assert (row.action, row.actor, row.tier, row.rule_index) == (
        "promote_to_contact",
        "rule:p#0",
        "rule",
        0,
    )


def test_T45_staged_block_is_never_escalated_even_with_an_allow_verdict() -> None:
    policy = Policy.from_text(BLOCK_THEN_AGENT)
    client = ClientState("discord:1", requests=3)
    verdict = AgentVerdict(allow=True, reason="looks fine")
    for facts in (RequestFacts(), RequestFacts(agent=verdict)):
        decided = decide(policy, client, facts)
        assert isinstance(decided, Decision)
        assert (decided.allow, decided.reason, decided.rule_index) == (False, "flood", 0)
        assert [a.op for a in decided.actions] == ["block"]


# --- 8. mentions_bot is a fact the runtime passes, never read off the event ------------------

MENTIONS = """---
name: m
fast_rules:
  - {if: [not is_dm, mentions_bot], action: allow, reason: addressed}
default: deny
---
"""


async def test_mentions_bot_only_when_the_runtime_passes_it(db: SqlClientStore) -> None:
    async with open_trust_engine(TrustConfig(policy=Policy.from_text(MENTIONS), store=db)) as e:
        group = msg(chat_type="group")
        assert not (await e.evaluate(group)).decision.allow  # the one-argument seam
        out = await e.evaluate(group, mentions_bot=True)
        assert (out.decision.allow, out.decision.reason) == (True, "addressed")


# --- 10. counters survive a cache smaller than the number of clients ------------------------


class Denier:
    def __init__(self) -> None:
        self.calls = 0

    async def consult(self, request: Any) -> AgentVerdict:
        self.calls += 1
        return AgentVerdict(allow=False, reason="no", model="m")


_OTHERS = itertools.count(900)


async def _turn(engine: Any, event: MessageEvent) -> None:
    """Two new clients' messages, then ``event``, then a flush: with cache_size=2 the flush
    drops every counter while ``event``'s view (read before ``event`` counted) stays cached,
    so the next message of that client runs on a recreated counter."""
    for _ in range(2):
        await engine.evaluate(msg(uid=str(next(_OTHERS))))
    await engine.evaluate(event)
    await engine.flush()


async def test_T45_T50_T63_hold_with_a_tiny_cache(db: SqlClientStore) -> None:
    agent = Denier()
    config = TrustConfig(policy="careful", store=db, agent=agent, cache_size=2)
    async with open_trust_engine(config) as engine:
        for i in range(5):  # T50
            await _turn(engine, msg(f"/invite WRONG-CODE-{i:04d}", uid="3"))
        out = await engine.evaluate(msg("/invite WRONG-CODE-9999", uid="3"))
        assert out.decision.reason == "invite rejected: too many attempts"
        for _ in range(10):  # T45: the 11th message consults, the 10th does not
            await _turn(engine, msg(uid="4"))
        assert agent.calls == 0
        await engine.evaluate(msg(uid="4"))
        assert agent.calls == 1
    agent = Denier()
    config = TrustConfig(policy=Policy.from_text(ASKER), store=db, agent=agent, cache_size=2)
    async with open_trust_engine(config) as engine:
        for _ in range(3):  # T63
            await _turn(engine, msg(uid="5"))
        calls = agent.calls
        out = await engine.evaluate(msg(uid="5"))
        assert out.decision.reason == "trust agent budget exhausted"
        assert agent.calls == calls


# --- 13. smaller findings ---------------------------------------------------------------------


class FailingFlush(SqlClientStore):
    """``add_counts`` fails once, after a message arrived while it was running."""

    during: Any = None

    async def add_counts(self, deltas: Any) -> None:
        if self.during is not None:
            during, self.during = self.during, None
            await during()
            raise StoreError("database is locked")
        await super().add_counts(deltas)


async def test_failed_flush_merges_with_increments_made_meanwhile(
    tmp_path: Path, wall: WallClock
) -> None:
    base = await open_sqlite_store(tmp_path, clock=wall)
    store = FailingFlush(base.backend, base.clock)
    try:
        async with open_trust_engine(TrustConfig(policy="open", store=store)) as engine:
            await engine.evaluate(msg())

            async def another() -> None:
                await engine.evaluate(msg())

            store.during = another
            await engine.flush()  # fails: both messages' increments must survive
            assert engine.stats().store_errors == 1
            await engine.flush()
        counters = await base.counters("discord:1")
        assert counters is not None and counters.requests == counters.requests_hour == 2
    finally:
        await base.aclose()


# --- 11. bootstrap admins: duplicates collapse, refusals are configuration errors ----------


async def test_T17_duplicate_bootstrap_admins_after_canonicalising_start(
    db: SqlClientStore,
) -> None:
    admins = ("discord:1", "Discord: 001", "discord:1")
    async with open_trust_engine(TrustConfig(policy="open", store=db, bootstrap_admins=admins)):
        pass
    assert [c.client_id for c in await db.list_clients(admins=True)] == ["discord:1"]
    assert len(await db.audit("discord:1", 10)) == 1


async def test_T17_blocked_bootstrap_admin_is_a_config_error_naming_it(db: SqlClientStore) -> None:
    await fn.block(db, "discord:2", "spam", actor=OP, tier="operator")
    config = TrustConfig(policy="open", store=db, bootstrap_admins=("discord:1", "discord:2"))
    with pytest.raises(TrustConfigError, match=r"RELAY_TRUST_BOOTSTRAP_ADMINS: .*discord:2"):
        async with open_trust_engine(config):
            pass  # pragma: no cover
    assert await db.list_clients(admins=True) == []  # one transaction: nothing applied


# --- 12. no reply_on_deny to a sender this decision blocks -----------------------------------

FLOOD = """---
name: p
fast_rules:
  - {if: 'requests > 2', action: block, reason: flood}
default: allow
reply_on_deny: Sorry, not now.
---
"""

AGENT_BLOCKS = """---
name: p
default: use_agent
cache: 0
agent_tools: [block]
reply_on_deny: Sorry, not now.
---
Judge.
"""


class Blocker:
    async def consult(self, request: Any) -> AgentVerdict:
        change = StateChange("block", reason="spam")
        return AgentVerdict(allow=False, reason="spam", staged=(change,), model="m")


async def test_T53_no_reply_on_deny_to_a_sender_blocked_by_this_decision(
    db: SqlClientStore,
) -> None:
    async with open_trust_engine(TrustConfig(policy=Policy.from_text(FLOOD), store=db)) as e:
        replies = [(await e.evaluate(msg())).reply for _ in range(4)]
    assert replies == [None, None, None, None]
    assert (await db.get("discord:1")).blocked
    config = TrustConfig(policy=Policy.from_text(AGENT_BLOCKS), store=db, agent=Blocker())
    async with open_trust_engine(config) as e:
        out = await e.evaluate(msg(uid="2"))
        assert (out.decision.allow, out.reply) == (False, None)
    assert (await db.get("discord:2")).blocked


class BadPrune(SqlClientStore):
    async def prune(self) -> int:
        raise RuntimeError("a bug in prune")


async def test_background_job_failure_is_logged_counted_and_survived(
    tmp_path: Path, wall: WallClock, autojump_clock: trio.testing.MockClock
) -> None:
    base = await open_sqlite_store(tmp_path, clock=wall)
    store = BadPrune(base.backend, base.clock)
    config = TrustConfig(
        policy="open", store=store, prune_interval_s=1, flush_interval_s=1e6, tail_interval_s=1e6
    )
    try:
        async with open_trust_engine(config) as engine:
            await trio.sleep(3.5)
            assert engine.stats().background_errors >= 3
            assert (await engine.evaluate(msg())).decision.allow
    finally:
        await base.aclose()


async def test_verdicts_in_memory_are_bounded(db: SqlClientStore) -> None:
    policy = Policy.from_text(ASKER.replace("cache: 0", "cache: 1h"))
    config = TrustConfig(policy=policy, store=db, agent=Denier(), cache_size=2)
    async with open_trust_engine(config) as engine:
        for uid in ("1", "2", "3", "4"):
            await engine.evaluate(msg(uid=uid))
        assert engine.snapshot().verdicts == ("discord:3", "discord:4")


class Shouter:
    async def consult(self, request: Any) -> AgentVerdict:
        return AgentVerdict(allow=False, reason="no\x1b[2J\nFORGED allow line\r", model="m")


async def test_agent_reason_is_logged_without_control_characters(
    db: SqlClientStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trust.engine")
    config = TrustConfig(policy=Policy.from_text(ASKER), store=db, agent=Shouter())
    async with open_trust_engine(config) as engine:
        await engine.evaluate(msg())
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trust discord")]
    assert "\x1b" not in line and "\n" not in line and "\r" not in line
    assert line.endswith("reason=trust agent: no[2JFORGED allow line")


async def test_T65_non_admin_invite_revoke_is_refused_and_audited(db: SqlClientStore) -> None:
    ops = TrustOps(db)
    created = await ops.create_invite(OP, tier="operator")
    with pytest.raises(TrustOpError) as info:
        await ops.revoke_invite(created.invite_id, "discord:4")
    assert info.value.code == "not_authorized"
    [row] = await db.audit(None, 1)
    assert (row.action, row.actor, row.tier) == ("refused:invite/revoke", "discord:4", "admin")


class CommitFailsOnce(sqlite3.Connection):
    """A sqlite3 connection whose first commit fails (a full disk, an I/O error)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed = False

    def commit(self) -> None:
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        super().commit()


async def test_sqlite_failed_commit_rolls_back_and_the_store_keeps_working(
    tmp_path: Path,
) -> None:
    await (await open_sqlite_store(tmp_path)).aclose()  # creates and migrates the tables
    backend = SqliteBackend(tmp_path / DB_FILENAME, factory=CommitFailsOnce)
    store = SqlClientStore(backend)
    try:
        with pytest.raises(StoreError, match="commit failed"):
            await fn.block(store, "discord:1", "spam", actor=OP, tier="operator")
        assert not (await store.get("discord:1")).blocked
        await fn.block(store, "discord:1", "spam", actor=OP, tier="operator")
        assert (await store.get("discord:1")).blocked
    finally:
        await store.aclose()


# --- T23: no invite code or API key in exception text -----------------------------------------

CODE = "ZQXW-7K3M-PLRT-9VBN"


async def test_T23_no_invite_code_in_exception_text(db: SqlClientStore) -> None:
    ops = TrustOps(db)
    await ops.create_invite(OP, tier="operator", code=CODE)
    failures: list[BaseException] = []
    for code in (CODE, CODE.lower(), "SECRET-7"):  # in use twice, then too short
        with pytest.raises(TrustOpError) as info:
            await ops.create_invite(OP, tier="operator", code=code)
        failures.append(info.value)
    for exc in failures:
        text = f"{exc} {exc!r} {getattr(exc, 'message', '')}"
        assert CODE not in text.upper() and "SECRET-7" not in text


def test_T23_no_api_key_in_exception_text() -> None:
    for key in ("sk-SECRET\nInjected: 1", "sk-SECRÉT-key", "sk secret"):
        env = {"RELAY_TRUST_LLM_BASE_URL": "http://127.0.0.1:1/v1", "RELAY_TRUST_LLM_API_KEY": key}
        with pytest.raises(TrustConfigError) as info:
            TrustConfig.from_env(env)
        text = f"{info.value} {info.value!r}"
        assert "SECRET" not in text.upper() and "secret" not in text


# --- one duration syntax, one list of operations ----------------------------------------------


def test_invite_expiry_and_policy_durations_share_one_syntax() -> None:
    from trust._invites import parse_expiry
    from trust._policy import parse_duration

    for text in ("90s", "15m", "12h", "30d"):
        assert parse_expiry(text) == parse_duration(text)
    assert parse_expiry("31d") == 31 * 86_400  # invites may last a year, policies 30 days
    with pytest.raises(ValueError, match="1s to 30d"):
        parse_duration("31d")
    for bad in ("1w", "12 h", "1.5h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
        with pytest.raises(TrustOpError) as info:
            parse_expiry(bad)
        assert info.value.code == "invalid_expiry"


def test_one_list_of_operations() -> None:
    from trust._commands import TRUST_OPS
    from trust._model import OPERATIONS, TRUST_OPERATIONS
    from trust._policy import OPERATIONS as DISABLE_NAMES

    assert DISABLE_NAMES is OPERATIONS
    assert ("verify/invite", "verify/payment", *TRUST_OPERATIONS) == OPERATIONS
    assert set(TRUST_OPERATIONS) - set(TRUST_OPS) == {"audit"}
