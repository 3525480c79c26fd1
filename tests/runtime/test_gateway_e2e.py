"""run_gateway end to end: the real Supervisor against the reference connector on 127.0.0.1.

Real loopback sockets, so no autojump clock here: every wait is on an observed event, with a
``fail_after`` guard only so a bug fails instead of hanging.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import random
import secrets as pysecrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from protocol import MessageEvent, Outbound, Send, SessionSource
from relay_runtime import ConfigError, Gateway, GatewayConfig, RelayDisabled, Turn, run_gateway
from relay_runtime._delivery import Agent
from relay_runtime._state import DB_FILENAME, StateDB
from relay_runtime.connector import NoAnswer, ReferenceConnector

GATEWAY_ID = "gw-e2e"
GUARD_S = 30


def event(
    text: str, *, chat: str = "c1", user: str = "u1", message_id: str | None = None
) -> MessageEvent:
    source = SessionSource(platform="discord", chat_id=chat, chat_type="group", user_id=user)
    return MessageEvent(text=text, source=source, message_id=message_id)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    agent: Agent,
    *,
    connector_options: dict[str, Any] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[ReferenceConnector, Gateway, trio.Nursery]]:
    secret = pysecrets.token_urlsafe(32)
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret}, **(connector_options or {}))
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        settings: dict[str, Any] = {
            "relay_url": connector.base_url,
            "gateway_id": GATEWAY_ID,
            "secret": secret,
            "state_dir": tmp_path,
            "platform": "discord",
            "trust": "open",
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.05,
        }
        settings.update(config)
        with trio.fail_after(GUARD_S):
            gateway = await nursery.start(run_gateway, GatewayConfig(**settings), agent)
        yield connector, gateway, nursery
        nursery.cancel_scope.cancel()


def replies_to(connector: ReferenceConnector) -> list[str]:
    return [m.content for m in connector.messages.values()]


async def echo(turn: Turn) -> str:
    return f"re: {turn.text}"


async def test_reply_round_trip_and_gateway_surface(tmp_path: Path) -> None:
    async with running(tmp_path, echo) as (connector, gateway, _):
        assert gateway.state == "ready"
        assert "trust" in gateway.stats
        assert "discord" in gateway.descriptors
        with trio.fail_after(GUARD_S):
            await connector.inject(event("hello"))
            await connector.wait_for(lambda: replies_to(connector) == ["re: hello"])
            await gateway.dispatcher.wait_idle()
        stats = gateway.stats
        assert stats["completed"] == 1
        assert stats["state"] == "ready"
        assert stats["outbox"] == 0


async def test_turn_actions_over_the_wire(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    finished = trio.Event()

    async def agent(turn: Turn) -> None:
        await turn.typing()
        first = await turn.reply("draft")
        assert first.message_id is not None
        seen["edit"] = await turn.edit(first.message_id, "final")
        seen["info"] = await turn.chat_info()
        finished.set()

    async with running(tmp_path, agent) as (connector, _, _):
        with trio.fail_after(GUARD_S):
            await connector.inject(event("x", chat="chan"))
            await finished.wait()
    assert seen["edit"].success
    assert seen["info"] == {"name": "chan", "type": "group"}
    assert replies_to(connector) == ["final"]


async def test_config_error_before_any_dial(tmp_path: Path) -> None:
    connector = ReferenceConnector()
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        with pytest.raises(ConfigError, match="relay_url"):
            await run_gateway(GatewayConfig(state_dir=tmp_path), echo)
        disabled = GatewayConfig(relay_url=connector.base_url, enabled=False, state_dir=tmp_path)
        with pytest.raises(ConfigError, match="enabled"):
            await run_gateway(disabled, echo)
        with pytest.raises(ConfigError, match="agent"):
            await run_gateway(GatewayConfig(relay_url=connector.base_url, state_dir=tmp_path), 42)  # type: ignore[arg-type]
        assert connector.connections == []
        nursery.cancel_scope.cancel()


async def test_relay_disabled_is_raised_plainly(tmp_path: Path) -> None:
    secret = pysecrets.token_urlsafe(32)
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    config_values = {
        "gateway_id": GATEWAY_ID,
        "secret": secret,
        "state_dir": tmp_path,
        "trust": "open",
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
    }
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        config = GatewayConfig(relay_url=connector.base_url, **config_values)

        async def revoke_after_start() -> None:
            await connector.wait_for(lambda: any(c.handshaken for c in connector.connections))
            await connector.revoke(GATEWAY_ID)

        nursery.start_soon(revoke_after_start)
        with trio.fail_after(GUARD_S), pytest.raises(RelayDisabled):
            await run_gateway(config, echo)
        nursery.cancel_scope.cancel()
    assert connector.is_revoked(GATEWAY_ID)


async def test_go_idle_ends_the_gateway(tmp_path: Path) -> None:
    async with running(tmp_path, echo) as (connector, gateway, _):
        with trio.fail_after(GUARD_S):
            assert await gateway.go_idle() is True
            await connector.wait_for(lambda: connector.is_buffered_only(GATEWAY_ID))
        assert gateway.state == "closed"


async def test_interrupt_inbound_cancels_the_running_turn(tmp_path: Path) -> None:
    started = trio.Event()
    cancelled = trio.Event()

    async def agent(turn: Turn) -> str:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async with running(tmp_path, agent) as (connector, gateway, _):
        with trio.fail_after(GUARD_S):
            await connector.inject(event("long"))
            await started.wait()
            assert await connector.inject_interrupt("agent:main:discord:group:c1:u1", "c1")
            await cancelled.wait()
            await gateway.dispatcher.wait_idle()
        assert gateway.stats["interrupted"] == 1
        assert gateway.send_interrupt("agent:main:discord:group:c1:u1", "user /stop")
        with trio.fail_after(GUARD_S):
            await connector.wait_for(lambda: len(connector.interrupts) == 1)
        assert connector.interrupts[0].reason == "user /stop"


async def test_R75_can_suspend_names_the_first_unmet_obligation(tmp_path: Path) -> None:
    release = trio.Event()

    started = trio.Event()

    async def agent(turn: Turn) -> None:
        started.set()
        await release.wait()

    async with running(tmp_path / "a", agent) as (_, gateway, _):
        assert gateway.can_suspend().reason == "no wake URL configured"

    wake = {"wake_url": "http://127.0.0.1:9/wake"}
    async with running(tmp_path / "b", agent, **wake) as (_, gateway, _):
        assert gateway.can_suspend().reason == "wake URL not confirmed by the connector"

    async with running(tmp_path / "c", agent, wake_confirmed=True, **wake) as (
        connector,
        gateway,
        nursery,
    ):
        assert gateway.can_suspend().ok
        with trio.fail_after(GUARD_S):
            # The flush at READY is over, so nothing below delivers the entry put behind
            # the reply policy's back (nothing on this path waits for the state db).
            await gateway.replies.wait_flusher_pass(1)
            await connector.inject(event("busy"))
            await started.wait()
        assert gateway.can_suspend().reason == "1 turn(s) running"
        release.set()
        with trio.fail_after(GUARD_S):
            await gateway.dispatcher.wait_idle()
        connector.outcomes.set("send", NoAnswer())
        nursery.start_soon(
            functools.partial(
                gateway.replies.send, Send(chat_id="c1", content="x"), platform_raw=None
            )
        )
        with trio.fail_after(GUARD_S):
            await connector.wait_for(lambda: len(connector.frames(Outbound)) == 1)
        assert gateway.can_suspend().reason == "1 outbound request(s) pending"
        # The unanswered request times out; an unanswered send is never queued (ambiguous).
        connector.outcomes.reset()
        queued = '{"op":"send","chat_id":"c","content":"q"}'
        await gateway.replies.db.put("discord", "", queued, "r", "send", 2e9)
        await gateway.replies.sweep()
        gateway.outbound.fail_all("relay transport closed", retryable=False)
        with trio.fail_after(GUARD_S):
            await gateway.outbound.wait_drained()
        assert gateway.can_suspend().reason == "outbox not empty (1)"


async def test_suspend_commits_what_was_written_behind_before_going_idle(tmp_path: Path) -> None:
    """A live turn's completion is recorded behind; suspending (the process may be scaled
    away next) commits it before ``going_idle`` goes out."""
    seen_at_idle: list[list[tuple[str, ...]]] = []

    async def on_going_idle(conn: Any) -> bool:
        with sqlite3.connect(tmp_path / DB_FILENAME) as raw:
            seen_at_idle.append(raw.execute("SELECT state FROM relay_dedupe_claims").fetchall())
        raw.close()
        return False

    async def agent(turn: Turn) -> str:
        return "ok"

    wake = {"wake_url": "http://127.0.0.1:9/wake", "wake_confirmed": True}
    options = {"on_going_idle": on_going_idle}
    async with running(tmp_path, agent, connector_options=options, **wake) as (
        connector,
        gateway,
        _,
    ):
        with trio.fail_after(GUARD_S):
            await connector.inject(event("hi", message_id="m1"))
            await connector.wait_for(lambda: len(connector.messages) == 1)
            await gateway.dispatcher.wait_idle()
            assert await gateway.suspend()
    assert seen_at_idle == [[("completed",)]]


async def test_R45_outbox_of_a_previous_run_is_flushed_at_ready(tmp_path: Path) -> None:
    # A previous process queued a reply (committed to the state db) and then stopped.
    queued = '{"op":"send","chat_id":"c9","content":"queued"}'
    async with await StateDB.open(tmp_path, now=0) as db:
        await db.put("discord", "", queued, "a" * 32, "send", time.time())
    async with running(tmp_path, echo) as (connector, gateway, _):
        with trio.fail_after(GUARD_S):
            await connector.wait_for(lambda: "queued" in replies_to(connector))
        (frame,) = [f for f in connector.frames(Outbound) if f.action.content == "queued"]  # type: ignore[union-attr]
        assert frame.request_id == "a" * 32
        with trio.fail_after(GUARD_S):
            await gateway.replies.wait_empty()
        assert await gateway.replies.db.count() == 0


@pytest.mark.parametrize(("seed", "every"), [(7, 60), (11, 25)])
async def test_chaos_1000_buffered_messages_each_answered_once(
    tmp_path: Path, seed: int, every: int
) -> None:
    """The connector drops the socket at seeded random points during a 1,000-message replay.

    Every message runs the agent exactly once, and gets exactly one reply: every reply the
    connector performed for a message carries the same requestId (a re-send after a drop
    reuses it), so an idempotent connector shows each reply once. Nothing is lost.
    """
    total = 1000
    calls: collections.Counter[str] = collections.Counter()

    async def agent(turn: Turn) -> str:
        calls[turn.text] += 1
        return f"re: {turn.text}"

    secret = pysecrets.token_urlsafe(32)
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret}, always_buffer=True, drain_window=8)
    for i in range(total):
        await connector.inject(
            event(f"m{i}", chat=f"c{i % 25}", user=f"u{i % 7}", message_id=f"id{i}")
        )
    assert len(connector.buffered(GATEWAY_ID)) == total

    def answered() -> dict[str, set[str]]:
        by_text: dict[str, set[str]] = collections.defaultdict(set)
        for frame in connector.frames(Outbound):
            if isinstance(frame.action, Send):
                by_text[frame.action.content].add(frame.request_id)
        return by_text

    def done() -> bool:
        return not connector.buffered(GATEWAY_ID) and len(replies_to_set()) == total

    def replies_to_set() -> set[str]:
        return {m.content for m in connector.messages.values()}

    connector.drop_randomly(random.Random(seed), every=every)
    config = GatewayConfig(
        relay_url="ws://placeholder",
        gateway_id=GATEWAY_ID,
        secret=secret,
        state_dir=tmp_path,
        platform="discord",
        trust="open",
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        max_concurrent_turns=8,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        config = attrs.evolve(config, relay_url=connector.base_url)
        with trio.fail_after(60):
            await nursery.start(run_gateway, config, agent)
            await connector.wait_for(done)
        connector.stop_dropping()
        nursery.cancel_scope.cancel()

    assert connector.chaos_drops >= 10
    expected = {f"m{i}" for i in range(total)}
    assert set(calls) == expected
    assert max(calls.values()) == 1  # exactly-once invocation
    by_text = answered()
    assert set(by_text) == {f"re: {t}" for t in expected}
    assert all(len(ids) == 1 for ids in by_text.values())  # one reply (one requestId) each


async def test_bad_trust_setting_is_a_config_error_before_any_dial(tmp_path: Path) -> None:
    connector = ReferenceConnector()
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        config = GatewayConfig(
            relay_url=connector.base_url, state_dir=tmp_path, trust="let everyone in please"
        )
        with pytest.raises(ConfigError, match="trust"):
            await run_gateway(config, echo)
        assert connector.connections == []
        nursery.cancel_scope.cancel()


async def test_default_trust_is_the_configured_policy_engine(tmp_path: Path) -> None:
    buffered = {"always_buffer": True}
    async with running(tmp_path, echo, trust="strict", connector_options=buffered) as (
        connector,
        gateway,
        _,
    ):
        with trio.fail_after(GUARD_S):
            await connector.inject(event("hello from a stranger", chat="dm1"))
            await connector.wait_for(lambda: bool(connector.inbound_acks))
        stats = gateway.stats
        assert stats["denied"] == 1
        assert "trust" in stats
        assert replies_to(connector) == []


class _NotAnEngine:
    def evaluate(self, event: object) -> bool:  # not async: cannot be awaited per message
        return True


@pytest.mark.parametrize("trust", ["careful", _NotAnEngine(), object(), 42])
async def test_T30_an_unsupported_trust_object_is_a_config_error(
    tmp_path: Path, trust: object
) -> None:
    config = GatewayConfig(relay_url="ws://127.0.0.1:9", state_dir=tmp_path)
    with pytest.raises(ConfigError, match="trust") as caught:
        await run_gateway(config, echo, trust=trust)  # type: ignore[arg-type]
    assert "evaluate" in str(caught.value)
