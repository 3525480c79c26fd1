"""Readable operator log lines (issue 16): drops, live frame counters, the trust policy line."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from relay_runtime import Turn
from relay_runtime._logs import KeyValueFormatter
from relay_runtime.testing import GATEWAY_ID, open_harness
from trust import TrustConfig, open_trust_engine
from trust._policy import resolve_policy


async def echo(turn: Turn) -> str:
    return turn.text


def _messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


async def test_a_drop_is_logged_as_a_drop_with_its_close_code_and_reason(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_harness(echo) as harness:
        supervisor = harness.gateway.supervisor
        seen = supervisor.stats.handshakes
        await harness.connector.drop(GATEWAY_ID, code=1011, reason="connector restarting")
        await supervisor.wait_ready(after=seen)
        await harness.drop()  # an abort: no close frame at all
    lines = _messages(caplog, "relay_runtime.supervisor")
    drops = [(level, text) for level, text in lines if "dropped" in text]
    assert drops == [
        (
            logging.WARNING,
            "relay: connection dropped (close code 1011, reason 'connector restarting')",
        ),
        (logging.WARNING, "relay: connection dropped (close code 1006, reason none given)"),
    ]
    # Each drop comes before the back-off line it causes.
    texts = [text for _, text in lines]
    first = texts.index(drops[0][1])
    assert texts[first + 1].startswith("relay: next dial in")
    # The harness ends through going_idle: an orderly close, not a drop.
    assert (logging.INFO, "relay: connection closed (close code 1000, reason 'going idle')") in (
        lines
    )


async def test_frame_counters_move_while_the_connection_is_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(echo) as harness:
        before = harness.gateway.stats
        await harness.say("one")
        await harness.say("two")
        during = harness.gateway.stats
        assert during["state"] == "ready"
        assert harness.gateway.supervisor.stats.drops == 0
        # Two inbound frames in, two replies and two acks out, on the same socket.
        assert during["frames_in"] >= before["frames_in"] + 2
        assert during["frames_out"] >= before["frames_out"] + 4
        await harness.drop()
        # Counted once when the socket ends, not twice.
        after = harness.gateway.stats
        assert during["frames_in"] <= after["frames_in"] <= during["frames_in"] + 2


async def test_the_trust_policy_line_is_plain_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trust.engine")
    config = TrustConfig.from_env({}, policy=resolve_policy("careful"), state_dir=tmp_path)
    async with open_trust_engine(config):
        pass
    records = [r for r in caplog.records if r.getMessage().startswith("trust policy careful")]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "{" not in message and '"' not in message
    assert "operations verify/invite" in message
    assert message.endswith("; trust agent not configured")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    handler.emit(records[0])
    line = stream.getvalue()
    assert '\\"' not in line  # no JSON escaped inside the quoted msg
