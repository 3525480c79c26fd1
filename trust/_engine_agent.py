"""The engine's calls to the trust agent (TR §7): verdict cache, one shared call per client
in flight, hourly budgets, and a breaker that skips the agent after repeated failures.

:class:`AgentCalls` is a part of :class:`trust._engine.TrustEngine`.
"""

from __future__ import annotations

import logging
from typing import Final

import attrs
import trio

from protocol._events import MessageEvent
from trust._consultation import ClientTools, ConsultRequest, TrustAgentLike
from trust._engine_cache import ClientCache
from trust._model import AgentVerdict, ClientState, ConsultAgent, Decision, RequestFacts
from trust._policy import Policy
from trust._records import CachedVerdict
from trust._store.tx import HOUR_MS

log = logging.getLogger("trust.engine")

AGENT_NOT_CONFIGURED: Final = "trust agent not configured"
AGENT_UNAVAILABLE: Final = "trust agent unavailable"
AGENT_BUDGET: Final = "trust agent budget exhausted"
BREAKER_FAILURES: Final = 3
BREAKER_SKIP_S: Final = 60.0


@attrs.define
class Consultation:
    """One in-flight trust-agent call that a client's concurrent messages share."""

    done: trio.Event = attrs.field(factory=trio.Event)
    verdict: AgentVerdict | None = None
    failure: str | None = None


class AgentCalls(ClientCache):
    """The trust-agent half of the engine (its state is set up by :meth:`_init_agent_calls`)."""

    policy: Policy
    agent: TrustAgentLike | None

    def _init_agent_calls(self) -> None:
        self._inflight: dict[str, Consultation] = {}
        self._llm_hour = (0, 0)  # (hour bucket, calls)
        self._failures = 0
        self._skip_until = 0.0

    async def _consult(
        self, event: MessageEvent, client: ClientState, ask: ConsultAgent
    ) -> AgentVerdict | Decision:
        cid = client.client_id
        cached = await self._cached_verdict(cid)
        if cached is not None:
            self._stats.cache_hits += 1
            return cached
        self._stats.cache_misses += 1

        def deny(reason: str) -> Decision:
            return Decision(
                False, reason, "agent", rule_index=ask.rule_index, policy=self.policy.name
            )

        agent = self.agent
        if agent is None:
            return deny(AGENT_NOT_CONFIGURED)
        pending = self._inflight.get(cid)
        if pending is not None:
            await pending.done.wait()
            return pending.verdict if pending.verdict is not None else deny(AGENT_UNAVAILABLE)
        now = self.store.clock()
        count = self._counts[cid]
        count.roll(now)
        hour, calls = self._llm_hour
        if hour != now // HOUR_MS:
            hour, calls = now // HOUR_MS, 0
        if (
            count.agent_calls_hour >= self.config.llm_calls_per_client_hour
            or calls >= self.config.llm_calls_per_hour
        ):
            self._stats.llm_budget_denied += 1
            return deny(AGENT_BUDGET)
        if trio.current_time() < self._skip_until:
            self._stats.llm_breaker_skips += 1
            return deny(AGENT_UNAVAILABLE)
        self._llm_hour = (hour, calls + 1)
        count.add(cid, now, agent=1)
        pending = self._inflight[cid] = Consultation()
        mark = self._generation
        try:
            request = ConsultRequest(
                policy=self.policy,
                client=client,
                platform=event.source.platform_raw,
                chat_type=event.source.chat_type,
                trigger=ask.reason,
                untrusted=event.text[:1000],
                tools=ClientTools(cid, self.store),
            )
            self._stats.llm_calls += 1
            try:
                verdict = await agent.consult(request)
            except Exception as exc:
                log.warning("trust agent failed for %s: %s", cid, type(exc).__name__)
                self._stats.llm_failures["error"] += 1
                verdict = None
            if verdict is None:
                self._failures += 1
                if self._failures >= BREAKER_FAILURES:
                    self._skip_until = trio.current_time() + BREAKER_SKIP_S
                    self._failures = 0
                return deny(AGENT_UNAVAILABLE)
            self._failures = 0
            verdict = attrs.evolve(verdict, cached=False)
            pending.verdict = verdict
            if not self._changed_since({cid}, mark):  # else the state moved meanwhile
                await self._keep_verdict(cid, verdict)
            return verdict
        finally:
            pending.done.set()
            del self._inflight[cid]

    async def _cached_verdict(self, cid: str) -> AgentVerdict | None:
        if self.policy.cache_s <= 0:
            return None
        now = self.store.clock()
        held = self._verdicts.get(cid)
        if held is not None:
            verdict, expires = held
            if now < expires:
                self._verdicts.move_to_end(cid)
                return verdict
            del self._verdicts[cid]
        mark = self._generation
        row = await self.store.cache_get(cid, self.policy.digest)
        if row is None:
            return None
        verdict = AgentVerdict(allow=row.allow, reason=row.reason, cached=True)
        if not self._changed_since({cid}, mark):
            self._hold_verdict(cid, verdict, row.expires_at)
        return verdict

    def _hold_verdict(self, cid: str, verdict: AgentVerdict, expires: int) -> None:
        self._verdicts[cid] = (verdict, expires)
        self._verdicts.move_to_end(cid)
        if len(self._verdicts) > self.config.cache_size:
            self._verdicts.popitem(last=False)

    async def _keep_verdict(self, cid: str, verdict: AgentVerdict) -> None:
        ttl = self.policy.cache_s
        if verdict.cache_s is not None:
            ttl = min(ttl, verdict.cache_s)  # a verdict may shorten the TTL, never lengthen it
        if ttl <= 0:
            return
        now = self.store.clock()
        expires = now + ttl * 1000
        cached = AgentVerdict(allow=verdict.allow, reason=verdict.reason, cached=True)
        self._hold_verdict(cid, cached, expires)
        await self.store.cache_put(
            CachedVerdict(cid, self.policy.digest, verdict.allow, verdict.reason, now, expires)
        )

    async def _promotion_budget(self, facts: RequestFacts, verdict: AgentVerdict) -> RequestFacts:
        if not any(c.op == "promote_to_contact" for c in verdict.staged):
            return facts
        since = self.store.clock() - HOUR_MS
        done = await self.store.count_audit("promote_to_contact", "agent", since)
        return attrs.evolve(
            facts, agent_promotion_allowed=done < self.config.agent_promotions_per_hour
        )
