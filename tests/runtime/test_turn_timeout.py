"""The turn time limit (``turn_timeout_s``, issue 16): hung turns end, are recorded, are acked."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from relay_runtime import Turn
from relay_runtime._cli import build_parser
from relay_runtime.config import ConfigError, GatewayConfig
from relay_runtime.testing import open_harness
from tests.runtime.dispatch_helpers import FakeLink, MemoryState, inbound
from tests.runtime.test_dispatcher import make_rig

USER = "telegram:42"


async def test_hung_agent_is_cancelled_at_600_s_acked_once_and_the_session_moves_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, float, float | None]] = []

    async def agent(turn: Turn) -> str:
        seen.append((turn.text, trio.current_time(), turn.deadline))
        if turn.text == "hang":
            await trio.sleep_forever()
        return f"echo {turn.text}"

    caplog.set_level(logging.INFO)
    # The default configuration: nothing about the limit is set.
    async with open_harness(agent) as harness:
        assert harness.gateway.config.turn_timeout_s == 600.0
        start = trio.current_time()
        hung = await harness.say("hang", user=USER, timeout_s=3600)
        assert trio.current_time() - start == 600.0
        assert hung.replies == ()
        after = await harness.say("next", user=USER)
        assert after.replies == ("echo next",)
        # No poison loop: across a reconnect the connector replays nothing.
        await harness.drop()
        await trio.testing.wait_all_tasks_blocked()
        acks = harness.connector.inbound_acks
        stats = harness.gateway.stats
        timed_out = await harness.gateway.dispatcher.db.turns("timed_out")  # type: ignore[attr-defined]
    assert [text for text, _, _ in seen] == ["hang", "next"]
    hang_started, hang_deadline = seen[0][1], seen[0][2]
    assert hang_deadline == hang_started + 600.0
    assert len(acks) == 2 and len(set(acks)) == 2
    assert stats["timed_out"] == 1
    assert stats["completed"] == 1
    assert [(t.state, t.error) for t in timed_out] == [("timed_out", "timed out after 600 s")]
    warnings = [r for r in caplog.records if "timed out" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "dm-telegram-42" in warnings[0].getMessage()  # the session
    assert hung.message_id in warnings[0].getMessage()  # the message


async def test_no_limit_with_zero(autojump_clock: trio.testing.MockClock) -> None:
    deadlines: list[float | None] = []

    async def slow(turn: Turn) -> str:
        deadlines.append(turn.deadline)
        await trio.sleep(1200)  # twice the default limit
        return "done"

    async with open_harness(slow, turn_timeout_s=0) as harness:
        said = await harness.say("take your time", user=USER, timeout_s=3600)
        assert harness.gateway.stats["timed_out"] == 0
    assert said.replies == ("done",)
    assert deadlines == [None]


async def test_a_turn_stuck_in_its_reply_times_out_too(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The limit covers the whole turn (trust, agent, replies), not the agent call only."""

    async def never_answers(*_: object) -> object:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def agent(turn: Turn) -> str:
        return "hello"

    outcomes: list[tuple[str, float]] = []
    link = FakeLink(responder=never_answers)  # type: ignore[arg-type]
    rig = make_rig(nursery, agent, link=link, state=MemoryState())
    rig.dispatcher.turn_timeout_s = 5.0
    rig.dispatcher.on_turn_end = lambda state, seconds: outcomes.append((state, seconds))
    await rig.feed(inbound("hi", chat="a", buffer_id="b1"))
    await rig.settle()
    assert outcomes == [("timed_out", 5.0)]
    assert rig.link.acks == ["b1"]
    assert rig.dispatcher.stats.timed_out == 1


async def test_an_interrupt_is_not_a_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    started = trio.Event()

    async def agent(turn: Turn) -> None:
        started.set()
        await trio.sleep_forever()

    outcomes: list[str] = []
    rig = make_rig(nursery, agent, state=MemoryState())
    rig.dispatcher.turn_timeout_s = 600.0
    rig.dispatcher.on_turn_end = lambda state, seconds: outcomes.append(state)
    await rig.feed(inbound("hi", chat="a", buffer_id="b1"))
    await started.wait()
    await trio.sleep(10)
    session = rig.dispatcher.sessions.running_sessions[0]
    assert rig.dispatcher.interrupt(session, "a")
    await rig.settle()
    assert outcomes == ["interrupted"]
    assert rig.dispatcher.stats.timed_out == 0
    assert rig.link.acks == ["b1"]


async def test_an_interrupt_marks_only_the_turn_it_cancelled(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The turn's one scope carries both the interrupt and the time limit: the session's
    next turn, which then runs into its limit, is recorded timed out, not interrupted."""
    started: list[str] = []

    async def agent(turn: Turn) -> None:
        started.append(turn.text)
        await trio.sleep_forever()

    outcomes: list[tuple[str, float]] = []
    rig = make_rig(nursery, agent, state=MemoryState())
    rig.dispatcher.turn_timeout_s = 600.0
    rig.dispatcher.on_turn_end = lambda state, seconds: outcomes.append((state, seconds))
    await rig.feed(inbound("one", chat="a", buffer_id="b1"))
    await rig.feed(inbound("two", chat="a", buffer_id="b2"))
    await trio.testing.wait_all_tasks_blocked()
    assert started == ["one"]
    await trio.sleep(10)
    assert rig.dispatcher.interrupt(rig.dispatcher.sessions.running_sessions[0], "a")
    await rig.settle()
    assert started == ["one", "two"]
    assert outcomes == [("interrupted", 10.0), ("timed_out", 600.0)]
    assert rig.link.acks == ["b1", "b2"]
    assert not rig.dispatcher.sessions._interrupted


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("600", 600.0), ("0", 0.0), ("0.0", 0.0), ("2.5", 2.5), (86400, 86400.0)],
)
def test_turn_timeout_setting_parses(raw: object, expected: float) -> None:
    env = {"GATEWAY_RELAY_TURN_TIMEOUT_S": str(raw)}
    config = GatewayConfig.load(environ=env, use_env_file=False)
    assert config.turn_timeout_s == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("-1", "must be 0 (no limit) or a number of seconds > 0"),
        ("soon", "must be 0 (no limit) or a number of seconds > 0"),
        ("inf", "must be 0 (no limit) or a number of seconds > 0"),
        ("86401", "must be at most 86400 seconds (0 = no limit)"),
    ],
)
def test_turn_timeout_setting_rejects(raw: str, problem: str) -> None:
    env = {"GATEWAY_RELAY_TURN_TIMEOUT_S": raw}
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.load(environ=env, use_env_file=False)
    assert str(caught.value) == f"GATEWAY_RELAY_TURN_TIMEOUT_S: {problem} (value {raw!r})"


def test_turn_timeout_option(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["run", "--turn-timeout", "90"])
    config = GatewayConfig.load(
        args={"turn_timeout_s": args.turn_timeout}, environ={}, use_env_file=False
    )
    assert config.turn_timeout_s == 90.0
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--turn-timeout", "-5"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "relay-runtime run: error: argument --turn-timeout: "
        "must be 0 (no limit) or a number of seconds > 0 (value '-5')"
    )
