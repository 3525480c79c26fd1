"""Rejected-frame logging is rate-limited per socket; the stats still count every frame."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from protocol import Inbound
from relay_runtime._supervisor import Supervisor
from relay_runtime._transport import RejectedFrameLog
from tests.runtime.conftest import FakeConnector, PeerConn, make_config

SUPPRESSED = "more malformed frames suppressed"


async def launch(nursery: trio.Nursery, connector: FakeConnector) -> tuple[Supervisor, Any]:
    send, recv = trio.open_memory_channel[Any](16)
    sup = Supervisor(
        make_config(),
        inbound=send,
        on_interrupt=lambda key, chat: None,
        dialer=connector.dialer,
        rng=lambda low, high: high,
    )
    nursery.start_soon(sup.run)
    await sup.wait_ready()
    return sup, recv


async def send_bad(conn: PeerConn, count: int, tag: str) -> None:
    for i in range(count):
        await conn.send_raw(f"not json {tag}{i}\n")


def lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """(per-frame lines, summary lines) logged by the supervisor at WARNING or above."""
    records = [
        r
        for r in caplog.records
        if r.name == "relay_runtime.supervisor" and r.levelno >= logging.WARNING
    ]
    per_frame = [r.getMessage() for r in records if "skipping malformed frame" in r.getMessage()]
    summaries = [r.getMessage() for r in records if SUPPRESSED in r.getMessage()]
    return per_frame, summaries


async def test_rejected_frames_log_ten_lines_then_one_summary_per_window(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sup, inbound = await launch(nursery, connector)
    conn = await connector.connection(0)
    await send_bad(conn, 25, "a")
    # A good frame behind the bad ones: the reader went on and everything before it is read.
    await conn.send({"type": "inbound", "event": {"text": "ok"}, "bufferId": "b1"})
    item = await inbound.receive()
    assert isinstance(item, Inbound)
    per_frame, summaries = lines(caplog)
    assert len(per_frame) == 10
    assert all(line.startswith("relay: skipping malformed frame") for line in per_frame)
    assert summaries == []
    assert sup.stats.malformed_frames == 25

    await trio.sleep(10.5)
    per_frame, summaries = lines(caplog)
    assert len(per_frame) == 10
    assert summaries == ["relay: 15 more malformed frames suppressed in the last 10 s"]

    # A fresh window has a fresh budget; one within budget needs no summary.
    await send_bad(conn, 3, "b")
    await trio.sleep(30)
    per_frame, summaries = lines(caplog)
    assert len(per_frame) == 13
    assert len(summaries) == 1
    assert sup.stats.malformed_frames == 28


async def test_partial_window_summary_is_logged_when_the_socket_ends(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    connector: FakeConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sup, inbound = await launch(nursery, connector)
    conn = await connector.connection(0)
    await trio.sleep(1)
    await send_bad(conn, 12, "c")
    await conn.send({"type": "inbound", "event": {"text": "ok"}, "bufferId": "b1"})
    await inbound.receive()
    await trio.sleep(4)
    await conn.close(1012, "restart")
    # The next socket has its own budget.
    conn2 = await connector.connection(1)
    await sup.wait_ready()
    await send_bad(conn2, 11, "d")
    await conn2.send({"type": "inbound", "event": {"text": "ok"}, "bufferId": "b2"})
    await inbound.receive()
    per_frame, summaries = lines(caplog)
    assert len(per_frame) == 20
    assert summaries == ["relay: 2 more malformed frames suppressed in the last 4 s"]
    await trio.sleep(10.5)
    per_frame, summaries = lines(caplog)
    assert summaries[1:] == ["relay: 1 more malformed frames suppressed in the last 10 s"]
    assert sup.stats.malformed_frames == 23


async def test_frame_at_the_window_boundary_starts_a_new_window(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("tests.rejected")
    rejected = RejectedFrameLog(logger, budget=2, window_s=5.0)
    nursery.start_soon(rejected.run)
    assert [rejected.log(logging.WARNING, f"bad {i}") for i in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    await trio.sleep(5)
    # The summary comes from the frame itself if it runs before the summary task: same lines.
    assert rejected.log(logging.ERROR, "bad 4")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger.name]
    assert messages == [
        ("WARNING", "bad 0"),
        ("WARNING", "bad 1"),
        ("WARNING", "relay: 2 more malformed frames suppressed in the last 5 s"),
        ("ERROR", "bad 4"),
    ]
    # The new window's count starts from the boundary frame.
    assert not [rejected.log(logging.WARNING, "x") for _ in range(2)][-1]
    await trio.sleep(5.5)
    assert caplog.records[-1].getMessage() == (
        "relay: 1 more malformed frames suppressed in the last 5 s"
    )
