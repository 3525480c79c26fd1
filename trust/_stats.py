"""Trust metrics (TR §9): monotonic counters since the engine started, and what the
engine holds in memory.

:class:`TrustStats` is a frozen snapshot that also reads as a mapping, so the gateway can
put it under ``stats["trust"]`` as it is. :class:`EngineSnapshot` is a frozen copy of the
engine's cache and audit-tail position (``TrustEngine.snapshot()``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

import attrs

from trust._records import Counters


@attrs.frozen
class DecideNs:
    """Time spent in ``decide``: count, sum and max in nanoseconds."""

    count: int = 0
    sum: int = 0
    max: int = 0


@attrs.frozen
class TrustStats(Mapping[str, object]):
    """A snapshot of the engine's counters; keys are the field names."""

    decisions: Mapping[str, int]
    allowed: int
    denied: int
    commands: Mapping[str, int]
    llm_calls: int
    llm_failures: Mapping[str, int]
    llm_budget_denied: int
    llm_breaker_skips: int
    cache_hits: int
    cache_misses: int
    agent_promotions: int
    agent_promotions_dropped: int
    invites_accepted: int
    invites_rejected: int
    payments_verified: int
    payments_rejected: int
    ops: Mapping[str, int]
    ops_refused: int
    store_errors: int
    decide_ns: DecideNs
    background_errors: int = 0
    """Unexpected failures of a background job (flush, tail, prune); it runs again."""
    invite_attempts_limited: int = 0
    """``/invite`` attempts refused unlooked because a failure window was full."""

    def __getitem__(self, key: str) -> object:
        if key not in attrs.fields_dict(TrustStats):
            raise KeyError(key)
        value: object = getattr(self, key)
        return attrs.asdict(value) if isinstance(value, DecideNs) else value

    def __iter__(self) -> Iterator[str]:
        return iter(attrs.fields_dict(TrustStats))

    def __len__(self) -> int:
        return len(attrs.fields_dict(TrustStats))


@attrs.define
class StatsRecorder:
    """The engine's mutable counters; :meth:`snapshot` freezes them."""

    decisions: Counter[str] = attrs.field(factory=Counter)
    allowed: int = 0
    denied: int = 0
    commands: Counter[str] = attrs.field(factory=Counter)
    llm_calls: int = 0
    llm_failures: Counter[str] = attrs.field(factory=Counter)
    llm_budget_denied: int = 0
    llm_breaker_skips: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    agent_promotions: int = 0
    agent_promotions_dropped: int = 0
    invites_accepted: int = 0
    invites_rejected: int = 0
    payments_verified: int = 0
    payments_rejected: int = 0
    ops: Counter[str] = attrs.field(factory=Counter)
    ops_refused: int = 0
    store_errors: int = 0
    background_errors: int = 0
    invite_attempts_limited: int = 0
    decide_count: int = 0
    decide_sum: int = 0
    decide_max: int = 0

    def timed_decide(self, ns: int) -> None:
        """Record one ``decide`` call's duration."""
        self.decide_count += 1
        self.decide_sum += ns
        if ns > self.decide_max:
            self.decide_max = ns

    def snapshot(self) -> TrustStats:
        """A frozen copy."""
        return TrustStats(
            decisions=dict(self.decisions),
            allowed=self.allowed,
            denied=self.denied,
            commands=dict(self.commands),
            llm_calls=self.llm_calls,
            llm_failures=dict(self.llm_failures),
            llm_budget_denied=self.llm_budget_denied,
            llm_breaker_skips=self.llm_breaker_skips,
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            agent_promotions=self.agent_promotions,
            agent_promotions_dropped=self.agent_promotions_dropped,
            invites_accepted=self.invites_accepted,
            invites_rejected=self.invites_rejected,
            payments_verified=self.payments_verified,
            payments_rejected=self.payments_rejected,
            ops=dict(self.ops),
            ops_refused=self.ops_refused,
            store_errors=self.store_errors,
            decide_ns=DecideNs(self.decide_count, self.decide_sum, self.decide_max),
            background_errors=self.background_errors,
            invite_attempts_limited=self.invite_attempts_limited,
        )


@attrs.frozen
class EngineSnapshot:
    """A copy of what one engine holds in memory: its cache, the trust-agent calls in
    flight and how far its audit-log tail has read. For operators and tests checking that
    the cache stays bounded and that the tail keeps up; it does not change afterwards."""

    views: tuple[tuple[str, str | None], ...]
    """Cached store views by (client id, secondary id), least recently used first."""
    view_ids: frozenset[str]
    """Every client id a cached view is filed under (a change to one drops its views)."""
    verdicts: tuple[str, ...]
    """Clients with a trust-agent verdict held in memory, least recently used first."""
    counters: Mapping[str, Counters]
    """Each counted client's counters as this instance sees them (stored plus unflushed)."""
    consultations: Mapping[str, int]
    """Clients with a trust-agent call in flight, to how many more messages wait on it."""
    last_audit_id: int
    """The newest audit id the tail has read."""
    audit_gaps: frozenset[int]
    """Audit ids below it not read yet (a transaction that may still commit); each is
    given up after ``AUDIT_GAP_WAIT_S``."""
