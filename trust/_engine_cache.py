"""The engine's per-client cache: views, verdicts, aliases and unflushed counters, and the
background jobs that keep it true (counter flush, audit-log tail, prune).

A view or verdict read while its client changed is used once but not cached: changes
bump an invalidation generation, and every read remembers the generation it started at.
:class:`ClientCache` is a part of :class:`trust._engine.TrustEngine`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Final

import attrs
import trio

from trust._engine_config import TrustConfig
from trust._identity import Identification
from trust._model import AgentVerdict
from trust._records import Counters, StoreError
from trust._stats import StatsRecorder
from trust._store.base import ClientStore
from trust._store.tx import DAY_MS, HOUR_MS, CounterDelta, StoreView

log = logging.getLogger("trust.engine")

AUDIT_GAP_WAIT_S: Final = 30.0
"""How long the tail waits for a skipped audit id to appear: PostgreSQL assigns ids at
insert, so a transaction that commits late shows up below ids already seen (or never,
when it rolled back)."""
MAX_AUDIT_GAPS: Final = 10_000
AUDIT_START_WINDOW: Final = 1_000


@attrs.define
class PendingCounts:
    """A client's increments since the last flush (a :class:`CounterDelta` being built):
    updated in place per message, frozen by :meth:`delta` when the flush takes it."""

    client_id: str
    first_seen: int
    last_seen: int
    requests: int
    day: int
    requests_today: int
    hour: int
    requests_hour: int
    agent_calls_hour: int = 0
    invite_failures_hour: int = 0

    @classmethod
    def of(cls, delta: CounterDelta) -> PendingCounts:
        """Increments that start as ``delta`` (a failed flush's, put back)."""
        return cls(*attrs.astuple(delta, recurse=False))

    def delta(self) -> CounterDelta:
        """These increments as a frozen delta for ``add_counts`` (the same fields)."""
        return CounterDelta(*attrs.astuple(self, recurse=False))


@attrs.define
class ClientCount:
    """A client's counters: the stored base plus what this instance has not flushed."""

    first_seen: int
    last_seen: int
    requests: int
    day: int
    requests_today: int
    hour: int
    requests_hour: int
    agent_calls_hour: int
    invite_failures_hour: int
    pending: PendingCounts | None = None

    @classmethod
    def from_stored(cls, stored: Counters | None, now: int) -> ClientCount:
        """The counters as stored (a new client: none yet, first seen now)."""
        if stored is None:
            return cls(now, now, 0, now // DAY_MS, 0, now // HOUR_MS, 0, 0, 0)
        return cls(
            stored.first_seen,
            stored.last_seen,
            stored.requests,
            stored.day,
            stored.requests_today,
            stored.hour,
            stored.requests_hour,
            stored.agent_calls_hour,
            stored.invite_failures_hour,
        )

    def as_counters(self, client_id: str) -> Counters:
        """These counters as a frozen row."""
        return Counters(
            client_id,
            self.first_seen,
            self.last_seen,
            self.requests,
            self.day,
            self.requests_today,
            self.hour,
            self.requests_hour,
            self.agent_calls_hour,
            self.invite_failures_hour,
        )

    def roll(self, now: int) -> None:
        """Restart the day and hour buckets when ``now`` is in a later one."""
        day, hour = now // DAY_MS, now // HOUR_MS
        if day != self.day:
            self.day, self.requests_today = day, 0
        if hour != self.hour:
            self.hour, self.requests_hour = hour, 0
            self.agent_calls_hour = self.invite_failures_hour = 0

    def add(
        self, client_id: str, now: int, *, requests: int = 0, agent: int = 0, failures: int = 0
    ) -> None:
        """Count one event now, in the totals and in the pending increments."""
        if now // HOUR_MS != self.hour or now // DAY_MS != self.day:
            self.roll(now)
        if now > self.last_seen:
            self.last_seen = now
        self.requests += requests
        self.requests_today += requests
        self.requests_hour += requests
        self.agent_calls_hour += agent
        self.invite_failures_hour += failures
        p = self.pending
        if p is None:
            p = self.pending = PendingCounts(
                client_id, self.first_seen, now, 0, self.day, 0, self.hour, 0
            )
        elif p.day != self.day or p.hour != self.hour:
            # An hour or day boundary: keep totals, restart the bucketed increments.
            if p.day != self.day:
                p.day, p.requests_today = self.day, 0
            p.hour = self.hour
            p.requests_hour = p.agent_calls_hour = p.invite_failures_hour = 0
        # In place: a new frozen delta per message was most of this call.
        p.last_seen = now
        p.requests += requests
        p.requests_today += requests
        p.requests_hour += requests
        p.agent_calls_hour += agent
        p.invite_failures_hour += failures


def merge_deltas(older: CounterDelta, newer: CounterDelta) -> CounterDelta:
    """Two unflushed deltas of one client as one (a failed flush and what came after)."""

    def bucket(old: int, new: int, same: bool) -> int:
        return old + new if same else new

    same_day, same_hour = older.day == newer.day, older.hour == newer.hour
    return attrs.evolve(
        newer,
        first_seen=min(older.first_seen, newer.first_seen),
        last_seen=max(older.last_seen, newer.last_seen),
        requests=older.requests + newer.requests,
        requests_today=bucket(older.requests_today, newer.requests_today, same_day),
        requests_hour=bucket(older.requests_hour, newer.requests_hour, same_hour),
        agent_calls_hour=bucket(older.agent_calls_hour, newer.agent_calls_hour, same_hour),
        invite_failures_hour=bucket(
            older.invite_failures_hour, newer.invite_failures_hour, same_hour
        ),
    )


class ClientCache:
    """The cache half of the engine (its state is set up by :meth:`_init_cache`)."""

    config: TrustConfig
    store: ClientStore
    _stats: StatsRecorder

    def _init_cache(self) -> None:
        self._views: OrderedDict[tuple[str, str | None], StoreView] = OrderedDict()
        self._keys_by_id: dict[str, set[tuple[str, str | None]]] = {}
        self._counts: dict[str, ClientCount] = {}
        self._verdicts: OrderedDict[str, tuple[AgentVerdict, int]] = OrderedDict()  # LRU
        self._bound: dict[str, str] = {}
        # The sender's identity per (platform, user_id, user_id_alt): canonicalisation is a
        # pure function of them under the engine's fixed rules, and it is most of the warm
        # path's own time (NFC normalisation, the platform rule, a scan of every character).
        self._identities: dict[tuple[str | None, str | None, str | None], Identification] = {}
        self._last_audit = 0
        self._audit_gaps: dict[int, float] = {}  # missing audit id -> give up at (trio time)
        # Invalidation generations: a view or verdict read while its client changed is used
        # once but not cached (the tail may already have passed that change).
        self._generation = 0
        self._changed: OrderedDict[str, int] = OrderedDict()  # id -> generation of last change
        self._forgotten = 0  # the newest generation evicted from _changed

    # --- views, aliases, counters -------------------------------------------------------------

    def _identify(
        self, platform: str | None, user_id: str | None, user_id_alt: str | None
    ) -> Identification:
        """The sender's identity (``Canonicalizer.identify``), remembered per raw triple."""
        key = (platform, user_id, user_id_alt)
        try:
            ident = self._identities.get(key)
        except TypeError:  # not text (a hand-built event): canonicalisation says why
            return self.config.canonicalizer.identify(platform, user_id, user_id_alt)
        if ident is None:
            ident = self.config.canonicalizer.identify(platform, user_id, user_id_alt)
            if len(self._identities) >= self.config.cache_size:
                self._identities.clear()
            self._identities[key] = ident
        return ident

    async def _bind(self, secondary: str, primary: str) -> None:
        if secondary in self._bound:
            return
        bound = await self.store.bind_alias(secondary, primary)
        if bound != primary:
            log.warning("alias conflict: %s is bound to %s, not %s", secondary, bound, primary)
        if len(self._bound) >= self.config.cache_size:
            self._bound.clear()
        self._bound[secondary] = bound

    async def _view(self, primary: str, secondary: str | None) -> StoreView:
        key = (primary, secondary)
        view = self._views.get(key)
        if view is not None:
            self._views.move_to_end(key)
            return view
        mark = self._generation
        view = await self.store.view(primary, secondary)
        if self._changed_since(self._key_ids(key, view), mark):
            return view
        self._views[key] = view
        for cid in self._key_ids(key, view):
            self._keys_by_id.setdefault(cid, set()).add(key)
        if len(self._views) > self.config.cache_size:
            old_key, old_view = self._views.popitem(last=False)
            self._unindex(old_key, old_view)
        return view

    @staticmethod
    def _key_ids(key: tuple[str, str | None], view: StoreView) -> set[str]:
        return {key[0], view.record.client_id} | ({key[1]} if key[1] else set())

    def _unindex(self, key: tuple[str, str | None], view: StoreView) -> None:
        for cid in self._key_ids(key, view):
            keys = self._keys_by_id.get(cid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_by_id[cid]

    def _invalidate(self, client_id: str) -> None:
        """Forget cached views and verdicts involving ``client_id`` (or its primary)."""
        self._generation += 1
        ids = {client_id, self._bound.get(client_id, client_id)}
        for cid in ids:
            self._changed[cid] = self._generation
            self._changed.move_to_end(cid)
            if len(self._changed) > self.config.cache_size:
                _, self._forgotten = self._changed.popitem(last=False)
            self._forget_views(cid)
            self._verdicts.pop(cid, None)

    def _forget_views(self, cid: str) -> None:
        for key in list(self._keys_by_id.get(cid, ())):
            view = self._views.pop(key, None)
            if view is not None:
                self._unindex(key, view)

    def _changed_since(self, ids: set[str], mark: int) -> bool:
        """Whether any of ``ids`` was invalidated after generation ``mark``."""
        if self._forgotten > mark:
            return True  # the record of what changed since is gone: assume it did
        return any(self._changed.get(cid, 0) > mark for cid in ids)

    def _count(self, cid: str, stored: Counters | None, now: int) -> ClientCount:
        count = self._counts.get(cid)
        if count is None:
            count = self._counts[cid] = ClientCount.from_stored(stored, now)
        return count

    # --- background tasks ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Write pending counter increments (every 5 s and at shutdown)."""
        deltas = [c.pending.delta() for c in self._counts.values() if c.pending is not None]
        if not deltas:
            return
        for c in self._counts.values():
            c.pending = None
        try:
            await self.store.add_counts(deltas)
        except Exception as exc:
            self._stats.store_errors += 1
            log.warning("counter flush failed (will retry): %s", exc)
            for d in deltas:
                count = self._counts.get(d.client_id)
                if count is not None:
                    merged = d if count.pending is None else merge_deltas(d, count.pending.delta())
                    count.pending = PendingCounts.of(merged)
            if not isinstance(exc, StoreError):
                raise
            return
        if len(self._counts) > self.config.cache_size:
            # Drop flushed counters with their views: a view's counters are as old as the
            # view, so the next message re-reads both from the store.
            for cid in [k for k, v in self._counts.items() if v.pending is None]:
                del self._counts[cid]
                self._forget_views(cid)

    async def tail(self) -> None:
        """Drop views and verdicts of clients changed by any writer since the last look.

        Ids skipped over are remembered as gaps and looked for again until they appear or
        :data:`AUDIT_GAP_WAIT_S` passes (a late commit on PostgreSQL, T20).
        """
        since = min(self._audit_gaps, default=self._last_audit + 1) - 1
        since = min(since, self._last_audit)
        changes = await self.store.changes_since(since)
        now = trio.current_time()
        for audit_id, client_id in changes:
            if audit_id <= self._last_audit:
                if self._audit_gaps.pop(audit_id, None) is None:
                    continue  # seen on an earlier look
            else:
                missing = range(self._last_audit + 1, audit_id)
                if len(self._audit_gaps) + len(missing) <= MAX_AUDIT_GAPS:
                    for gap in missing:
                        self._audit_gaps[gap] = now + AUDIT_GAP_WAIT_S
                else:
                    log.warning("audit ids %s skipped untracked", missing)
                self._last_audit = audit_id
            if client_id is not None:
                self._invalidate(client_id)
        for gap, give_up in list(self._audit_gaps.items()):
            if now >= give_up:
                del self._audit_gaps[gap]

    async def _every(self, interval: float, job: str) -> None:
        while True:
            await trio.sleep(interval)
            try:
                if job == "flush":
                    await self.flush()
                elif job == "tail":
                    await self.tail()
                else:
                    await self.store.prune()
            except StoreError as exc:
                self._stats.store_errors += 1
                log.warning("trust %s failed: %s", job, exc)
            except Exception:
                # A background job never takes the engine down; it runs again next interval.
                self._stats.background_errors += 1
                log.exception("trust %s failed", job)
