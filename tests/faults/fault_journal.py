"""The fault suite's scheduled messages, its journals, and the counts drawn from them.

Message ``n`` of a schedule is ``msg <n>`` (platform message id ``m<n>``, chat ``c<n % 64>``);
the fault agent answers it with ``reply <n>``, which is how a post names its message.

Two processes write what happened, one JSON object per line, each line one ``write(2)``
on an ``O_APPEND`` descriptor so a ``kill -9`` of the writer loses no line it returned from:

* the connector (``connector_proc.py``) journals every message it delivered (``live`` or
  ``buffered`` with its ``bufferId``), every ``inbound_ack``, every ``outbound`` it received
  every action it *performed* (posted), after its ``requestId`` dedupe, and every gateway
  socket it accepted and closed (:class:`SocketJournal`);
* the agent (``fault_agent.py``) writes ``start <n>`` / ``end <n>`` per turn to the gateway's
  standard output, which the harness keeps (a pipe, so a full state filesystem or a file-size
  limit on the gateway never touches it).

:func:`tally` turns both into the counts each scenario asserts and prints.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from protocol import MessageEvent, SessionSource

__all__ = [
    "CHATS",
    "Journal",
    "JournalReader",
    "SocketJournal",
    "Tally",
    "connection_key",
    "message",
    "message_number",
    "tally",
]

CHATS = 64


def message(n: int) -> MessageEvent:
    """Scheduled message ``n``: its own platform message id, one of ``CHATS`` chats."""
    source = SessionSource(
        platform="telegram", chat_id=f"c{n % CHATS}", user_id=f"u{n % CHATS}", message_id=f"m{n}"
    )
    return MessageEvent(text=f"msg {n}", source=source, message_id=f"m{n}")


def message_number(content: str) -> int | None:
    """The message a posted ``content`` (``reply <n>``) answers; ``None`` for anything else."""
    head, _, tail = content.partition(" ")
    if head != "reply" or not tail.isdigit():
        return None
    return int(tail)


class Journal:
    """An append-only JSON-lines file; each record is written with one ``write(2)``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, ev: str, **fields: Any) -> None:
        """Append one record; ``t`` is the wall clock, to line it up with the gateway logs."""
        record = {"ev": ev, "t": round(time.time(), 4), **fields}
        line = json.dumps(record, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        os.close(self._fd)


#: The reference connector's log lines for a socket accepted and ended (``gateway_id, id``).
CONNECTED = "gateway %r connected (connection %d)"
DISCONNECTED = "gateway %r disconnected (connection %d)"


class SocketJournal(logging.Handler):
    """Journals each gateway socket's accept and close as the connector logs it.

    The connector logs both synchronously where they happen (the accept after the upgrade
    is authenticated, the close once the socket is done), so the journal holds them in
    their true order with their true times; a watcher woken by changes could see an
    accept and a close in one wake-up and not know which came first.
    """

    def __init__(self, journal: Journal, incarnation: int) -> None:
        super().__init__(logging.INFO)
        self.journal = journal
        self.incarnation = incarnation

    def emit(self, record: logging.LogRecord) -> None:
        event = {CONNECTED: "accept", DISCONNECTED: "close"}.get(str(record.msg))
        if event is not None and isinstance(record.args, tuple):
            gid, conn = record.args
            assert isinstance(conn, int), record.args
            self.journal.write(event, gid=gid, conn=connection_key(self.incarnation, conn))


def connection_key(incarnation: int, conn_id: int) -> str:
    """How the journal names a connection: ``<connector incarnation>.<connection id>``
    (a restarted connector numbers its connections from 1 again)."""
    return f"{incarnation}.{conn_id}"


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a journal file (a torn last line is not a record)."""
    return JournalReader(path).poll()


@attrs.define
class JournalReader:
    """Reads a journal incrementally: :meth:`poll` returns the records added since."""

    path: Path
    _offset: int = 0
    _partial: bytes = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [json.loads(line) for line in lines if line]


@attrs.frozen
class Tally:
    """What became of a run's messages, from the journals.

    Posts are performed actions (the connector's requestId dedupe already applied);
    ``repeats`` the outbound frames that dedupe answered without posting; ``replays`` the
    buffered deliveries written to a gateway again (a new connection replays what was not
    acked); ``duplicates`` is every post beyond the first for one message; ``lost`` the scheduled
    messages with no post; ``reruns`` every agent start beyond the first for one message.
    """

    messages: int
    answered: int
    duplicates: int
    lost: int
    reruns: int
    live: int
    buffered: int
    acked: int
    unacked: int
    repeats: int
    replays: int
    strays: int
    duplicate_of: tuple[int, ...]
    lost_ids: tuple[int, ...]

    def line(self, scenario: str, **extra: object) -> str:
        """The one summary line CI output shows for ``scenario``."""
        fields: dict[str, object] = {
            "messages": self.messages,
            "answered": self.answered,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "reruns": self.reruns,
            **extra,
            "live": self.live,
            "buffered": self.buffered,
            "unacked": self.unacked,
            "replays": self.replays,
            "dedupes": self.repeats,
        }
        if self.strays:
            fields["strays"] = self.strays
        return f"faults: {scenario} " + " ".join(f"{k}={v}" for k, v in fields.items())

    @property
    def ok(self) -> bool:
        """Every message answered exactly once, every buffered delivery acked, no stray post."""
        return (
            self.answered == self.messages
            and self.duplicates == 0
            and self.lost == 0
            and self.unacked == 0
            and self.strays == 0
        )


def tally(
    messages: int, connector: Iterable[Mapping[str, Any]], agent_lines: Iterable[str]
) -> Tally:
    """Count ``messages`` scheduled messages against the connector journal and agent log."""
    posts: Counter[int] = Counter()
    strays = 0
    live: set[int] = set()
    buffered: dict[str, int] = {}
    acked: set[str] = set()
    repeats = 0
    pushes: Counter[str] = Counter()
    for rec in connector:
        ev = rec["ev"]
        if ev == "post" and rec["op"] in ("send", "follow_up"):
            n = message_number(rec["content"])
            if n is None or not 0 <= n < messages:
                strays += 1
            else:
                posts[n] += 1
        elif ev == "deliver":
            if rec["mode"] == "live":
                live.add(rec["n"])
            else:
                buffered[rec["bid"]] = rec["n"]
        elif ev == "ack":
            acked.add(rec["bid"])
        elif ev == "push":
            pushes[rec["bid"]] += 1
        elif ev == "outbound" and rec["repeat"]:
            repeats += 1
    starts: Counter[int] = Counter()
    for line in agent_lines:
        kind, _, rest = line.partition(" ")
        if kind == "start" and rest.isdigit():
            starts[int(rest)] += 1
    answered = sum(1 for n in range(messages) if posts[n])
    lost_ids = tuple(n for n in range(messages) if not posts[n])
    duplicate_of = tuple(sorted(n for n, c in posts.items() if c > 1))
    return Tally(
        messages=messages,
        answered=answered,
        duplicates=sum(c - 1 for c in posts.values() if c > 1),
        lost=len(lost_ids),
        reruns=sum(c - 1 for c in starts.values() if c > 1),
        live=len(live),
        buffered=len(set(buffered.values())),
        acked=len(acked & set(buffered)),
        unacked=len(set(buffered) - acked),
        repeats=repeats,
        replays=sum(c - 1 for c in pushes.values() if c > 1),
        strays=strays,
        duplicate_of=duplicate_of,
        lost_ids=lost_ids,
    )
