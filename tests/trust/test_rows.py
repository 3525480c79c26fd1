"""Store rows become records by column name (trust/_store/rows.py, issue 14)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trust._model import Level
from trust._records import AuditEntry, ClientRecord, Counters, Invite
from trust._store.rows import audit_reader, client_reader, counters_reader, invite_reader


def test_a_client_row_reads_by_column_with_driver_values_converted() -> None:
    # SQLite returns 0/1 for booleans; PostgreSQL may return NUMERIC as Decimal.
    row = ("c1", "contact", 1, "spam", "admin", Decimal(5), 0, None, None, 1, 3, 4)
    assert client_reader(row) == ClientRecord(
        client_id="c1",
        level=Level.CONTACT,
        blocked=True,
        blocked_reason="spam",
        blocked_by="admin",
        blocked_at=5,
        is_admin=False,
        agent_may_promote=True,
        created_at=3,
        updated_at=4,
    )
    assert client_reader.columns[:3] == ("client_id", "level", "blocked")


def test_audit_invite_and_counter_rows() -> None:
    head = (7, 9, "c1", "promote", "stranger", "contact", 0, None, "op", "rule")
    audit = audit_reader((*head, None, "p", "2", None, None, None, 8))
    assert audit == AuditEntry(
        id=7,
        at=9,
        client_id="c1",
        action="promote",
        from_level="stranger",
        to_level="contact",
        from_admin=False,
        to_admin=None,
        actor="op",
        tier="rule",
        policy="p",
        rule_index=2,
        reverted_by=8,
    )
    invite = invite_reader(("i1", memoryview(b"\x01\x02"), "op", 1, None, 3, 0, None, None, "n", 1))
    assert invite == Invite("i1", b"\x01\x02", "op", 1, None, 3, 0, note="n", generated=True)
    assert counters_reader(("c1", 1, 2, 3, 4, 5, 6, 7, 8, 9)) == Counters(
        "c1", 1, 2, 3, 4, 5, 6, 7, 8, 9
    )


def test_a_bad_stored_value_is_named() -> None:
    with pytest.raises(ValueError, match="unknown level 'boss'"):
        client_reader(("c1", "boss", 0, None, None, None, 0, None, None, 1, 3, 4))
    with pytest.raises(ValueError, match="unknown audit tier 'god'"):
        audit_reader((1, 2, None, "a", None, None, None, None, "x", "god", *(None,) * 7))
    with pytest.raises(ValueError):  # a row of the wrong width is refused, not misread
        counters_reader(("c1", 1, 2))
