"""Client stores: SQLite (default, the state directory) and PostgreSQL (multi-instance)."""

from __future__ import annotations

from trust._records import ImportEntry as ImportEntry
from trust._records import ImportReport as ImportReport
from trust._store.base import Backend as Backend
from trust._store.base import ClientStore as ClientStore
from trust._store.base import SqlClientStore as SqlClientStore
from trust._store.postgres import open_postgres_store as open_postgres_store
from trust._store.sqlite import open_sqlite_store as open_sqlite_store
from trust._store.tx import ApplyContext as ApplyContext
from trust._store.tx import AttemptWindow as AttemptWindow
from trust._store.tx import CounterDelta as CounterDelta
from trust._store.tx import StoreView as StoreView
