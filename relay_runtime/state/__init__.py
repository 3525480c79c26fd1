"""The durable state: reply outbox, turn results, the durable inbox and the replay-dedupe
window, behind one interface (:class:`StateStore`) the dispatcher and the reply layer use.

:class:`StateDB` is the SQLite store (``<state_dir>/relay.db``). Its parts, each in a module
named for what it holds: ``_records`` (records, limits, errors), ``_schema`` (the file and
its migrations), ``_engine`` (group commit, write-behind, storage-failure episodes),
``_outbox``, ``_turns`` (turns and the durable inbox), ``_claims`` (the dedupe window's
claims), ``_store`` (opening and crash recovery), ``_interface`` (the protocols).
"""

from __future__ import annotations

from relay_runtime.dedupe import ClaimHandle, ClaimResult, ClaimStatus
from relay_runtime.state._batch import _Op as _Op  # tests queue raw operations
from relay_runtime.state._engine import is_storage_error
from relay_runtime.state._interface import OutboxStore, StateStore, TurnStore
from relay_runtime.state._records import (
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
from relay_runtime.state._schema import SCHEMA_VERSION
from relay_runtime.state._store import StateDB

__all__ = [
    "DB_FILENAME",
    "FOLLOW_UP_TTL_S",
    "OUTBOX_MAX_ATTEMPTS",
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
    "MessageKey",
    "OutboxEntry",
    "OutboxFull",
    "OutboxKind",
    "OutboxStore",
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
