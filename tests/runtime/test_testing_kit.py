"""The agent authors' test kit (relay_runtime.testing) and the example in docs/testing.md.

Real loopback sockets (the reference connector listens on TCP), so no autojump clock here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from protocol.events import MessageEvent
from relay_runtime.agents import echo
from relay_runtime.testing import Harness, open_harness, parse_user
from trust.engine import TrustOutcome
from trust.model import Decision

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
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


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


async def test_say_times_out_when_the_gateway_never_acks() -> None:
    async def stuck(turn: object) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with open_harness(stuck) as harness:
        with pytest.raises(trio.TooSlowError):
            await harness.say("hello", user="telegram:3", timeout_s=0.5)


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
