"""The fault suite's summary (one line per scenario in the terminal report, pass or fail),
and the PostgreSQL server the failover scenarios share: absent, they skip with the reason,
unless ``RELAY_REQUIRE_PG=1`` (CI) makes that a failure."""

from __future__ import annotations

import os
from typing import Any

import pytest

#: ``faults: <scenario> messages=... answered=... duplicates=... lost=... reruns=...`` lines.
SUMMARY: list[str] = []

PG_DSN = os.environ.get("RELAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("fault suite counts")
        for line in SUMMARY:
            terminalreporter.write_line(line)


def _pg_unavailable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL at {PG_DSN} unavailable: {exc}"
    return None


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The PostgreSQL DSN the gateways share (skip, or fail with RELAY_REQUIRE_PG=1)."""
    reason = _pg_unavailable()
    if reason is not None:
        if os.environ.get("RELAY_REQUIRE_PG") == "1":
            pytest.fail(reason + " (RELAY_REQUIRE_PG=1)")
        print(reason)
        pytest.skip(reason)
    return PG_DSN
