"""The fault suite's own parts: the counts, and the connector hooks its journal relies on.

The counts must be right for the scenarios' verdicts to mean anything, and a restarted
connector must come back with its buffer and ``requestId`` memory, or a restart alone would
fabricate duplicates and losses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from protocol import DescriptorFrame, Inbound, Outbound, OutboundResult, Send
from relay_runtime.connector import Post, ReferenceConnector
from tests.connector.peer import GATEWAY, SECRET, dial, good_headers
from tests.faults.fault_journal import (
    Journal,
    JournalReader,
    SocketJournal,
    message,
    message_number,
    read_records,
    tally,
)
from tests.faults.sockets import most_live, posted_on, sockets, takeover_s

LIMIT = 10  # seconds; only hit when something is broken


def post(n: int, rid: str) -> dict[str, Any]:
    return {"ev": "post", "rid": rid, "op": "send", "content": f"reply {n}"}


def test_tally_counts_duplicates_losses_reruns_and_unacked_buffered() -> None:
    journal = [
        {"ev": "deliver", "n": 0, "mode": "live", "bid": None},
        {"ev": "deliver", "n": 1, "mode": "buffered", "bid": "b1"},
        {"ev": "deliver", "n": 2, "mode": "buffered", "bid": "b2"},
        {"ev": "deliver", "n": 3, "mode": "live", "bid": None},
        {"ev": "push", "bid": "b1", "conn": 1},
        {"ev": "push", "bid": "b1", "conn": 2},
        {"ev": "push", "bid": "b2", "conn": 2},
        {"ev": "outbound", "rid": "r0", "op": "send", "repeat": False},
        post(0, "r0"),
        {"ev": "outbound", "rid": "r0", "op": "send", "repeat": True},  # deduped: no post
        post(1, "r1"),
        post(1, "r1b"),  # a re-run under a new requestId: a duplicate
        post(2, "r2"),
        {"ev": "ack", "bid": "b1"},
        {"ev": "post", "rid": "x", "op": "send", "content": "something else"},
    ]
    agent = ["start 0", "end 0", "start 1", "start 1", "end 1", "start 2", "start 2", "start 2"]
    result = tally(4, journal, agent)
    assert (result.answered, result.duplicates, result.lost) == (3, 1, 1)
    assert result.lost_ids == (3,)
    assert result.duplicate_of == (1,)
    assert result.reruns == 3
    assert (result.live, result.buffered, result.acked, result.unacked) == (2, 2, 1, 1)
    assert (result.replays, result.repeats, result.strays) == (1, 1, 1)
    assert not result.ok
    line = result.line("demo", kills=5)
    assert line.startswith(
        "faults: demo messages=4 answered=3 duplicates=1 lost=1 reruns=3 kills=5"
    )


def test_a_clean_run_is_ok() -> None:
    journal = [
        {"ev": "deliver", "n": 0, "mode": "buffered", "bid": "b0"},
        post(0, "r0"),
        {"ev": "ack", "bid": "b0"},
    ]
    assert tally(1, journal, ["start 0", "end 0"]).ok


def test_message_number_reads_only_agent_replies() -> None:
    assert message_number("reply 17") == 17
    assert message_number("reply x") is None
    assert message_number("echo: 17") is None


def test_journal_reader_returns_each_complete_line_once(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    reader = JournalReader(path)
    assert reader.poll() == []
    journal = Journal(path)
    journal.write("a", n=1)
    with path.open("ab") as f:
        f.write(b'{"ev":"b"')  # a torn line: not a record until it is complete
    first = reader.poll()
    assert [{k: v for k, v in r.items() if k != "t"} for r in first] == [{"ev": "a", "n": 1}]
    assert isinstance(first[0]["t"], float)
    with path.open("ab") as f:
        f.write(b"}\n")
    journal.write("c")
    journal.close()
    assert [r["ev"] for r in reader.poll()] == ["b", "c"]
    assert reader.poll() == []


async def test_a_restored_connector_replays_the_buffer_and_remembers_requestids(
    nursery: trio.Nursery,
) -> None:
    posted: list[Post] = []
    connector = ReferenceConnector(secrets={GATEWAY: SECRET}, journal_sink=posted.append)
    connector.restore(
        GATEWAY,
        buffered=[("buf-old-7", Inbound(event=message(7)))],
        performed=[("r-old", {"success": True, "message_id": "m-old"})],
    )
    await nursery.start(connector.serve)
    with trio.fail_after(LIMIT):
        async with dial(connector.url, good_headers()) as peer:
            await peer.hello("telegram")
            await peer.expect(DescriptorFrame)
            replay = await peer.expect(Inbound)
            assert (replay.buffer_id, replay.event.text) == ("buf-old-7", "msg 7")
            await peer.ack("buf-old-7")
            # A requestId performed before the restart is answered, not posted again.
            await peer.send(Outbound(request_id="r-old", action=Send("c7", "reply 7")))
            repeat = await peer.expect(OutboundResult)
            await peer.send(Outbound(request_id="r-new", action=Send("c8", "reply 8")))
            fresh = await peer.expect(OutboundResult)
            await connector.wait_for(lambda: not connector.buffered(GATEWAY))
    assert repeat.result == {"success": True, "message_id": "m-old"}
    assert connector.duplicate_outbounds == 1
    assert [(p.request_id, p.message_id) for p in posted] == [("r-new", fresh.result["message_id"])]
    assert [m.content for m in connector.messages.values()] == ["reply 8"]


def test_most_live_sweeps_accepts_and_closes_in_journal_order() -> None:
    def ev(kind: str, conn: str, gid: str = "g", t: float = 0.0) -> dict[str, Any]:
        return {"ev": kind, "conn": conn, "gid": gid, "t": t}

    handover = [ev("accept", "1.1", t=1.0), ev("close", "1.1", t=5.0), ev("accept", "1.2", t=5.0)]
    assert most_live(handover, "g") == 1
    # The same times, the other order: the second socket came while the first was live.
    overlap = [ev("accept", "1.1", t=1.0), ev("accept", "1.2", t=5.0), ev("close", "1.1", t=5.0)]
    assert most_live(overlap, "g") == 2
    # Another gateway id's socket is not counted against this one.
    assert most_live([ev("accept", "1.1"), ev("accept", "1.2", gid="other")], "g") == 1
    # A connector killed with a socket open journals no close: its restart ends the socket.
    restart = [ev("accept", "1.1"), {"ev": "start", "t": 2.0}, ev("accept", "2.1", t=3.0)]
    assert most_live(restart, "g") == 1
    found = sockets([*handover, {"ev": "hello", "conn": "1.2", "t": 5.1}])
    assert [(s.conn, s.closed_at, s.hello_at) for s in found] == [
        ("1.1", 5.0, None),
        ("1.2", None, 5.1),
    ]
    assert takeover_s(found, "g", killed_at=4.0) == 1.0
    assert takeover_s(found, "g", killed_at=6.0) is None


def test_posted_on_names_the_connection_of_the_first_post() -> None:
    records = [
        {**post(1, "r1"), "conn": "1.3"},
        {**post(1, "r1"), "conn": "1.4"},
        {**post(2, "r2"), "conn": None},
    ]
    assert posted_on(records) == {"r1": "1.3", "r2": None}


async def test_the_socket_journal_records_every_accept_and_close_in_order(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "sockets.jsonl"
    journal = Journal(path)
    handler = SocketJournal(journal, incarnation=2)
    connector_log = logging.getLogger("relay.connector")
    level = connector_log.level
    connector_log.setLevel(logging.INFO)
    connector_log.addHandler(handler)
    try:
        connector = ReferenceConnector(secrets={GATEWAY: SECRET})
        await nursery.start(connector.serve)
        with trio.fail_after(LIMIT):
            async with dial(connector.url, good_headers()):
                await connector.wait_for(lambda: len(connector.connections) == 1)
                async with dial(connector.url, good_headers()):
                    await connector.wait_for(lambda: len(connector.connections) == 2)
            await connector.wait_for(lambda: not any(c.open for c in connector.connections))
            async with dial(connector.url, good_headers()):
                await connector.wait_for(lambda: len(connector.connections) == 3)
            await connector.wait_for(lambda: not any(c.open for c in connector.connections))
    finally:
        connector_log.removeHandler(handler)
        connector_log.setLevel(level)
        journal.close()
    records = read_records(path)
    assert [(r["ev"], r["conn"]) for r in records] == [
        ("accept", "2.1"),
        ("accept", "2.2"),
        ("close", "2.2"),
        ("close", "2.1"),
        ("accept", "2.3"),
        ("close", "2.3"),
    ]
    assert {r["gid"] for r in records} == {GATEWAY}
    assert most_live(records, GATEWAY) == 2
    assert most_live(records[3:], GATEWAY) == 1
