"""The PostgreSQL server the PG tests use, checked once per run.

``RELAY_TEST_PG_DSN`` names it (default: the machine's server on 127.0.0.1). Without it a
PG test skips with the reason, printed; with ``RELAY_REQUIRE_PG=1`` (CI) it fails instead.
"""

from __future__ import annotations

import os

import pytest

PG_DSN = os.environ.get("RELAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

_checked: list[str | None] = []


def require_pg() -> str:
    """The server's DSN; skip (with the reason) without one, fail with RELAY_REQUIRE_PG=1."""
    if not _checked:
        try:
            import psycopg

            with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _checked.append(None)
        except Exception as exc:
            _checked.append(f"PostgreSQL at {PG_DSN} unavailable: {exc}")
    reason = _checked[0]
    if reason is not None:
        if os.environ.get("RELAY_REQUIRE_PG") == "1":
            pytest.fail(reason + " (RELAY_REQUIRE_PG=1)")
        print(reason)
        pytest.skip(reason)
    return PG_DSN
