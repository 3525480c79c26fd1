"""Soft field problems from a peer are logged through the socket's rate limit (issue 14).

The codec does not log them itself: a peer sending frames full of mistyped fields would
otherwise flood the log past the transport's budget for rejected frames.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from protocol import Inbound
from tests.runtime.conftest import FakeConnector
from tests.runtime.test_rejected_log import SUPPRESSED, launch

BAD_SOURCE = {"user_name": True, "thread_id": [1], "chat_topic": {"x": 1}}


async def test_a_flood_of_bad_fields_logs_a_bounded_number_of_lines(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _sup, inbound = await launch(nursery, connector)
    conn = await connector.connection(0)
    for i in range(50):
        event = {"text": f"m{i}", "source": {"chat_id": "c", **BAD_SOURCE}}
        await conn.send({"type": "inbound", "event": event, "bufferId": f"b{i}"})
    for _ in range(50):  # every frame is still delivered, its bad fields read as absent
        item = await inbound.receive()
        assert isinstance(item, Inbound) and item.event.source.user_name is None
    assert [r for r in caplog.records if r.name == "relay.protocol"] == []
    soft = [r.getMessage() for r in caplog.records if "ignoring non-text" in r.getMessage()]
    assert len(soft) == 10  # 150 problems, one window's budget of lines
    await trio.sleep(10.5)
    summaries = [r.getMessage() for r in caplog.records if SUPPRESSED in r.getMessage()]
    assert summaries == [f"relay: 140 {SUPPRESSED} in the last 10 s"]
