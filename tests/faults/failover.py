"""What the failover scenarios share: the gateways' PostgreSQL settings, a gateway id of
their own per run (and its rows removed after), and the evidence drawn from the journals.

Replies are stranded in a gateway's outbox by leaving sends unanswered (the connector's
``gate``; ``outbound_timeout_s`` is short here) until the gateway has acked some of their
messages: it acks a buffered message only once the turn's completion and its replies are
committed, so those replies are in the outbox. A reply's ``requestId`` is derived from its
delivery, so whether the next process sends it from the outbox or runs the turn again, the
connector sees the same id; what tells the two apart is the agent: a reply carried over in
the outbox is posted with no new turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from tests.faults.fault_journal import read_records
from tests.faults.harness import FaultRun
from tests.faults.sockets import posted_on, sockets

__all__ = [
    "STANDBY",
    "Carried",
    "Stranded",
    "carried",
    "forget_gateway",
    "gateway_env",
    "pending_replies",
    "strand_replies",
    "stranded",
    "unique_gateway_id",
]

#: What a gateway logs while it waits for another process's lease on its gateway id.
STANDBY = "waiting to take over"
#: The lease's time to live in these scenarios: shorter than the default 8 s, so a takeover
#: is quick and well inside the documented 10 s bound on a loaded machine, yet with room
#: for the holder's renewals (it stops serving 3 s after the last one that worked).
LEASE_TTL_S = 4


def gateway_env(dsn: str) -> dict[str, str]:
    """Environment for a gateway whose state (and lease) live in PostgreSQL at ``dsn``."""
    return {
        "RELAY_STATE_DSN": dsn,
        "RELAY_LEASE_TTL_S": str(LEASE_TTL_S),
        # Sends left unanswered reach the outbox after a second, not the default 30 s.
        "GATEWAY_RELAY_OUTBOUND_TIMEOUT_S": "1",
    }


def unique_gateway_id(scenario: str) -> str:
    """A gateway id no other run uses, so runs sharing the database never collide."""
    return f"gw-{scenario}-{uuid.uuid4().hex[:12]}"


def forget_gateway(dsn: str, gateway_id: str) -> int:
    """Delete every row the runtime keeps for ``gateway_id`` (any table keyed by it)."""
    import psycopg
    from psycopg import sql

    removed = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT c.table_schema, c.table_name FROM information_schema.columns c"
            " JOIN information_schema.tables t USING (table_schema, table_name)"
            " WHERE c.column_name = 'gateway_id' AND c.table_schema = current_schema()"
            " AND t.table_type = 'BASE TABLE' ORDER BY c.table_name"
        ).fetchall()
        # Rows referenced by another table's rows go once those are gone: retry in passes.
        for _ in range(len(tables)):
            left = []
            for schema, table in tables:
                statement = sql.SQL("DELETE FROM {} WHERE gateway_id = %s").format(
                    sql.Identifier(schema, table)
                )
                try:
                    removed += conn.execute(statement, (gateway_id,)).rowcount
                except psycopg.errors.ForeignKeyViolation:
                    left.append((schema, table))
            tables = left
        assert not tables, f"rows of {gateway_id} left in {tables}"
    return removed


def pending_replies(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Replies asked for and not performed: ``requestId`` -> message number."""
    asked: dict[str, int] = {}
    posted: set[str] = set()
    for rec in records:
        if rec["ev"] == "outbound" and rec["op"] in ("send", "follow_up") and rec["n"] is not None:
            asked[rec["rid"]] = rec["n"]
        elif rec["ev"] == "post":
            posted.add(rec["rid"])
    return {rid: n for rid, n in asked.items() if rid not in posted}


@attrs.frozen
class Stranded:
    """Replies asked for and not performed (``requestId`` -> message), and which of them
    belong to a message the gateway acked: acked only once its turn's completion and its
    replies are committed, so those replies are in the outbox, and the turn is done."""

    pending: Mapping[str, int]
    settled: frozenset[str]


def stranded(records: Sequence[Mapping[str, Any]]) -> Stranded:
    """The replies stranded so far (see :class:`Stranded`)."""
    pending = pending_replies(records)
    delivered = {r["bid"]: r["n"] for r in records if r["ev"] == "deliver" and r["bid"]}
    # An ack the connector then lost ("ack-lost") was still sent: the gateway had settled it.
    acked = {
        delivered[r["bid"]]
        for r in records
        if r["ev"] in ("ack", "ack-lost") and r["bid"] in delivered
    }
    return Stranded(pending, frozenset(rid for rid, n in pending.items() if n in acked))


def unanswered(run: FaultRun) -> int:
    """Messages delivered so far that no post answered yet."""
    run.refresh()
    delivered = {r["n"] for r in read_records(run.journal_path) if r["ev"] == "deliver"}
    return len(delivered - set(run.answered))


async def strand_replies(run: FaultRun, settled: int) -> None:
    """Leave sends unanswered and hold the schedule until ``settled`` replies sit in the
    gateway's outbox with their messages acked (see :class:`Stranded`).

    With sends unanswered, every message delivered and not answered ends that way; if fewer
    than ``settled`` are (a fast gateway, a backlog just cleared), the schedule lets a few
    more out. Held, the rest of the schedule is kept for later, however long this takes on
    a loaded machine. Sends stay unanswered until ``run.open_sends()``, the schedule held
    until ``run.resume()``.
    """
    await run.tell("gate")
    await run.hold_live()
    while unanswered(run) < settled and not run.done:
        await run.resume()
        await run.until(
            lambda: unanswered(run) >= settled or run.done, f"{settled} messages in flight"
        )
        await run.hold_live()
    await run.until(
        lambda: len(stranded(read_records(run.journal_path)).settled) >= settled,
        f"{settled} replies of acked messages stranded in the outbox",
    )


@attrs.frozen
class Carried:
    """What became of the replies stranded when a gateway went away."""

    pending: int
    settled: int
    #: Posted afterwards on a socket opened after the gateway went away.
    delivered_after: int
    #: Settled ones posted afterwards with no new turn for their message: from the outbox.
    from_outbox: int
    #: Never posted, or posted on a socket that was already open (by the gone gateway).
    missing: tuple[str, ...]
    #: Messages of settled replies whose turn ran again (a lost dedupe window).
    settled_rerun: tuple[int, ...]


def carried(
    records: Sequence[Mapping[str, Any]],
    left: Stranded,
    gone_at: float,
    later_agent_lines: Iterable[str],
) -> Carried:
    """Which replies ``left`` stranded a later socket delivered, and whether the settled
    ones came from the outbox (no ``start <n>`` in ``later_agent_lines``, the agent's
    lines since the gateway went away)."""
    opened_after = {s.conn for s in sockets(records) if s.accepted_at > gone_at}
    on = posted_on(records)
    started = {
        int(n)
        for kind, _, n in (line.partition(" ") for line in later_agent_lines)
        if kind == "start" and n.isdigit()
    }
    delivered = {rid for rid in left.pending if on.get(rid) in opened_after}
    return Carried(
        pending=len(left.pending),
        settled=len(left.settled),
        delivered_after=len(delivered),
        from_outbox=sum(1 for rid in left.settled & delivered if left.pending[rid] not in started),
        missing=tuple(sorted(set(left.pending) - delivered)),
        settled_rerun=tuple(sorted({left.pending[rid] for rid in left.settled} & started)),
    )
