"""The fault suite's summary (one line per scenario in the terminal report, pass or fail),
and the PostgreSQL server the failover scenarios share: absent, they skip with the reason,
unless ``RELAY_REQUIRE_PG=1`` (CI) makes that a failure."""

from __future__ import annotations

from typing import Any

import pytest

from tests.pg import require_pg

#: ``faults: <scenario> messages=... answered=... duplicates=... lost=... reruns=...`` lines.
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("fault suite counts")
        for line in SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The PostgreSQL DSN (skip, or fail with RELAY_REQUIRE_PG=1)."""
    return require_pg()
