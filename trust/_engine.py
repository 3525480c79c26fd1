"""The trust engine: ``evaluate(event) -> TrustOutcome`` for every inbound message (TR §5).

Per message: identify the sender; parse a command; read the client's view (LRU cache,
refreshed from the store); bump counters; run ``/trust`` through :mod:`trust._ops`;
pre-resolve what the policy can use (invite lookup, payment check); ``decide``; on
``ConsultAgent`` use a cached verdict or ask the trust agent and decide again; apply the
decision's changes in one store transaction, re-deciding once if the state moved.

:func:`open_trust_engine` owns the nursery of the background tasks: counter flushes every
5 s, the audit-log tail every second (so a block written by the CLI or another instance
holds here within that interval, T20), and a prune every 10 minutes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Final

import attrs
import trio

from protocol._events import MessageEvent
from trust._agent import TrustAgent
from trust._commands import Command, InviteCommand, PayCommand, TrustCommand, parse_command
from trust._consultation import (
    ClientTools as ClientTools,
)
from trust._consultation import (
    ConsultRequest as ConsultRequest,
)
from trust._consultation import (
    TrustAgentLike as TrustAgentLike,
)
from trust._engine_agent import AgentCalls
from trust._engine_cache import AUDIT_START_WINDOW, ClientCount
from trust._engine_checks import OnboardingChecks
from trust._engine_config import TrustConfig as TrustConfig
from trust._engine_config import engine_policy, open_store
from trust._engine_replies import CommandReplies
from trust._identity import InvalidClientId
from trust._model import (
    AgentVerdict,
    ClientState,
    ConsultAgent,
    Decision,
    InviteCheck,
    Level,
    PaymentCheck,
    RequestFacts,
)
from trust._ops import DM_ONLY_REPLY, NOT_AUTHORIZED_REPLY, TrustOps
from trust._planning import clean_reason
from trust._policy import Policy, TrustConfigError
from trust._records import AuditEntry, PreconditionFailed, StoreError, TrustOpError
from trust._rules import decide
from trust._stats import EngineSnapshot, StatsRecorder, TrustStats
from trust._store.base import ClientStore
from trust._store.tx import DAY_MS, ApplyContext, StoreView

log = logging.getLogger("trust.engine")

UNAUTHENTICATED: Final = "unauthenticated event"
STORE_UNAVAILABLE: Final = "trust store unavailable"
ENGINE_ERROR: Final = "trust engine error"
CONCURRENT: Final = "state changed concurrently"
OFF_REASON: Final = "disabled by policy"


@attrs.frozen
class TrustOutcome:
    """What the runtime does with a message: the decision, whether the agent runs, a reply."""

    decision: Decision
    run_agent: bool
    reply: str | None = None


class TrustEngine(AgentCalls, OnboardingChecks, CommandReplies):
    """Evaluates messages against one policy over one store. Build with
    :func:`open_trust_engine`, which runs the background tasks.

    This module holds the decision pipeline; the cache and background jobs are in
    :mod:`trust._engine_cache`, the trust-agent calls in :mod:`trust._engine_agent`, the
    invite and payment checks in :mod:`trust._engine_checks`, the command replies in
    :mod:`trust._engine_replies`."""

    def __init__(
        self,
        config: TrustConfig,
        policy: Policy,
        store: ClientStore,
        agent: TrustAgentLike | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.store = store
        self.agent = agent if agent is not None else config.agent
        self.ops = TrustOps(store, policy, config.canonicalizer)
        self._init_cache()
        self._init_agent_calls()
        self._stats = StatsRecorder()
        self._init_checks()
        # §6/T67 (and C24 as superseded): a verify operation is on iff a rule uses it and
        # `disable:` does not list it; where it is off, every client gets the not-accepted
        # reply and nothing is looked up or sent to a verifier.
        enabled = policy.enabled_operations()
        self._accepts_invites = "verify/invite" in enabled
        self._accepts_payments = "verify/payment" in enabled
        # The facts of a message without a command, by (is_dm, mentions_bot): all there is
        # to know about most messages, so they are built once.
        self._plain_facts = {
            (dm, mentions): RequestFacts(is_dm=dm, mentions_bot=mentions)
            for dm in (False, True)
            for mentions in (False, True)
        }

    # --- public -----------------------------------------------------------------------------

    def stats(self) -> TrustStats:
        """Counters since start (TR §9); trust-agent failures by the agent's causes."""
        snapshot = self._stats.snapshot()
        causes = getattr(self.agent, "failures", None)
        if isinstance(causes, Mapping) and causes:
            merged = dict(snapshot.llm_failures)
            for cause, n in causes.items():
                merged[str(cause)] = merged.get(str(cause), 0) + int(n)
            snapshot = attrs.evolve(snapshot, llm_failures=merged)
        return snapshot

    def snapshot(self) -> EngineSnapshot:
        """A frozen copy of the cache, the trust-agent calls in flight and the audit tail."""
        return EngineSnapshot(
            views=tuple(self._views),
            view_ids=frozenset(self._keys_by_id),
            verdicts=tuple(self._verdicts),
            counters={cid: c.as_counters(cid) for cid, c in self._counts.items()},
            consultations={
                cid: c.done.statistics().tasks_waiting for cid, c in self._inflight.items()
            },
            last_audit_id=self._last_audit,
            audit_gaps=frozenset(self._audit_gaps),
        )

    def describe(self) -> str:
        """Policy name, digest, enabled operations and whether an agent is configured (JSON)."""
        return json.dumps(
            {
                "policy": self.policy.name,
                "digest": self.policy.digest,
                "enabled_operations": list(self.policy.enabled_operations()),
                "agent_configured": self.agent is not None,
            }
        )

    async def evaluate(self, event: MessageEvent, *, mentions_bot: bool = False) -> TrustOutcome:
        """The decision for one inbound message; raises nothing but ``trio.Cancelled`` (T21).

        ``mentions_bot`` is a fact only the runtime knows (the event carries no such field):
        whether a group message mentions or replies to the bot. Without it the policy
        condition ``mentions_bot`` is false.
        """
        try:
            outcome = await self._evaluate(event, mentions_bot)
        except StoreError as exc:
            self._stats.store_errors += 1
            log.warning("trust store error: %s", exc)
            outcome = self._deny(STORE_UNAVAILABLE)
        except Exception:
            log.exception("trust engine error")
            outcome = self._deny(ENGINE_ERROR)
        d = outcome.decision
        self._stats.decisions[d.tier] += 1
        if d.allow:
            self._stats.allowed += 1
        else:
            self._stats.denied += 1
        return outcome

    # --- one message ------------------------------------------------------------------------

    def _deny(self, reason: str) -> TrustOutcome:
        return TrustOutcome(
            Decision(allow=False, reason=reason, tier="rule", policy=self.policy.name), False
        )

    async def _evaluate(self, event: MessageEvent, mentions_bot: bool) -> TrustOutcome:
        if not event.delivered_via_relay:
            return self._deny(UNAUTHENTICATED)
        src = event.source
        ident = self._identify(src.platform_raw, src.user_id, src.user_id_alt)
        command = parse_command(event.text)
        if command is not None:
            self._stats.commands[command.kind.value] += 1
        if ident.is_anonymous:
            return await self._anonymous(event, command, mentions_bot)
        if ident.secondary is not None:
            await self._bind(ident.secondary, ident.primary)
        view = await self._view(ident.primary, ident.secondary)
        cid = view.record.client_id
        now = self.store.clock()
        count = self._counts.get(cid)
        if count is None:
            count = self._count(cid, view.counters, now)
        count.add(cid, now, requests=1)
        client = self._client_state(view, count, now)
        if isinstance(command, TrustCommand):
            return await self._trust_command(event, command, client, ident.secondary, mentions_bot)
        return await self._decide_and_apply(event, command, client, ident.secondary, mentions_bot)

    async def _anonymous(
        self, event: MessageEvent, command: Command | None, mentions_bot: bool
    ) -> TrustOutcome:
        client = ClientState.anonymous_sender()
        facts = RequestFacts(
            command=command.kind if command else None,
            is_dm=event.source.chat_type == "dm",
            mentions_bot=mentions_bot,
        )
        decision = self._timed_decide(client, facts)
        if isinstance(decision, ConsultAgent):  # decide denies these itself; belt and braces
            decision = Decision(False, "anonymous sender", "rule", policy=self.policy.name)
        # Anonymous senders are never answered and never reach the agent with a command.
        return TrustOutcome(decision, decision.allow and command is None, None)

    def _client_state(self, view: StoreView, count: ClientCount, now: int) -> ClientState:
        rec = view.record
        days_known = (now - count.first_seen) // DAY_MS
        # Positional, in field order (keywords cost a third more, once per message).
        return ClientState(
            rec.client_id,
            rec.level,
            rec.blocked,
            view.secondary_blocked,
            rec.is_admin,
            False,  # anonymous
            rec.agent_may_promote,
            count.requests,
            count.requests_today,
            count.requests_hour,
            days_known if days_known > 0 else 0,
        )

    async def _decide_and_apply(
        self,
        event: MessageEvent,
        command: Command | None,
        client: ClientState,
        secondary: str | None,
        mentions_bot: bool,
    ) -> TrustOutcome:
        verdict: AgentVerdict | None = None
        decision: Decision | None = None
        for attempt in range(2):
            if command is None:
                facts = self._plain_facts[event.source.chat_type == "dm", bool(mentions_bot)]
            else:
                facts = await self._facts(event, command, client, mentions_bot)
            decided = self._timed_decide(client, facts)
            if isinstance(decided, ConsultAgent):
                if verdict is None:
                    verdict_or_denial = await self._consult(event, client, decided)
                    if isinstance(verdict_or_denial, Decision):
                        return self._finish(event, command, client, verdict_or_denial, facts)
                    verdict = verdict_or_denial
                facts = attrs.evolve(facts, agent=verdict)
                facts = await self._promotion_budget(facts, verdict)
                decided = self._timed_decide(client, facts)
            if isinstance(decided, ConsultAgent):  # pragma: no cover - decide contract
                decided = Decision(False, ENGINE_ERROR, "rule", policy=self.policy.name)
            decision = decided
            self._stats.agent_promotions_dropped += decision.dropped
            if not decision.actions:
                return self._finish(event, command, client, decision, facts)
            try:
                await self._apply(decision, client, verdict)
            except PreconditionFailed as exc:
                log.info("re-deciding %s: %s", client.client_id, exc.detail)
                self._invalidate(client.client_id)
                if attempt == 1:
                    break
                view = await self._view(client.client_id, secondary)
                count = self._counts[client.client_id]
                client = self._client_state(view, count, self.store.clock())
                continue
            return self._finish(event, command, client, decision, facts)
        denial = Decision(False, CONCURRENT, "rule", policy=self.policy.name)
        return TrustOutcome(denial, False, None)

    async def _facts(
        self, event: MessageEvent, command: Command, client: ClientState, mentions_bot: bool
    ) -> RequestFacts:
        invite: InviteCheck | None = None
        payment: PaymentCheck | None = None
        open_to_checks = not client.is_blocked
        if isinstance(command, InviteCommand) and open_to_checks:
            if not self._accepts_invites:
                invite = InviteCheck(ok=False, reason=OFF_REASON)
            else:
                invite = await self._check_invite(client, command.code)
        if (
            isinstance(command, PayCommand)
            and open_to_checks
            and command.reference is not None
            and client.level is Level.STRANGER
        ):
            if not self._accepts_payments:
                payment = PaymentCheck(ok=False, reason=OFF_REASON)
            else:
                payment = await self._check_payment(client, command.reference)
        return RequestFacts(
            command=command.kind,
            is_dm=event.source.chat_type == "dm",
            mentions_bot=mentions_bot,
            invite=invite,
            payment=payment,
        )

    def _timed_decide(self, client: ClientState, facts: RequestFacts) -> Decision | ConsultAgent:
        start = time.perf_counter_ns()
        result = decide(self.policy, client, facts)
        self._stats.timed_decide(time.perf_counter_ns() - start)
        return result

    async def _apply(
        self, decision: Decision, client: ClientState, verdict: AgentVerdict | None
    ) -> list[AuditEntry]:
        agent_tier = decision.tier in ("agent", "cache")
        if agent_tier:
            actor = f"agent:{(verdict.model if verdict else '') or 'unknown'}"
        else:
            actor = f"rule:{self.policy.name}"
        # The store attributes each change with a rule_index to rule:<policy>#<index>.
        payment = self.policy.payment
        context = ApplyContext(
            client.client_id,
            policy=self.policy.name,
            payment_amount=str(payment.amount) if payment else None,
            payment_currency=payment.currency if payment else None,
            agent_promotions_per_hour=self.config.agent_promotions_per_hour,
        )
        entries = await self.store.apply(
            decision.actions, actor, "agent" if agent_tier else "rule", context
        )
        self._invalidate(client.client_id)
        for entry in entries:
            if entry.tier == "agent" and entry.action == "promote_to_contact":
                self._stats.agent_promotions += 1
        return entries

    def _finish(
        self,
        event: MessageEvent,
        command: Command | None,
        client: ClientState,
        decision: Decision,
        facts: RequestFacts,
    ) -> TrustOutcome:
        allowed = decision.allow
        reply: str | None = None  # an allowed message without a command gets none (`_reply`)
        if not allowed or command is not None:
            reply = self._reply(command, client, decision, facts)
        if log.isEnabledFor(logging.INFO):  # the reason is cleaned only for a logged line
            log.info(
                "trust %s %s tier=%s rule=%s reason=%s",
                client.client_id,
                "allow" if decision.allow else "deny",
                decision.tier,
                decision.rule_index,
                clean_reason(decision.reason),  # agent-written text: no control characters
            )
        return TrustOutcome(decision, allowed and command is None, reply)

    # --- /trust -----------------------------------------------------------------------------

    async def _trust_command(
        self,
        event: MessageEvent,
        command: TrustCommand,
        client: ClientState,
        secondary: str | None,
        mentions_bot: bool,
    ) -> TrustOutcome:
        is_dm = event.source.chat_type == "dm"
        if client.is_admin and not client.is_blocked:
            decision = Decision(True, "trust command", "rule", policy=self.policy.name)
            if not is_dm:
                return TrustOutcome(decision, False, DM_ONLY_REPLY)
            reply = await self.ops.chat(command, client.client_id)
            self._stats.ops[command.op] += 1
            if reply.startswith(("error:", "disabled:")):
                self._stats.ops_refused += 1
            return TrustOutcome(decision, False, reply)
        # A non-admin's /trust is an ordinary message; if allowed, it is refused and audited.
        outcome = await self._decide_and_apply(event, command, client, secondary, mentions_bot)
        if not outcome.decision.allow:
            return outcome
        self._stats.ops_refused += 1
        target = None
        if command.client:
            try:
                target = self.ops.client_id(command.client)
            except TrustOpError:
                target = None
        await self.store.record_refusal(
            command.op, target, actor=client.client_id, tier="admin", reason="/trust needs admin"
        )
        return TrustOutcome(outcome.decision, False, NOT_AUTHORIZED_REPLY)


@asynccontextmanager
async def open_trust_engine(config: TrustConfig | None = None) -> AsyncIterator[TrustEngine]:
    """A running :class:`TrustEngine`; leaving the block cancels its tasks and flushes.

    Refuses to start (:class:`TrustConfigError`) when stored ids are not canonical under
    the active rules (T5). Applies ``bootstrap_admins`` while the store has no admin (T17).
    """
    config = config or TrustConfig.from_env()
    policy = engine_policy(config)
    store = await open_store(config)
    owned = config.store is None
    own_agent: TrustAgent | None = None
    try:
        bad = config.canonicalizer.non_canonical(await store.stored_ids())
        if bad:
            shown = ", ".join(repr(b) for b in bad[:20])
            raise TrustConfigError(
                f"the trust store holds ids that are not canonical under the active rules: "
                f"{shown}{' ...' if len(bad) > 20 else ''}; fix or re-import them"
            )
        if config.bootstrap_admins:
            try:
                ids = [config.canonicalizer.parse(a) for a in config.bootstrap_admins]
                await store.bootstrap_admins(list(dict.fromkeys(ids)))
            except (InvalidClientId, TrustOpError) as exc:
                why = exc.message if isinstance(exc, TrustOpError) else str(exc)
                raise TrustConfigError(f"RELAY_TRUST_BOOTSTRAP_ADMINS: {why}") from None
        if config.agent is None and config.llm is not None:
            own_agent = TrustAgent(config.llm)
        engine = TrustEngine(config, policy, store, config.agent or own_agent)
        # Start a little behind the newest id: the first tail then notes which recent ids
        # are still uncommitted (a transaction in flight while we start) as gaps to watch.
        engine._last_audit = max(0, await store.last_audit_id() - AUDIT_START_WINDOW)
        await engine.tail()
        log.info(
            "trust policy %s (sha256 %s): operations %s; trust agent %s",
            policy.name,
            policy.digest,
            ", ".join(policy.enabled_operations()) or "none",
            "configured" if engine.agent is not None else "not configured",
        )
        if policy.name == "open":
            log.warning("trust policy 'open' admits everyone; for development only")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine._every, config.flush_interval_s, "flush")
            nursery.start_soon(engine._every, config.tail_interval_s, "tail")
            nursery.start_soon(engine._every, config.prune_interval_s, "prune")
            try:
                yield engine
            finally:
                nursery.cancel_scope.cancel()
                with trio.move_on_after(5, shield=True):
                    await engine.flush()
    finally:
        with trio.move_on_after(5, shield=True):
            if own_agent is not None:
                await own_agent.aclose()
            if owned:
                await store.aclose()
