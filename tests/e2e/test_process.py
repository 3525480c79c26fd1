"""The launcher as a process: signals, exit codes, crash-restart over the same state dir.

The gateway is a real ``python -m relay_runtime run`` child; the reference connector runs
in this test on 127.0.0.1. Real time is unavoidable across processes, so every wait is on
an observed event (a log line, a frame, an agent log line) under a ``fail_after`` bound.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from pathlib import Path

import pytest
import trio

from protocol import MessageEvent, SessionSource
from relay_runtime._logs import is_relay_token
from relay_runtime.connector import ReferenceConnector
from tests.e2e.conftest import (
    GATEWAY_ID,
    GUARD_S,
    gateway_env,
    gateway_process,
    new_secret,
    wait_until,
)

READY = "gateway ready"


def message(text: str, n: int) -> MessageEvent:
    source = SessionSource(platform="telegram", chat_id="c1", user_id="100", message_id=f"m{n}")
    return MessageEvent(text=text, source=source, message_id=f"m{n}")


def run_args(url: str, *extra: str) -> list[str]:
    return ["run", "--relay-url", url, "--trust", "open", *extra]


def agent_log(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_through_going_idle_and_exits_0(
    tmp_path: Path, signum: signal.Signals
) -> None:
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(secret, tmp_path / "state")
        with trio.fail_after(GUARD_S):
            args = ["--log-level", "debug", *run_args(connector.base_url)]
            async with gateway_process(args, env) as gw:
                ready = await gw.wait_line(READY)
                # The start-up heap is frozen out of the collector's way (settle_heap); the
                # count is a DEBUG line of its own, not noise in the ready line (issue 16).
                assert "heap_frozen" not in ready
                frozen = re.search(r"heap_frozen=(\d+)", await gw.wait_line("heap frozen"))
                assert frozen is not None and int(frozen.group(1)) > 10_000, gw.text()
                delivery = await connector.inject(message("hello", 1), gateway_id=GATEWAY_ID)
                assert delivery.outcome == "live"
                await connector.wait_for(lambda: len(connector.messages) == 1)
                gw.signal(signum)
                with trio.fail_after(10):  # the launcher promises an exit within 10 s
                    code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    assert code == 0, gw.text()
    assert len(connector.going_idles) == 1
    assert [m.content for m in connector.messages.values()] == ["hello"]
    assert gw.saw("draining through going_idle")


@pytest.mark.parametrize("log_format", ["kv", "json"])
async def test_R39_debug_logs_of_a_real_process_hold_no_secret(
    tmp_path: Path, log_format: str
) -> None:
    secret = new_secret()
    delivery_key = "dk-" + new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(secret, tmp_path / "state", GATEWAY_RELAY_DELIVERY_KEY=delivery_key)
        args = ["--log-format", log_format, "--log-level", "debug", *run_args(connector.base_url)]
        with trio.fail_after(GUARD_S):
            async with gateway_process(args, env) as gw:
                await gw.wait_line(READY)
                await connector.inject(message("hello", 1), gateway_id=GATEWAY_ID)
                await connector.wait_for(lambda: len(connector.messages) == 1)
                await connector.drop()  # a redial mints and sends a second token
                await gw.wait_line("connected")
                await connector.wait_for(lambda: len(connector.hellos) == 2)
                gw.signal(signal.SIGTERM)
                assert await gw.wait_exit() == 0, gw.text()
        nursery.cancel_scope.cancel()
    text = gw.text()
    assert secret not in text
    assert delivery_key not in text
    assert len(gw.lines) > 10  # debug logging did happen
    if log_format == "json":
        records = [json.loads(line) for line in gw.lines if line]
        assert {"ts", "level", "logger", "msg"} <= set(records[0])
        assert any(r["msg"] == READY for r in records)
    for word in re.split(r"[\s\"'=,]+", text):
        assert not is_relay_token(word), word


async def test_signal_while_still_dialing_exits_0(tmp_path: Path) -> None:
    # Nothing listens on the relay URL: the gateway keeps re-dialing and never gets ready.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = gateway_env(new_secret(), tmp_path / "state")
    with trio.fail_after(GUARD_S):
        async with gateway_process(run_args(f"ws://127.0.0.1:{port}"), env) as gw:
            await gw.wait_line("dial failed")
            gw.signal(signal.SIGTERM)
            with trio.fail_after(10):
                code = await gw.wait_exit()
    assert code == 0, gw.text()
    assert not gw.saw(READY)
    assert gw.saw("before the gateway was ready")


async def test_sigterm_without_an_idle_ack_still_exits_0_in_time(tmp_path: Path) -> None:
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    connector.ack_going_idle = False
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(secret, tmp_path / "state", GATEWAY_RELAY_IDLE_ACK_TIMEOUT_S="1")
        with trio.fail_after(GUARD_S):
            async with gateway_process(run_args(connector.base_url), env) as gw:
                await gw.wait_line(READY)
                gw.signal(signal.SIGTERM)
                with trio.fail_after(10):
                    code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    assert code == 0, gw.text()
    assert len(connector.going_idles) == 1


async def test_R86_bad_config_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = gateway_env(new_secret(), tmp_path, GATEWAY_RELAY_PING_TIMEOUT_S="soon")
    with trio.fail_after(GUARD_S):
        async with gateway_process(run_args("ws://127.0.0.1:9"), env) as gw:
            code = await gw.wait_exit()
    assert code == 2
    assert gw.saw("GATEWAY_RELAY_PING_TIMEOUT_S")


async def test_bad_trust_policy_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = gateway_env(new_secret(), tmp_path, RELAY_TRUST="pretty careful please")
    args = ["run", "--relay-url", "ws://127.0.0.1:9"]
    with trio.fail_after(GUARD_S):
        async with gateway_process(args, env) as gw:
            code = await gw.wait_exit()
    assert code == 2
    assert gw.saw("RELAY_TRUST")


async def test_R55_revocation_exits_3(tmp_path: Path) -> None:
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(secret, tmp_path / "state")
        with trio.fail_after(GUARD_S):
            async with gateway_process(run_args(connector.base_url), env) as gw:
                await gw.wait_line(READY)
                await connector.revoke(GATEWAY_ID)
                code = await gw.wait_exit()
        nursery.cancel_scope.cancel()
    assert code == 3, gw.text()
    assert gw.saw("relay disabled")
    # One fresh-token re-dial was refused, then nothing more (DISABLED never dials).
    assert [r.status for r in connector.rejections] == [401]


async def test_sigkill_mid_replay_then_restart_answers_each_message_once(tmp_path: Path) -> None:
    secret = new_secret()
    state = tmp_path / "state"
    log_path = tmp_path / "agent.log"
    texts = [f"msg {n}" for n in range(6)]
    hold = tmp_path / "hold"
    hold.touch()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret}, always_buffer=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        args = run_args(connector.base_url, "--agent", "e2e_agents:slow_echo")
        env = gateway_env(
            secret,
            state,
            E2E_AGENT_LOG=str(log_path),
            E2E_AGENT_DELAY_S="0.05",
            E2E_HOLD_FILE=str(hold),
            E2E_HOLD_TEXT=texts[2],
        )
        # Everything is buffered before the gateway exists; it drains one at a time.
        for n, text in enumerate(texts):
            assert (await connector.inject(message(text, n), gateway_id=GATEWAY_ID)).buffer_id
        with trio.fail_after(GUARD_S):
            async with gateway_process(args, env) as first:
                # Two replays are acked (so committed); the third is held mid-turn: kill.
                await connector.wait_for(lambda: len(connector.inbound_acks) >= 2)
                await wait_until(lambda: f"start {texts[2]}" in agent_log(log_path))
                first.signal(signal.SIGKILL)
                assert await first.wait_exit() == -signal.SIGKILL
            assert len(connector.inbound_acks) == 2
            assert len(connector.buffered(GATEWAY_ID)) == len(texts) - 2
            hold.unlink()
            async with gateway_process(args, env) as second:
                await connector.wait_for(lambda: not connector.buffered(GATEWAY_ID))
                second.signal(signal.SIGTERM)
                assert await second.wait_exit() == 0, second.text()
        nursery.cancel_scope.cancel()
    replies = [m.content for m in connector.messages.values()]
    # None lost, none answered twice; the interrupted turn ran again after the restart.
    assert sorted(replies) == sorted(f"echo: {t}" for t in texts)
    completed = [line for line in agent_log(log_path) if line.startswith("end ")]
    assert sorted(completed) == sorted(f"end {t}" for t in texts)
    assert agent_log(log_path).count(f"start {texts[2]}") == 2


async def test_reply_made_while_the_connector_is_down_is_delivered_when_it_returns(
    tmp_path: Path,
) -> None:
    secret = new_secret()
    state = tmp_path / "state"
    log_path = tmp_path / "agent.log"
    hold = tmp_path / "hold"
    hold.touch()
    first = ReferenceConnector(secrets={GATEWAY_ID: secret})
    second = ReferenceConnector(secrets={GATEWAY_ID: secret})
    first_scope = trio.CancelScope()

    async def serve_first(*, task_status: trio.TaskStatus[str]) -> None:
        with first_scope:
            await first.serve("127.0.0.1", 0, task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_first)
        args = run_args(first.base_url, "--agent", "e2e_agents:slow_echo")
        env = gateway_env(
            secret,
            state,
            E2E_AGENT_LOG=str(log_path),
            E2E_AGENT_DELAY_S="0.05",
            E2E_HOLD_FILE=str(hold),
            E2E_HOLD_TEXT="while away",
        )
        with trio.fail_after(GUARD_S):
            async with gateway_process(args, env) as gw:
                await gw.wait_line(READY)
                await first.inject(message("while away", 1), gateway_id=GATEWAY_ID)
                await wait_until(lambda: "start while away" in agent_log(log_path))
                # The connector goes away while the agent is still thinking ...
                port = first.port
                await first.drop()
                first_scope.cancel()
                hold.unlink()
                # ... so the reply is committed to the outbox while nothing listens.
                await wait_until(lambda: _outbox_size(state) == 1, interval_s=0.02)
                await nursery.start(second.serve, "127.0.0.1", port)
                await second.wait_for(lambda: len(second.messages) == 1)
                gw.signal(signal.SIGTERM)
                assert await gw.wait_exit() == 0, gw.text()
        nursery.cancel_scope.cancel()
    assert [m.content for m in second.messages.values()] == ["echo: while away"]
    assert first.messages == {}
    assert _outbox_size(state) == 0


def _outbox_size(state: Path) -> int:
    db = state / "relay.db"
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM relay_outbox").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
