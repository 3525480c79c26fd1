"""The async :class:`ClientStore` Protocol (TR §3) and its SQL implementation.

:class:`SqlClientStore` runs each call of a transaction function (:mod:`trust._store.core`,
:mod:`~trust._store.queries`, :mod:`~trust._store.onboarding`, :mod:`~trust._store.audit`) in
one transaction in a worker thread (``trio.to_thread.run_sync``) behind the backend's
``CapacityLimiter``: 1 for SQLite's single connection, the pool size for PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import trio

from trust._model import Level, StateChange
from trust._planning import AtomicOp
from trust._records import (
    AuditEntry,
    AuditTier,
    CachedVerdict,
    ClientRecord,
    Counters,
    ImportEntry,
    ImportReport,
    Invite,
    OpResult,
    TrustOpError,
)
from trust._store import audit, core, onboarding, queries
from trust._store.schema import Dialect
from trust._store.tx import HOUR_MS, ApplyContext, AttemptWindow, CounterDelta, StoreView, Tx

T = TypeVar("T")


def wall_ms() -> int:
    """Milliseconds since the epoch, UTC: the store's timestamps."""
    return time.time_ns() // 1_000_000


class Backend(Protocol):
    """A database the store can run transactions on."""

    dialect: Dialect
    limiter: trio.CapacityLimiter

    def run_tx(self, fn: Callable[[Tx], T], write: bool) -> T:
        """Run ``fn`` in one transaction (committed unless it raises); called in a thread.

        Driver errors become :class:`~trust._records.StoreError`.
        """
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


class ClientStore(Protocol):
    """Where clients, aliases, the audit log, invites, payments, verdicts and counters live."""

    clock: Callable[[], int]

    async def get(self, client_id: str) -> ClientRecord:
        """A client's row, or its :meth:`ClientRecord.absent` view (aliases resolved)."""
        ...

    async def view(self, client_id: str, secondary: str | None) -> StoreView:
        """The engine's read: row, alias blocks, counters."""
        ...

    async def resolve_alias(self, client_id: str) -> str:
        """The primary id ``client_id`` is bound to, or itself."""
        ...

    async def bind_alias(self, alias_id: str, client_id: str) -> str:
        """Bind ``alias_id`` → ``client_id`` (first binding wins); the binding in force."""
        ...

    async def run_op(
        self, op: AtomicOp, client_id: str, *, actor: str, tier: AuditTier, reason: str | None
    ) -> OpResult:
        """One atomic function in one transaction (TR §2)."""
        ...

    async def apply(
        self, changes: Sequence[StateChange], actor: str, tier: AuditTier, context: ApplyContext
    ) -> list[AuditEntry]:
        """One decision's changes in one transaction, or ``PreconditionFailed`` (T18)."""
        ...

    async def revert(self, audit_id: int, *, actor: str, tier: AuditTier) -> OpResult:
        """Undo one audit row (T24)."""
        ...

    async def record_refusal(
        self, op: str, client_id: str | None, *, actor: str, tier: AuditTier, reason: str
    ) -> AuditEntry:
        """Audit a ``not_authorized`` refusal as ``refused:<op>``."""
        ...

    async def list_clients(
        self, *, level: Level | None = None, admins: bool = False, blocked: bool = False
    ) -> list[ClientRecord]:
        """Stored clients, filtered."""
        ...

    async def audit(self, client_id: str | None = None, limit: int = 50) -> list[AuditEntry]:
        """Newest audit rows first."""
        ...

    async def audit_entry(self, audit_id: int) -> AuditEntry | None:
        """One audit row."""
        ...

    async def stored_ids(self) -> list[str]:
        """Every stored client or alias id (T5)."""
        ...

    async def bootstrap_admins(self, client_ids: Sequence[str]) -> list[AuditEntry]:
        """Admins from configuration, only while the store has none (T17)."""
        ...

    async def import_states(
        self, wanted: Sequence[ImportEntry], *, actor: str, overwrite: bool, dry_run: bool
    ) -> ImportReport:
        """Import client states in one transaction (TR §3 Import)."""
        ...

    async def insert_invite(self, invite: Invite, tier: AuditTier) -> AuditEntry:
        """Store a new invite (its code's digest only)."""
        ...

    async def find_invite(self, digest: bytes) -> Invite | None:
        """The invite with that code digest."""
        ...

    async def list_invites(self) -> list[Invite]:
        """Every invite."""
        ...

    async def revoke_invite(self, invite_id: str, *, actor: str, tier: AuditTier) -> AuditEntry:
        """Revoke an invite."""
        ...

    async def reserve_invite_attempt(
        self, attempt_id: str, windows: Sequence[AttemptWindow]
    ) -> str | None:
        """Count an ``/invite`` attempt in every window atomically, or refuse: the scope of
        the first full window, or None when counted (shared by every instance)."""
        ...

    async def release_invite_attempt(self, attempt_id: str) -> None:
        """Un-count an attempt whose code was right."""
        ...

    async def payment_used(self, tx_id: str) -> str | None:
        """The client a payment already onboarded."""
        ...

    async def cache_get(self, client_id: str, digest: str) -> CachedVerdict | None:
        """An unexpired verdict."""
        ...

    async def cache_put(self, verdict: CachedVerdict) -> None:
        """Keep a verdict."""
        ...

    async def cache_drop(self, client_id: str) -> None:
        """Forget a client's verdicts."""
        ...

    async def add_counts(self, deltas: Sequence[CounterDelta]) -> None:
        """Additive counter increments."""
        ...

    async def changes_since(self, audit_id: int) -> list[tuple[int, str | None]]:
        """Audit ids and clients changed after ``audit_id`` (T20)."""
        ...

    async def last_audit_id(self) -> int:
        """The newest audit id."""
        ...

    async def count_audit(self, action: str, tier: AuditTier, since_ms: int) -> int:
        """Audit rows of one action and tier since a time (agent promotions per hour)."""
        ...

    async def prune(self) -> int:
        """Drop expired cache rows and stale stranger counters."""
        ...

    async def aclose(self) -> None:
        """Close the store."""
        ...


class SqlClientStore:
    """:class:`ClientStore` over a SQL :class:`Backend` (SQLite or PostgreSQL)."""

    def __init__(self, backend: Backend, clock: Callable[[], int] = wall_ms) -> None:
        self.backend = backend
        self.clock = clock

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgres``."""
        return self.backend.dialect.name

    async def transaction(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        """``fn(tx)`` in one transaction in a worker thread: committed unless it raises.

        Every method of the store is one such call; operator tooling uses it to run the
        transaction functions of :mod:`trust._store` (or its own SQL) the same way.
        ``write=False`` marks a read: SQLite begins it without taking the write lock.
        """
        return await trio.to_thread.run_sync(
            self.backend.run_tx, fn, write, limiter=self.backend.limiter
        )

    async def get(self, client_id: str) -> ClientRecord:
        """See :meth:`ClientStore.get`."""

        def read(tx: Tx) -> ClientRecord:
            primary = core.resolve(tx, client_id)
            return core.read_client(tx, primary) or ClientRecord.absent(primary)

        return await self.transaction(read, write=False)

    async def view(self, client_id: str, secondary: str | None) -> StoreView:
        """See :meth:`ClientStore.view`."""
        return await self.transaction(
            lambda tx: queries.read_view(tx, client_id, secondary), write=False
        )

    async def resolve_alias(self, client_id: str) -> str:
        """See :meth:`ClientStore.resolve_alias`."""
        return await self.transaction(lambda tx: core.resolve(tx, client_id), write=False)

    async def bind_alias(self, alias_id: str, client_id: str) -> str:
        """See :meth:`ClientStore.bind_alias`."""
        now = self.clock()
        return await self.transaction(lambda tx: queries.bind_alias(tx, alias_id, client_id, now))

    async def run_op(
        self, op: AtomicOp, client_id: str, *, actor: str, tier: AuditTier, reason: str | None
    ) -> OpResult:
        """See :meth:`ClientStore.run_op`; a ``not_authorized`` refusal is audited."""
        now = self.clock()
        try:
            return await self.transaction(
                lambda tx: core.run_op(
                    tx, op, client_id, actor=actor, tier=tier, reason=reason, now_ms=now
                )
            )
        except TrustOpError as exc:
            if exc.code == "not_authorized":
                await self.record_refusal(op, client_id, actor=actor, tier=tier, reason=exc.message)
            raise

    async def apply(
        self, changes: Sequence[StateChange], actor: str, tier: AuditTier, context: ApplyContext
    ) -> list[AuditEntry]:
        """See :meth:`ClientStore.apply`."""
        if not changes:
            return []
        now = self.clock()
        return await self.transaction(
            lambda tx: core.apply_changes(
                tx, changes, actor=actor, tier=tier, context=context, now_ms=now
            )
        )

    async def revert(self, audit_id: int, *, actor: str, tier: AuditTier) -> OpResult:
        """See :meth:`ClientStore.revert`."""
        now = self.clock()
        try:
            return await self.transaction(
                lambda tx: core.revert(tx, audit_id, actor=actor, tier=tier, now_ms=now)
            )
        except TrustOpError as exc:
            if exc.code == "not_authorized":
                await self.record_refusal(
                    "revert", None, actor=actor, tier=tier, reason=f"#{audit_id}: {exc.message}"
                )
            raise

    async def record_refusal(
        self, op: str, client_id: str | None, *, actor: str, tier: AuditTier, reason: str
    ) -> AuditEntry:
        """See :meth:`ClientStore.record_refusal`."""
        now = self.clock()
        return await self.transaction(
            lambda tx: core.record_refusal(tx, op, client_id, actor, tier, reason, now)
        )

    async def list_clients(
        self, *, level: Level | None = None, admins: bool = False, blocked: bool = False
    ) -> list[ClientRecord]:
        """See :meth:`ClientStore.list_clients`."""
        return await self.transaction(
            lambda tx: queries.list_clients(tx, level=level, admins=admins, blocked=blocked),
            write=False,
        )

    async def audit(self, client_id: str | None = None, limit: int = 50) -> list[AuditEntry]:
        """See :meth:`ClientStore.audit`."""
        return await self.transaction(
            lambda tx: queries.read_audit_log(tx, client_id, limit), write=False
        )

    async def audit_entry(self, audit_id: int) -> AuditEntry | None:
        """See :meth:`ClientStore.audit_entry`."""
        return await self.transaction(lambda tx: audit.read_audit(tx, audit_id), write=False)

    async def stored_ids(self) -> list[str]:
        """See :meth:`ClientStore.stored_ids`."""
        return await self.transaction(queries.stored_ids, write=False)

    async def bootstrap_admins(self, client_ids: Sequence[str]) -> list[AuditEntry]:
        """See :meth:`ClientStore.bootstrap_admins`."""
        now = self.clock()
        return await self.transaction(lambda tx: core.bootstrap_admins(tx, client_ids, now))

    async def import_states(
        self, wanted: Sequence[ImportEntry], *, actor: str, overwrite: bool, dry_run: bool
    ) -> ImportReport:
        """See :meth:`ClientStore.import_states`."""
        now = self.clock()
        return await self.transaction(
            lambda tx: core.import_states(
                tx, wanted, actor=actor, overwrite=overwrite, dry_run=dry_run, now_ms=now
            )
        )

    async def insert_invite(self, invite: Invite, tier: AuditTier) -> AuditEntry:
        """See :meth:`ClientStore.insert_invite`."""
        return await self.transaction(lambda tx: onboarding.insert_invite(tx, invite, tier))

    async def find_invite(self, digest: bytes) -> Invite | None:
        """See :meth:`ClientStore.find_invite`."""
        return await self.transaction(lambda tx: onboarding.find_invite(tx, digest), write=False)

    async def list_invites(self) -> list[Invite]:
        """See :meth:`ClientStore.list_invites`."""
        return await self.transaction(onboarding.list_invites, write=False)

    async def revoke_invite(self, invite_id: str, *, actor: str, tier: AuditTier) -> AuditEntry:
        """See :meth:`ClientStore.revoke_invite`."""
        now = self.clock()
        return await self.transaction(
            lambda tx: onboarding.revoke_invite(tx, invite_id, actor, tier, now)
        )

    async def reserve_invite_attempt(
        self, attempt_id: str, windows: Sequence[AttemptWindow]
    ) -> str | None:
        """See :meth:`ClientStore.reserve_invite_attempt`."""
        now = self.clock()
        return await self.transaction(
            lambda tx: onboarding.reserve_invite_attempt(tx, attempt_id, windows, now)
        )

    async def release_invite_attempt(self, attempt_id: str) -> None:
        """See :meth:`ClientStore.release_invite_attempt`."""
        await self.transaction(lambda tx: onboarding.release_invite_attempt(tx, attempt_id))

    async def invite_attempts(self, scope: str, window_ms: int = HOUR_MS) -> int:
        """Attempts counted in ``scope`` within the last ``window_ms``."""
        since = self.clock() - window_ms
        return await self.transaction(
            lambda tx: onboarding.count_invite_attempts(tx, scope, since), write=False
        )

    async def payment_used(self, tx_id: str) -> str | None:
        """See :meth:`ClientStore.payment_used`."""
        return await self.transaction(lambda tx: onboarding.payment_used(tx, tx_id), write=False)

    async def cache_get(self, client_id: str, digest: str) -> CachedVerdict | None:
        """See :meth:`ClientStore.cache_get`."""
        now = self.clock()
        return await self.transaction(
            lambda tx: queries.cache_get(tx, client_id, digest, now), write=False
        )

    async def cache_put(self, verdict: CachedVerdict) -> None:
        """See :meth:`ClientStore.cache_put`."""
        await self.transaction(lambda tx: queries.cache_put(tx, verdict))

    async def cache_drop(self, client_id: str) -> None:
        """See :meth:`ClientStore.cache_drop`."""
        await self.transaction(lambda tx: queries.cache_drop(tx, client_id))

    async def counters(self, client_id: str) -> Counters | None:
        """A client's stored counters."""
        return await self.transaction(lambda tx: queries.read_counters(tx, client_id), write=False)

    async def add_counts(self, deltas: Sequence[CounterDelta]) -> None:
        """See :meth:`ClientStore.add_counts`."""
        if deltas:
            await self.transaction(lambda tx: queries.add_counts(tx, deltas))

    async def changes_since(self, audit_id: int) -> list[tuple[int, str | None]]:
        """See :meth:`ClientStore.changes_since`."""
        return await self.transaction(lambda tx: audit.changes_since(tx, audit_id), write=False)

    async def last_audit_id(self) -> int:
        """See :meth:`ClientStore.last_audit_id`."""
        return await self.transaction(audit.last_audit_id, write=False)

    async def count_audit(self, action: str, tier: AuditTier, since_ms: int) -> int:
        """See :meth:`ClientStore.count_audit`."""
        return await self.transaction(
            lambda tx: audit.count_audit(tx, action, tier, since_ms), write=False
        )

    async def prune(self) -> int:
        """See :meth:`ClientStore.prune`."""
        now = self.clock()
        return await self.transaction(lambda tx: queries.prune(tx, now))

    async def aclose(self) -> None:
        """See :meth:`ClientStore.aclose`."""
        await trio.to_thread.run_sync(self.backend.close, limiter=self.backend.limiter)
