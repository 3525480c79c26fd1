"""The state in PostgreSQL: its versioned tables, and a connection the shared SQL runs on.

Every gateway's state lives in the same ``relay_state_*`` tables, keyed by ``gateway_id``,
so many gateways share one database. A connection opened for one gateway gets temporary
views named like the SQLite tables (``relay_outbox``, ``relay_turns``, …) that show and
write only that gateway's rows (``WITH CHECK OPTION``, ``gateway_id`` filled in by
default), so the statements of ``_outbox``/``_turns``/``_claims`` run unchanged: only the
parameter style differs (``?`` becomes ``%s``). The schema version is one row of
``relay_state_schema``; migrations run under a transaction-scoped advisory lock, so
processes starting together migrate once and neither fails.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql

from relay_runtime._state._records import LeaseLost, StateError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from psycopg.rows import RowMaker

#: Serialises migrations across processes (``pg_advisory_xact_lock``); the trust store
#: uses its own key.
MIGRATION_LOCK_KEY: Final = 0x72656C61795F7374  # "relay_st"
CONNECT_TIMEOUT_S: Final = 5
#: A statement that waits longer than this fails (and the batch with it) instead of
#: holding the state's one connection; the engine retries written-behind records.
STATEMENT_TIMEOUT_MS: Final = 15_000

# Forward-only migrations: index i upgrades schema version i to i + 1. Never edit a shipped
# entry; append a new one.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE relay_state_outbox (
        gateway_id  TEXT    NOT NULL,
        id          BIGINT  GENERATED ALWAYS AS IDENTITY,
        platform    TEXT    NOT NULL,
        bot_id      TEXT    NOT NULL,
        action_json TEXT    NOT NULL,
        request_id  TEXT    NOT NULL,
        kind        TEXT    NOT NULL CHECK (kind IN ('send', 'follow_up')),
        created_at  DOUBLE PRECISION NOT NULL,
        expires_at  DOUBLE PRECISION NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (gateway_id, id)
    );
    CREATE INDEX relay_state_outbox_expires ON relay_state_outbox (gateway_id, expires_at);

    CREATE TABLE relay_state_turns (
        gateway_id  TEXT    NOT NULL,
        turn_id     BIGINT  NOT NULL,
        session_key TEXT    NOT NULL,
        k_msg       TEXT,
        k_buf       TEXT,
        state       TEXT    NOT NULL,
        started_at  DOUBLE PRECISION NOT NULL,
        ended_at    DOUBLE PRECISION,
        error       TEXT,
        inbound     TEXT,
        resumes     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (gateway_id, turn_id)
    );
    CREATE INDEX relay_state_turns_state ON relay_state_turns (gateway_id, state);
    CREATE INDEX relay_state_turns_ended ON relay_state_turns (gateway_id, ended_at);

    CREATE TABLE relay_state_claims (
        gateway_id   TEXT   NOT NULL,
        claim_id     BIGINT NOT NULL,
        state        TEXT   NOT NULL CHECK (state IN ('in_flight', 'completed')),
        created_at   DOUBLE PRECISION NOT NULL,
        completed_at DOUBLE PRECISION,
        PRIMARY KEY (gateway_id, claim_id)
    );
    CREATE INDEX relay_state_claims_state
        ON relay_state_claims (gateway_id, state, completed_at);

    CREATE TABLE relay_state_keys (
        gateway_id TEXT   NOT NULL,
        key        TEXT   NOT NULL,
        claim_id   BIGINT NOT NULL,
        PRIMARY KEY (gateway_id, key),
        FOREIGN KEY (gateway_id, claim_id) REFERENCES relay_state_claims (gateway_id, claim_id)
    );
    CREATE INDEX relay_state_keys_claim ON relay_state_keys (gateway_id, claim_id);

    CREATE TABLE relay_state_meta (
        gateway_id TEXT  NOT NULL,
        name       TEXT  NOT NULL,
        value      BYTEA NOT NULL,
        PRIMARY KEY (gateway_id, name)
    );

    CREATE TABLE relay_state_lease (
        gateway_id TEXT        PRIMARY KEY,
        holder     TEXT        NOT NULL,
        token      BIGINT      NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    """,
    # Issue 15, as in the SQLite file: a completed claim is one row written once, numbered
    # in completion order (seq) so forgetting the oldest is a range; in-flight claims are
    # carried by their running turns; the one turn index left holds the running turns.
    """
    CREATE TABLE relay_state_dedupe (
        gateway_id   TEXT   NOT NULL,
        seq          BIGINT NOT NULL,
        claim_id     BIGINT NOT NULL,
        completed_at DOUBLE PRECISION NOT NULL,
        key1         TEXT,
        key2         TEXT,
        PRIMARY KEY (gateway_id, seq)
    );
    INSERT INTO relay_state_dedupe (gateway_id, seq, claim_id, completed_at, key1, key2)
        SELECT c.gateway_id,
               row_number() OVER (PARTITION BY c.gateway_id ORDER BY c.completed_at, c.claim_id),
               c.claim_id, c.completed_at,
               (SELECT min(k.key) FROM relay_state_keys k
                WHERE k.gateway_id = c.gateway_id AND k.claim_id = c.claim_id),
               (SELECT CASE WHEN count(*) > 1 THEN max(k.key) END FROM relay_state_keys k
                WHERE k.gateway_id = c.gateway_id AND k.claim_id = c.claim_id)
        FROM relay_state_claims c WHERE c.state = 'completed';
    INSERT INTO relay_state_meta (gateway_id, name, value)
        SELECT gateway_id, 'claims_reserved', convert_to(max(claim_id)::text, 'UTF8')
        FROM relay_state_claims GROUP BY gateway_id
        ON CONFLICT (gateway_id, name) DO NOTHING;
    DROP TABLE relay_state_keys;
    DROP TABLE relay_state_claims;
    ALTER TABLE relay_state_turns ADD COLUMN claim_id BIGINT;
    DROP INDEX relay_state_turns_state;
    DROP INDEX relay_state_turns_ended;
    CREATE INDEX relay_state_turns_running ON relay_state_turns (gateway_id, turn_id)
        WHERE state = 'running';
    """,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

#: The per-connection views: the name the shared SQL uses → the table it shows.
_VIEWS: Final = {
    "relay_outbox": "relay_state_outbox",
    "relay_turns": "relay_state_turns",
    "relay_dedupe": "relay_state_dedupe",
    "relay_meta": "relay_state_meta",
}


def migrate(conn: psycopg.Connection[Any], location: str) -> None:
    """Create or upgrade the tables, once, whoever else is starting (advisory lock)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS relay_state_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM relay_state_schema").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state database {location!r} has schema version {version}, newer than "
                f"this relay-runtime supports ({SCHEMA_VERSION}); upgrade relay-runtime"
            )
        for script in _MIGRATIONS[version:]:
            conn.execute(script.encode())
        if row is None:
            conn.execute("INSERT INTO relay_state_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif version != SCHEMA_VERSION:
            conn.execute("UPDATE relay_state_schema SET version = %s", (SCHEMA_VERSION,))


def connect(dsn: str, location: str) -> psycopg.Connection[Any]:
    """A connection (autocommit: the callers write ``BEGIN`` and ``COMMIT``), migrated."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise StateError(f"state database {location!r} unreachable: {exc}") from exc
    try:
        # Not in the connect options: the DSN's own options (a search_path) stay in force.
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}".encode())
        migrate(conn, location)
    except BaseException:
        conn.close()
        raise
    return conn


class PgRow:
    """A row read by position or by column name, like ``sqlite3.Row``."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _pg_rows(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return functools.partial(PgRow, names)


_SAVEPOINT: Final = b"SAVEPOINT relay_op"
_RELEASE: Final = b"RELEASE relay_op"
_DEFERRED: Final = frozenset({_SAVEPOINT, _RELEASE})


@functools.lru_cache(maxsize=512)
def render(text: str) -> bytes:
    """``text`` (SQLite's dialect as the shared SQL writes it) for PostgreSQL."""
    if text == "BEGIN IMMEDIATE":
        return b"BEGIN"
    return text.replace("?", "%s").encode()


class PgConnection:
    """One gateway's connection: the calls of :class:`~relay_runtime._state._batch.DB`.

    It reconnects (at the start of a transaction) after the server dropped it; until that
    works, ``BEGIN`` raises ``psycopg.OperationalError``, a storage failure for the engine.
    With a ``fence`` (the lease's token), every transaction first checks, with the lease
    row locked ``FOR SHARE`` until it commits, that this process still holds the lease:
    else it raises :class:`LeaseLost` and writes nothing. A takeover has to wait for a
    transaction that passed the check, so a stale holder never writes after it.
    """

    def __init__(
        self,
        dsn: str,
        gateway_id: str,
        location: str,
        fence: Callable[[], int] | None = None,
    ) -> None:
        self._dsn = dsn
        self._gateway_id = gateway_id
        self._location = location
        self._fence = fence
        self._conn: psycopg.Connection[PgRow] | None = None
        #: Savepoint statements waiting to go out with the next statement.
        self._deferred: list[bytes] = []
        self._open()

    def _open(self) -> None:
        conn = connect(self._dsn, self._location)
        try:
            gateway = sql.Literal(self._gateway_id)
            for view, table in _VIEWS.items():
                conn.execute(
                    sql.SQL(
                        "CREATE TEMP VIEW {} AS SELECT * FROM {} WHERE gateway_id = {}"
                        " WITH CASCADED CHECK OPTION"
                    ).format(sql.Identifier(view), sql.Identifier(table), gateway)
                )
                conn.execute(
                    sql.SQL("ALTER VIEW {} ALTER COLUMN gateway_id SET DEFAULT {}").format(
                        sql.Identifier(view), gateway
                    )
                )
        except BaseException:
            conn.close()
            raise
        conn.row_factory = _pg_rows
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        if self._conn is None or self._conn.broken or self._conn.closed:
            return False
        status = self._conn.info.transaction_status
        return status in (
            psycopg.pq.TransactionStatus.INTRANS,
            psycopg.pq.TransactionStatus.INERROR,
            psycopg.pq.TransactionStatus.ACTIVE,
        )

    def _live(self) -> psycopg.Connection[PgRow]:
        if self._conn is None or self._conn.broken or self._conn.closed:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            try:
                self._open()
            except StateError as exc:
                cause = exc.__cause__
                if isinstance(cause, psycopg.OperationalError):
                    raise cause from None  # the server is away: a storage failure
                raise
        assert self._conn is not None
        return self._conn

    def execute(self, text: str, parameters: Any = (), /) -> psycopg.Cursor[PgRow]:
        statement = render(text)
        if statement == b"BEGIN":
            return self._begin()
        conn = self._open_conn()
        if statement in _DEFERRED:
            # Sent with the next statement, in the same round trip: a savepoint per
            # operation would otherwise cost two round trips of its own.
            if statement == _RELEASE and self._deferred[-1:] == [_SAVEPOINT]:
                self._deferred.pop()  # nothing ran in between
            else:
                self._deferred.append(statement)
            return conn.cursor()
        if statement in (b"COMMIT", b"ROLLBACK"):
            self._deferred.clear()  # both end every savepoint
        elif statement == b"ROLLBACK TO relay_op" and self._deferred[-1:] == [_SAVEPOINT]:
            self._deferred.pop()  # the savepoint was never sent: nothing ran since
            return conn.cursor()
        if not self._deferred:
            return conn.execute(statement, parameters)
        with conn.pipeline():
            self._send_deferred(conn)
            cur = conn.execute(statement, parameters)
        return cur

    def executemany(self, text: str, parameters: Iterable[Any], /) -> None:
        conn = self._open_conn()
        with conn.pipeline(), conn.cursor() as cur:
            self._send_deferred(conn)
            cur.executemany(render(text), parameters)

    def _open_conn(self) -> psycopg.Connection[PgRow]:
        if self._conn is None:
            raise psycopg.OperationalError("the state database connection is closed")
        return self._conn

    def _send_deferred(self, conn: psycopg.Connection[PgRow]) -> None:
        deferred, self._deferred = self._deferred, []
        for statement in deferred:
            conn.execute(statement)

    def _begin(self) -> psycopg.Cursor[PgRow]:
        self._deferred.clear()
        conn = self._live()
        try:
            return self._begin_on(conn)
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            # Dropped while idle (a server restart, pg_terminate_backend): nothing of this
            # transaction ran yet, so it starts again on a fresh connection.
            return self._begin_on(self._live())

    def _begin_on(self, conn: psycopg.Connection[PgRow]) -> psycopg.Cursor[PgRow]:
        if self._fence is None:
            return conn.execute(b"BEGIN")
        token = self._fence()
        with conn.pipeline():  # one round trip
            conn.execute(b"BEGIN")
            cur = conn.execute(
                b"SELECT 1 FROM relay_state_lease WHERE gateway_id = %s AND token = %s FOR SHARE",
                (self._gateway_id, token),
            )
        if cur.fetchone() is None:
            conn.execute(b"ROLLBACK")
            raise LeaseLost(
                f"state database {self._location!r}: the lease of gateway "
                f"{self._gateway_id!r} (token {token}) was taken over; write refused"
            )
        return cur

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
