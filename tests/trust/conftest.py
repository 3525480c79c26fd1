"""Fixtures for the trust store tests: a SQLite store in tmp_path and a PostgreSQL store in
a schema of its own (RELAY_TEST_PG_DSN). Without a PostgreSQL server the PG cases skip
with the reason, unless RELAY_REQUIRE_PG=1 makes that a failure."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.pg import PG_DSN, require_pg
from trust._store import SqlClientStore, open_postgres_store, open_sqlite_store

START_MS = 1_700_000_000_000


class WallClock:
    """A settable stand-in for the store's wall clock (ms since the epoch)."""

    def __init__(self, now: int = START_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The PostgreSQL DSN (skip, or fail with RELAY_REQUIRE_PG=1)."""
    return require_pg()


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema, dropped after the test."""
    import psycopg

    name = f"trust_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}".encode())
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE".encode())


@pytest.fixture
async def sqlite_store(tmp_path: Path, wall: WallClock) -> AsyncIterator[SqlClientStore]:
    store = await open_sqlite_store(tmp_path, clock=wall)
    yield store
    await store.aclose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """Which backend a parametrized test runs on: ("sqlite", None) or ("postgres", schema)."""
    if request.param == "sqlite":
        return ("sqlite", None)
    return ("postgres", request.getfixturevalue("pg_schema"))


async def open_store(
    backend: tuple[str, str | None], tmp_path: Path, wall: WallClock
) -> SqlClientStore:
    """Another handle on the test's store (a second instance or the CLI's connection)."""
    kind, schema = backend
    if kind == "sqlite":
        return await open_sqlite_store(tmp_path, clock=wall)
    return await open_postgres_store(PG_DSN, schema=schema, clock=wall)


@pytest.fixture
async def store(
    backend: tuple[str, str | None], tmp_path: Path, wall: WallClock
) -> AsyncIterator[SqlClientStore]:
    """The store under test, once per backend."""
    opened = await open_store(backend, tmp_path, wall)
    yield opened
    await opened.aclose()


@pytest.fixture(autouse=True)
def _no_trust_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust tests never pick up the developer's or CI's trust settings (a RELAY_TRUST_DSN
    in the environment would otherwise send the CLI tests to PostgreSQL)."""
    for name in (
        "RELAY_TRUST",
        "RELAY_TRUST_DSN",
        "RELAY_STATE_DIR",
        "RELAY_TRUST_CASEFOLD_PLATFORMS",
        "RELAY_TRUST_BOOTSTRAP_ADMINS",
    ):
        monkeypatch.delenv(name, raising=False)
