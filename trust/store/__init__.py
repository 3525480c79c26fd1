"""Client stores: SQLite (default, the state directory) and PostgreSQL (multi-instance)."""

from __future__ import annotations

from trust.records import ImportEntry as ImportEntry
from trust.records import ImportReport as ImportReport
from trust.store.base import Backend as Backend
from trust.store.base import ClientStore as ClientStore
from trust.store.base import SqlClientStore as SqlClientStore
from trust.store.postgres import open_postgres_store as open_postgres_store
from trust.store.sqlite import open_sqlite_store as open_sqlite_store
from trust.store.tx import ApplyContext as ApplyContext
from trust.store.tx import AttemptWindow as AttemptWindow
from trust.store.tx import CounterDelta as CounterDelta
from trust.store.tx import StoreView as StoreView
