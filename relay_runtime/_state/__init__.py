"""The durable state: reply outbox, turn results, the durable inbox and the replay-dedupe
window, behind one interface (:class:`StateStore`) the dispatcher and the reply layer use.

:class:`StateDB` is the SQLite store (``<state_dir>/relay.db``); ``PgStateDB`` keeps the
same state in PostgreSQL, and ``Lease`` lets one process at a time serve a gateway id
there (both need the ``postgres`` extra, so they are imported on first use, as is
``PG_SCHEMA_VERSION``, the version of the PostgreSQL tables). The parts,
each in a module named for what it holds: ``_records`` (records, limits, errors),
``_schema`` (the SQLite file and its migrations), ``_engine`` (group commit, write-behind,
storage-failure episodes), ``_outbox``, ``_turns`` (turns and the durable inbox),
``_claims`` (the dedupe window's claims), ``_store`` (opening and crash recovery),
``_pg_schema`` and ``_pg`` (the PostgreSQL tables and store), ``_lease`` (the lease),
``_interface`` (the protocols).
"""

from __future__ import annotations

from typing import Any

from relay_runtime._dedupe import ClaimHandle, ClaimResult, ClaimStatus
from relay_runtime._state._engine import is_storage_error
from relay_runtime._state._interface import OutboxStore, StateStore, TurnStore
from relay_runtime._state._records import (
    DB_FILENAME,
    FOLLOW_UP_TTL_S,
    OUTBOX_MAX_ATTEMPTS,
    REPLY_KEY_BYTES,
    RESUME_MAX,
    TURN_END_STATES,
    TURN_RESULT_TTL_S,
    Attempt,
    ClaimRequest,
    InboxRecord,
    LeaseLost,
    MessageKey,
    OutboxEntry,
    OutboxFull,
    OutboxKind,
    StateError,
    StorageFailed,
    TurnEndState,
    TurnRecord,
    TurnState,
)
from relay_runtime._state._schema import SCHEMA_VERSION
from relay_runtime._state._store import StateDB

__all__ = [
    "DB_FILENAME",
    "FOLLOW_UP_TTL_S",
    "OUTBOX_MAX_ATTEMPTS",
    "PG_SCHEMA_VERSION",
    "REPLY_KEY_BYTES",
    "RESUME_MAX",
    "SCHEMA_VERSION",
    "TURN_END_STATES",
    "TURN_RESULT_TTL_S",
    "Attempt",
    "ClaimHandle",
    "ClaimRequest",
    "ClaimResult",
    "ClaimStatus",
    "InboxRecord",
    "Lease",
    "LeaseLost",
    "LeaseSql",
    "MessageKey",
    "OutboxEntry",
    "OutboxFull",
    "OutboxKind",
    "OutboxStore",
    "PgStateDB",
    "StateDB",
    "StateError",
    "StateStore",
    "StorageFailed",
    "TurnEndState",
    "TurnRecord",
    "TurnState",
    "TurnStore",
    "is_storage_error",
]

#: Name -> (module, its name there).
_LAZY = {
    "PgStateDB": ("relay_runtime._state._pg", "PgStateDB"),
    "PG_SCHEMA_VERSION": ("relay_runtime._state._pg_schema", "SCHEMA_VERSION"),
    "Lease": ("relay_runtime._state._lease", "Lease"),
    "LeaseSql": ("relay_runtime._state._lease", "LeaseSql"),
}


def __getattr__(name: str) -> Any:
    """The PostgreSQL parts, imported on first use (psycopg is an optional extra)."""
    found = _LAZY.get(name)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, attribute = found
    return getattr(importlib.import_module(module), attribute)
