"""The agent authors' test kit (relay_runtime.testing) and the example in docs/testing.md.

Tests without a clock fixture run the kit's loopback mode (real TCP, real clock); tests
with ``autojump_clock`` run its memory mode (memory streams, virtual time).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from protocol import MessageEvent
from relay_runtime import Turn
from relay_runtime.agents import echo
from relay_runtime.testing import Harness, autojump_around_threads, open_harness, parse_user
from trust import Decision, TrustOutcome

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "testing.md"


def _doc_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- example: test_my_agent\.py -->\n```python\n(.*?)```", text, re.S)
    assert match is not None, "docs/testing.md lost its example block"
    return match.group(1)


def test_docs_example_runs_and_passes(tmp_path: Path) -> None:
    (tmp_path / "test_my_agent.py").write_text(_doc_example(), encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n", encoding="utf-8")
    # This checkout's package, whatever an installed (editable) copy points at.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


async def shout(turn: object) -> str:
    text = getattr(turn, "text", "")
    return str(text).upper() + "!"


async def test_say_returns_the_decision_and_the_agents_reply() -> None:
    async with open_harness(shout) as harness:
        said = await harness.say("hello", user="telegram:42")
    assert said.allowed
    assert said.decision is not None
    assert said.decision.reason == "default allow by open"
    assert said.replies == ("HELLO!",)
    assert said.reply == "HELLO!"
    assert said.user == "telegram:42"


async def test_each_say_sees_only_its_own_replies() -> None:
    async with open_harness(echo) as harness:
        first = await harness.say("one", user="telegram:1")
        second = await harness.say("two", user="telegram:1")
        other = await harness.say("three", user="telegram:2")
    assert (first.replies, second.replies, other.replies) == (("one",), ("two",), ("three",))


async def test_careful_invite_admits_a_stranger_once() -> None:
    async with open_harness(echo, trust="careful", admins=["discord:1"]) as harness:
        denied = await harness.say("hi", user="discord:77")
        code = await harness.create_invite()
        accepted = await harness.say(f"/invite {code}", user="discord:77")
        now = await harness.say("hi again", user="discord:77")
        reused = await harness.say(f"/invite {code}", user="discord:78")
        admin = await harness.say("hello", user="discord:1")
    assert not denied.allowed and denied.replies == ()
    assert accepted.allowed
    assert accepted.replies == ("Invite accepted. You are now a contact.",)
    assert now.allowed and now.replies == ("hi again",)
    assert not reused.allowed
    assert reused.decision is not None and reused.decision.reason == "invite rejected: exhausted"
    assert admin.decision is not None and admin.decision.reason == "admin"


async def test_levels_set_up_front_and_idempotent(tmp_path: Path) -> None:
    users = {"discord:5": "whitelist", "discord:6": "contact"}
    async with open_harness(echo, trust="strict", users=users, state_dir=tmp_path) as harness:
        await harness.set_level("discord:5", "whitelist")  # already there: no error
        white = await harness.say("a", user="discord:5")
        contact = await harness.say("b", user="discord:6")
    assert white.allowed
    assert not contact.allowed
    assert contact.decision is not None and contact.decision.reason == "contact denied by strict"
    # The same state dir keeps the levels across harnesses (one SQLite store).
    async with open_harness(echo, trust="strict", state_dir=tmp_path) as harness:
        again = await harness.say("c", user="discord:5")
    assert again.allowed


async def test_a_custom_evaluator_decides() -> None:
    seen: list[MessageEvent] = []

    class DenyAll:
        async def evaluate(self, event: MessageEvent) -> TrustOutcome:
            seen.append(event)
            return TrustOutcome(Decision(False, "closed for the day", "rule"), False, "Closed.")

    async with open_harness(echo, trust=DenyAll()) as harness:
        said = await harness.say("anyone?", user="slack:U1")
        with pytest.raises(RuntimeError, match="built-in trust engine"):
            await harness.create_invite()
    assert not said.allowed
    assert said.replies == ("Closed.",)
    assert [e.text for e in seen] == ["anyone?"]
    assert seen[0].delivered_via_relay


async def test_drop_reconnects_and_nothing_is_lost() -> None:
    async with open_harness(echo) as harness:
        await harness.say("before", user="telegram:9")
        handshakes = harness.gateway.supervisor.stats.handshakes
        await harness.drop()
        assert harness.gateway.supervisor.stats.handshakes == handshakes + 1
        assert harness.gateway.state == "ready"
        after = await harness.say("after", user="telegram:9")
    assert after.replies == ("after",)


def test_users_are_platform_colon_id() -> None:
    assert parse_user(" Discord : 123 ") == ("discord", "123")
    for bad in ("alice", ":1", "discord:", ""):
        with pytest.raises(ValueError, match="PLATFORM:USER_ID"):
            parse_user(bad)


async def test_harness_exposes_its_parts(tmp_path: Path) -> None:
    async with open_harness(echo, state_dir=tmp_path) as harness:
        assert isinstance(harness, Harness)
        assert harness.state_dir == tmp_path
        assert (tmp_path / "relay.db").exists()
        assert harness.connector.current() is not None
        assert harness.gateway.state == "ready"


# -- memory mode, under the autojump clock ---------------------------------------------------


async def test_under_a_mock_clock_the_kit_runs_over_memory_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(shout) as harness:
        said = await harness.say("hello", user="telegram:42")
        assert harness.transport == "memory"
        with pytest.raises(RuntimeError, match="not serving"):
            harness.connector.port  # noqa: B018  (nothing listens on TCP)
        assert harness.connector.current() is not None
    assert said.allowed and said.replies == ("HELLO!",)
    # Nothing waited on a timer: the whole exchange took no virtual time.
    assert trio.current_time() == 0.0


async def test_a_ten_minute_agent_runs_instantly_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(turn: Turn) -> str:
        for _ in range(120):
            await turn.typing()
            await trio.sleep(5)
        return "done after ten minutes"

    # Ten minutes is the default turn time limit, which would cut this turn short.
    async with open_harness(slow, turn_timeout_s=900) as harness:
        start = trio.current_time()
        said = await harness.say("take your time", user="telegram:5", timeout_s=3600)
        elapsed = trio.current_time() - start
        typing = [o for o in harness.connector.outbounds if o.action.OP == "typing"]
    assert said.replies == ("done after ten minutes",)
    assert elapsed == 600.0
    assert len(typing) == 120


async def test_say_times_out_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    async def stuck(turn: object) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with open_harness(stuck) as harness:
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await harness.say("hello", user="telegram:3", timeout_s=30)
        assert trio.current_time() - start == 30.0


async def test_drop_reconnects_over_memory_streams(autojump_clock: trio.testing.MockClock) -> None:
    async with open_harness(echo) as harness:
        await harness.say("before", user="telegram:9")
        await harness.drop()
        assert harness.gateway.state == "ready"
        after = await harness.say("after", user="telegram:9")
        assert len(harness.connector.connections) == 2
    assert after.replies == ("after",)


async def test_careful_policy_and_invites_in_memory_mode(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(echo, trust="careful", users={"discord:1": "whitelist"}) as harness:
        stranger = await harness.say("hi", user="discord:77")
        code = await harness.create_invite()
        accepted = await harness.say(f"/invite {code}", user="discord:77")
        friend = await harness.say("hi", user="discord:1")
    assert not stranger.allowed
    assert accepted.replies == ("Invite accepted. You are now a contact.",)
    assert friend.allowed and friend.replies == ("hi",)


async def test_loopback_mode_can_be_asked_for_and_bad_modes_are_refused() -> None:
    async with open_harness(echo, transport="loopback") as harness:
        assert harness.transport == "loopback"
        assert harness.connector.port > 0
        said = await harness.say("tcp", user="telegram:1")
    assert said.replies == ("tcp",)
    with pytest.raises(ValueError, match="transport 'pigeon'"):
        async with open_harness(echo, transport="pigeon"):  # type: ignore[arg-type]
            pass


async def test_memory_mode_runs_under_the_real_clock_too() -> None:
    async with open_harness(echo, transport="memory") as harness:
        said = await harness.say("no sockets", user="telegram:1")
    assert harness.transport == "memory"
    assert said.replies == ("no sockets",)


# -- bufferIds across runs over one state dir --------------------------------------------------


async def test_a_reused_state_dir_never_skips_a_new_runs_messages(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    seen: list[str] = []

    async def record(turn: Turn) -> str:
        seen.append(turn.text)
        return turn.text

    replies = []
    for run in ("first", "second", "third"):
        async with open_harness(record, state_dir=tmp_path) as harness:
            replies.append((await harness.say(run, user="telegram:1")).replies)
    assert seen == ["first", "second", "third"]
    assert replies == [("first",), ("second",), ("third",)]


async def test_why_buffer_ids_must_differ_across_runs(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Two runs forced onto one prefix reuse ``buf-same-1``: the second message is skipped."""
    seen: list[str] = []

    async def record(turn: Turn) -> str:
        seen.append(turn.text)
        return turn.text

    fixed = {"buffer_prefix": "same"}
    async with open_harness(record, state_dir=tmp_path, connector_options=fixed) as harness:
        first = await harness.say("first", user="telegram:1")
    async with open_harness(record, state_dir=tmp_path, connector_options=fixed) as harness:
        second = await harness.say("second", user="telegram:1")
        duplicates = harness.gateway.stats["duplicates"]
    assert first.replies == ("first",)
    assert seen == ["first"]  # the replay dedupe took buf-same-1 for the first run's message
    assert second.replies == () and duplicates == 1


# -- the clock guard ----------------------------------------------------------------------------


def _busy_thread_work() -> bytes:
    """Real work in a worker thread that outlasts a run-loop pass by far (tens of ms)."""
    return hashlib.pbkdf2_hmac("sha256", b"relay", b"runtime", 200_000)


async def test_plain_autojump_fires_timeouts_while_a_thread_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The problem the kit solves: without the guard, a thread call lets virtual time jump."""
    with trio.move_on_after(60) as scope:
        await trio.to_thread.run_sync(_busy_thread_work)
    # The deadline expired while the thread was still working (the call itself cannot be
    # abandoned, so it still returns its result).
    assert scope.cancel_called
    assert trio.current_time() == 60.0


async def test_the_guard_holds_the_clock_while_a_thread_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(autojump_around_threads, autojump_clock)
        with trio.move_on_after(60) as scope:
            await trio.to_thread.run_sync(_busy_thread_work)
        assert not scope.cancel_called
        assert trio.current_time() == 0.0
        # ...and still autojumps when no thread runs.
        await trio.sleep(3600)
        assert trio.current_time() == 3600.0
        nursery.cancel_scope.cancel()
