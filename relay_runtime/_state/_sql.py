"""SQLite statements and row decoding the parts of the state db share."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import attrs

from relay_runtime._state._records import MessageKey, OutboxEntry, TurnRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay_runtime._state._batch import DB, Row


def _entry(row: Row) -> OutboxEntry:
    return OutboxEntry(
        id=row["id"],
        platform=row["platform"],
        bot_id=row["bot_id"],
        action_json=row["action_json"],
        request_id=row["request_id"],
        kind=row["kind"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        attempts=row["attempts"],
    )


def _turn(row: Row) -> TurnRecord:
    k_msg_raw = row["k_msg"]
    k_msg: MessageKey | None = None
    if k_msg_raw is not None:
        platform, chat_id, message_id = json.loads(k_msg_raw)
        k_msg = (platform, chat_id, message_id)
    return TurnRecord(
        turn_id=row["turn_id"],
        session_key=row["session_key"],
        k_msg=k_msg,
        k_buf=row["k_buf"],
        state=row["state"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        error=row["error"],
    )


#: A completed claim as the file keeps it: its number in completion order, the claim id,
#: when it completed and its (at most two) keys.
DedupeRow = tuple[int, int, float, str | None, str | None]


@attrs.frozen
class Forget:
    """Completed claims the window forgot: their numbers (``seq``), and whether they are
    all the oldest kept (``prefix``: one range DELETE removes exactly them)."""

    seqs: Sequence[int]
    prefix: bool

    @staticmethod
    def merged(forgets: Sequence[Forget]) -> Forget:
        """Several in decision order as one (a range only if each was)."""
        return Forget([seq for f in forgets for seq in f.seqs], all(f.prefix for f in forgets))


def dedupe_row(seq: int, claim_id: int, completed_at: float, keys: Sequence[str]) -> DedupeRow:
    """The row of a completed claim (a delivery has at most two keys: K_msg and K_buf)."""
    if len(keys) > 2:
        raise ValueError(f"a claim holds at most two keys, got {len(keys)}")
    key1 = keys[0] if keys else None
    key2 = keys[1] if len(keys) > 1 else None
    return (seq, claim_id, completed_at, key1, key2)


def record_dedupe(conn: DB, rows: Sequence[DedupeRow], forget: Forget) -> None:
    """Insert completed claims and delete forgotten ones, in one statement each: a claim
    both completed and forgotten here is never written; when the forgotten are the oldest
    kept, they go in one range DELETE."""
    seqs = forget.seqs
    if seqs and forget.prefix:
        upto = max(seqs)
        rows = [row for row in rows if row[0] > upto]
    if rows:
        conn.executemany(
            "INSERT INTO relay_dedupe (seq, claim_id, completed_at, key1, key2)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    if not seqs:
        return
    if forget.prefix:
        conn.execute("DELETE FROM relay_dedupe WHERE seq <= ?", (upto,))
    else:
        conn.executemany("DELETE FROM relay_dedupe WHERE seq = ?", [(seq,) for seq in seqs])


#: A turn to record ``running``: turn id, session key, ``K_msg``, ``K_buf``, start time, the
#: kept inbound frame and its claim's id.
TurnStart = tuple[int, str, MessageKey | None, str | None, float, str | None, int | None]


def turn_row(turn: TurnStart) -> list[object]:
    """The row of a turn started ``running`` (a list: a completion may end it in place)."""
    turn_id, session_key, k_msg, k_buf, now, inbound, claim_id = turn
    k_msg_text = None if k_msg is None else json.dumps(list(k_msg))
    return [turn_id, session_key, k_msg_text, k_buf, "running", now, None, None, inbound, claim_id]


def insert_turns(conn: DB, rows: Sequence[Sequence[object]]) -> None:
    """Insert turn rows (:func:`turn_row`, maybe ended already), in one statement."""
    if rows:
        conn.executemany(
            "INSERT INTO relay_turns (turn_id, session_key, k_msg, k_buf, state, started_at,"
            " ended_at, error, inbound, claim_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
