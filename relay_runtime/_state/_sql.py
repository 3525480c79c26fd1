"""SQLite statements and row decoding the parts of the state db share."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from relay_runtime._state._batch import chunks
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


def complete_claims_in(
    conn: DB, completed: Sequence[tuple[int, float]], forgotten: list[int]
) -> None:
    """Mark ``(claim_id, now)`` pairs completed, then delete the ``forgotten`` claims."""
    for chunk in chunks(completed):
        cases = " ".join(["WHEN ? THEN ?"] * len(chunk))
        conn.execute(
            "UPDATE relay_dedupe_claims SET state = 'completed',"
            f" completed_at = CASE claim_id {cases} END"
            f" WHERE state = 'in_flight' AND claim_id IN ({','.join('?' * len(chunk))})",
            [*(v for pair in chunk for v in pair), *(claim_id for claim_id, _ in chunk)],
        )
    delete_claims(conn, forgotten)


def delete_claims(conn: DB, claim_ids: Sequence[int]) -> None:
    if not claim_ids:
        return
    params = [(c,) for c in claim_ids]
    conn.executemany("DELETE FROM relay_dedupe_keys WHERE claim_id = ?", params)
    conn.executemany("DELETE FROM relay_dedupe_claims WHERE claim_id = ?", params)


def insert_claims(conn: DB, claims: Sequence[tuple[int, Sequence[str]]], now: float) -> None:
    """Record new IN_FLIGHT claims and their keys (``(claim_id, keys)`` each)."""
    insert_claims_at(conn, [(claim_id, keys, now) for claim_id, keys in claims])


def insert_claims_at(conn: DB, claims: Sequence[tuple[int, Sequence[str], float]]) -> None:
    """Record new IN_FLIGHT claims, their keys and when each was made, in two statements."""
    if not claims:
        return
    conn.executemany(
        "INSERT INTO relay_dedupe_claims (claim_id, state, created_at) VALUES (?, 'in_flight', ?)",
        [(claim_id, now) for claim_id, _, now in claims],
    )
    # Plain INSERT: the file follows the window exactly, so a key taken here is free there;
    # if not, that is an error to see, not to paper over.
    keys = [(key, claim_id) for claim_id, claim_keys, _ in claims for key in claim_keys]
    if keys:
        conn.executemany("INSERT INTO relay_dedupe_keys (key, claim_id) VALUES (?, ?)", keys)


#: A turn to record ``running``: turn id, session key, ``K_msg``, ``K_buf``, start time and
#: the kept inbound frame.
TurnStart = tuple[int, str, MessageKey | None, str | None, float, str | None]


def start_in(conn: DB, turns: Sequence[TurnStart]) -> None:
    """Record turns ``running``, in one statement."""
    if not turns:
        return
    conn.executemany(
        "INSERT INTO relay_turns"
        " (turn_id, session_key, k_msg, k_buf, state, started_at, inbound)"
        " VALUES (?, ?, ?, ?, 'running', ?, ?)",
        [
            (
                turn_id,
                session_key,
                None if k_msg is None else json.dumps(list(k_msg)),
                k_buf,
                now,
                inbound,
            )
            for turn_id, session_key, k_msg, k_buf, now, inbound in turns
        ],
    )
