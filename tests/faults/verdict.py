"""A scenario's verdict: its summary line (printed, and in the terminal summary) and the
exactly-once checks every scenario makes."""

from __future__ import annotations

import trio

from tests.faults.conftest import SUMMARY
from tests.faults.fault_journal import Tally
from tests.faults.harness import FaultRun

__all__ = ["check", "report"]


def report(run: FaultRun, **extra: object) -> Tally:
    """Count the run, record and print its summary line; the tally for the assertions."""
    result = run.tally()
    wall_s = f"{trio.current_time() - run.began_at:.0f}"
    line = result.line(run.name, **extra, wall_s=wall_s)
    SUMMARY.append(line)
    print(line)
    return result


def check(result: Tally) -> None:
    """Exactly once: every message answered once, none lost, every buffered one acked."""
    detail = (
        f"duplicated messages {list(result.duplicate_of[:20])}, "
        f"lost messages {list(result.lost_ids[:20])}"
    )
    assert result.duplicates == 0, detail
    assert result.lost == 0, detail
    assert result.answered == result.messages, detail
    assert result.unacked == 0, f"{result.unacked} buffered deliveries never acked"
    assert result.strays == 0, f"{result.strays} posts answer no scheduled message"
