"""The trust engine: ``evaluate(event) -> TrustOutcome`` for every inbound message (TR §5).

Per message: identify the sender; parse a command; read the client's view (LRU cache,
refreshed from the store); bump counters; run ``/trust`` through :mod:`trust.ops`;
pre-resolve what the policy can use (invite lookup, payment check); ``decide``; on
``ConsultAgent`` use a cached verdict or ask the trust agent and decide again; apply the
decision's changes in one store transaction, re-deciding once if the state moved.

:func:`open_trust_engine` owns the nursery of the background tasks: counter flushes every
5 s, the audit-log tail every second (so a block written by the CLI or another instance
holds here within that interval, T20), and a prune every 10 minutes.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Final, Protocol

import attrs
import trio

from protocol.events import MessageEvent
from trust.agent import LlmSettings, TrustAgent
from trust.commands import Command, InviteCommand, PayCommand, TrustCommand, parse_command
from trust.identity import (
    DEFAULT_CANONICALIZER,
    Canonicalizer,
    InvalidClientId,
    parse_platform_list,
)
from trust.invites import (
    CLIENT_SCOPE_PREFIX,
    GLOBAL_FAILURES_PER_HOUR,
    GLOBAL_SCOPE,
    MAX_FAILURES_PER_HOUR,
    lookup_invite,
)
from trust.model import (
    AgentVerdict,
    ClientState,
    ConsultAgent,
    Decision,
    InviteCheck,
    Level,
    PaymentCheck,
    RequestFacts,
)
from trust.ops import DM_ONLY_REPLY, NOT_AUTHORIZED_REPLY, TrustOps
from trust.payments import NoPaymentVerifier, PaymentVerifier, check_payment
from trust.planning import clean_reason
from trust.policy import Policy, TrustConfigError, resolve_policy
from trust.records import (
    AuditEntry,
    CachedVerdict,
    Counters,
    PreconditionFailed,
    StoreError,
    TrustOpError,
)
from trust.rules import decide
from trust.stats import StatsRecorder, TrustStats
from trust.store.base import ClientStore
from trust.store.tx import ApplyContext, AttemptWindow, CounterDelta, StoreView

log = logging.getLogger("trust.engine")

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000
UNAUTHENTICATED: Final = "unauthenticated event"
STORE_UNAVAILABLE: Final = "trust store unavailable"
ENGINE_ERROR: Final = "trust engine error"
CONCURRENT: Final = "state changed concurrently"
AGENT_NOT_CONFIGURED: Final = "trust agent not configured"
AGENT_UNAVAILABLE: Final = "trust agent unavailable"
AGENT_BUDGET: Final = "trust agent budget exhausted"
BREAKER_FAILURES: Final = 3
BREAKER_SKIP_S: Final = 60.0
AUDIT_GAP_WAIT_S: Final = 30.0
"""How long the tail waits for a skipped audit id to appear: PostgreSQL assigns ids at
insert, so a transaction that commits late shows up below ids already seen (or never,
when it rolled back)."""
MAX_AUDIT_GAPS: Final = 10_000
AUDIT_START_WINDOW: Final = 1_000

INVITE_OK_REPLY: Final = "Invite accepted. You are now a contact."
INVITE_BAD_REPLY: Final = "That invite code was not accepted."
INVITE_OFF_REPLY: Final = "Invite codes are not accepted here."
PAY_OK_REPLY: Final = "Payment verified. You are now a contact."
PAY_BAD_REPLY: Final = "That payment was not accepted."
PAY_OFF_REPLY: Final = "Payments are not accepted here."
OFF_REASON: Final = "disabled by policy"
INVITE_FAILURES_PER_CLIENT_RANGE: Final = (1, 1_000)
INVITE_FAILURES_PER_HOUR_RANGE: Final = (1, 1_000_000)
LIMIT_WARNING_EVERY_MS: Final = 60_000


@attrs.frozen
class TrustOutcome:
    """What the runtime does with a message: the decision, whether the agent runs, a reply."""

    decision: Decision
    run_agent: bool
    reply: str | None = None


@attrs.frozen
class ClientTools:
    """The trust agent's read tools, bound to the client under review (no id parameter)."""

    client_id: str
    store: ClientStore

    async def get_level(self) -> str:
        """The client's effective level."""
        return (await self.store.get(self.client_id)).effective_level

    async def get_history(self) -> list[dict[str, object]]:
        """The client's last 10 audit rows, without actors."""
        rows = await self.store.audit(self.client_id, 10)
        return [
            {
                "at": r.at,
                "action": r.action,
                "from": r.from_level,
                "to": r.to_level,
                "tier": r.tier,
                "reason": r.reason,
            }
            for r in rows
        ]


@attrs.frozen
class ConsultRequest:
    """Everything the trust agent is given about one message (TR §7)."""

    policy: Policy
    client: ClientState
    platform: str
    chat_type: str
    trigger: str
    untrusted: str = attrs.field(repr=False)
    tools: ClientTools


class TrustAgentLike(Protocol):
    """The LLM tier as the engine calls it (the real one is :mod:`trust.agent`)."""

    async def consult(self, request: ConsultRequest) -> AgentVerdict | None:
        """A verdict, or None when the agent failed (it logs and counts the cause)."""
        ...


@attrs.frozen
class TrustConfig:
    """How to build a :class:`TrustEngine`.

    ``policy`` is a :class:`Policy`, a preset name or a file path (None: ``careful``).
    ``store`` is used as given (and not closed); otherwise ``dsn`` opens PostgreSQL and
    ``state_dir`` the SQLite database.
    """

    policy: Policy | str | None = None
    state_dir: str | os.PathLike[str] | None = None
    dsn: str | None = None
    store: ClientStore | None = None
    agent: TrustAgentLike | None = None
    verifier: PaymentVerifier = attrs.field(factory=NoPaymentVerifier)
    canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER
    bootstrap_admins: tuple[str, ...] = ()
    flush_interval_s: float = 5.0
    tail_interval_s: float = 1.0
    prune_interval_s: float = 600.0
    agent_promotions_per_hour: int = 5
    llm_calls_per_client_hour: int = 3
    llm_calls_per_hour: int = 120
    cache_size: int = 100_000
    llm: LlmSettings | None = None
    """Used to build the trust agent (closed with the engine) when ``agent`` is None."""
    invite_failures_per_client_hour: int = attrs.field(
        default=MAX_FAILURES_PER_HOUR,
        validator=lambda _, a, v: _check_range(a.name, v, INVITE_FAILURES_PER_CLIENT_RANGE),
    )
    """Failed ``/invite`` attempts one client may make in any hour (T50); counted in the
    store, so every instance on it shares the window."""
    invite_failures_per_hour: int = attrs.field(
        default=GLOBAL_FAILURES_PER_HOUR,
        validator=lambda _, a, v: _check_range(a.name, v, INVITE_FAILURES_PER_HOUR_RANGE),
    )
    """Failed ``/invite`` attempts all clients together may make in any hour; past it every
    attempt is refused unlooked. Keep it tight when the policy has short 0.6.5 codes."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> TrustConfig:
        """Settings from ``RELAY_TRUST``, ``RELAY_STATE_DIR`` and the ``RELAY_TRUST_*``
        variables of :data:`TRUST_ENV`; an unknown ``RELAY_TRUST_*`` name (a typo) or a
        value out of range is a one-line :class:`TrustConfigError`."""
        env = os.environ if env is None else env
        _check_names(env)
        canonicalizer = Canonicalizer(
            casefold_platforms=parse_platform_list(env.get("RELAY_TRUST_CASEFOLD_PLATFORMS"))
        )
        admins = tuple(
            a.strip() for a in env.get("RELAY_TRUST_BOOTSTRAP_ADMINS", "").split(",") if a.strip()
        )
        values: dict[str, object] = {
            "policy": env.get("RELAY_TRUST") or None,
            "state_dir": env.get("RELAY_STATE_DIR") or None,
            "dsn": env.get("RELAY_TRUST_DSN") or None,
            "canonicalizer": canonicalizer,
            "bootstrap_admins": admins,
            "llm": LlmSettings.from_env(env),
        }
        for name, key, bounds in (
            (
                "RELAY_TRUST_INVITE_FAILURES_PER_CLIENT_HOUR",
                "invite_failures_per_client_hour",
                INVITE_FAILURES_PER_CLIENT_RANGE,
            ),
            (
                "RELAY_TRUST_INVITE_FAILURES_PER_HOUR",
                "invite_failures_per_hour",
                INVITE_FAILURES_PER_HOUR_RANGE,
            ),
        ):
            raw = env.get(name, "").strip()
            if raw:
                values[key] = _env_int(name, raw, bounds)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


TRUST_ENV: Final = frozenset(
    {
        "RELAY_TRUST_DSN",
        "RELAY_TRUST_BOOTSTRAP_ADMINS",
        "RELAY_TRUST_CASEFOLD_PLATFORMS",
        "RELAY_TRUST_INVITE_FAILURES_PER_CLIENT_HOUR",
        "RELAY_TRUST_INVITE_FAILURES_PER_HOUR",
        "RELAY_TRUST_LLM_BASE_URL",
        "RELAY_TRUST_LLM_MODEL",
        "RELAY_TRUST_LLM_API_KEY",
        "RELAY_TRUST_LLM_TIMEOUT",
    }
)
"""Every ``RELAY_TRUST_*`` variable the trust engine reads (besides ``RELAY_TRUST``)."""


def _check_names(env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if name.startswith("RELAY_TRUST_") and name not in TRUST_ENV:
            close = difflib.get_close_matches(name, sorted(TRUST_ENV), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise TrustConfigError(f"unknown trust setting {name}{hint}")


def _check_range(name: str, value: object, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TrustConfigError(f"{name}: {value!r} is not an integer in {lo}..{hi}")


def _env_int(name: str, raw: str, bounds: tuple[int, int]) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        value = None
    lo, hi = bounds
    if value is None or not lo <= value <= hi:
        raise TrustConfigError(f"{name}={raw[:40]!r}: expected an integer in {lo}..{hi}")
    return value


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/relay-runtime`` (AR §5)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "relay-runtime"


async def open_store(config: TrustConfig) -> ClientStore:
    """The store ``config`` names: PostgreSQL for a DSN, else the state-dir SQLite file."""
    if config.store is not None:
        return config.store
    if config.dsn:
        from trust.store.postgres import open_postgres_store

        return await open_postgres_store(config.dsn)
    from trust.store.sqlite import open_sqlite_store

    return await open_sqlite_store(config.state_dir or default_state_dir())


@attrs.define
class _Count:
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
    pending: CounterDelta | None = None

    @classmethod
    def from_stored(cls, stored: Counters | None, now: int) -> _Count:
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

    def roll(self, now: int) -> None:
        day, hour = now // DAY_MS, now // HOUR_MS
        if day != self.day:
            self.day, self.requests_today = day, 0
        if hour != self.hour:
            self.hour, self.requests_hour = hour, 0
            self.agent_calls_hour = self.invite_failures_hour = 0

    def add(
        self, client_id: str, now: int, *, requests: int = 0, agent: int = 0, failures: int = 0
    ) -> None:
        self.roll(now)
        self.last_seen = max(self.last_seen, now)
        self.requests += requests
        self.requests_today += requests
        self.requests_hour += requests
        self.agent_calls_hour += agent
        self.invite_failures_hour += failures
        p = self.pending
        if p is None or p.day != self.day or p.hour != self.hour:
            if p is not None:
                # An hour or day boundary: keep totals, restart the bucketed increments.
                p = attrs.evolve(
                    p,
                    day=self.day,
                    hour=self.hour,
                    requests_today=p.requests_today if p.day == self.day else 0,
                    requests_hour=0,
                    agent_calls_hour=0,
                    invite_failures_hour=0,
                )
            else:
                p = CounterDelta(
                    client_id, self.first_seen, now, 0, self.day, 0, self.hour, 0, 0, 0
                )
        self.pending = attrs.evolve(
            p,
            last_seen=now,
            requests=p.requests + requests,
            requests_today=p.requests_today + requests,
            requests_hour=p.requests_hour + requests,
            agent_calls_hour=p.agent_calls_hour + agent,
            invite_failures_hour=p.invite_failures_hour + failures,
        )


@attrs.define
class _Consultation:
    """One in-flight trust-agent call that a client's concurrent messages share."""

    done: trio.Event = attrs.field(factory=trio.Event)
    verdict: AgentVerdict | None = None
    failure: str | None = None


class TrustEngine:
    """Evaluates messages against one policy over one store. Build with
    :func:`open_trust_engine`, which runs the background tasks."""

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
        self._views: OrderedDict[tuple[str, str | None], StoreView] = OrderedDict()
        self._keys_by_id: dict[str, set[tuple[str, str | None]]] = {}
        self._counts: dict[str, _Count] = {}
        self._verdicts: OrderedDict[str, tuple[AgentVerdict, int]] = OrderedDict()  # LRU
        self._bound: dict[str, str] = {}
        self._inflight: dict[str, _Consultation] = {}
        self._llm_hour = (0, 0)  # (hour bucket, calls)
        self._failures = 0
        self._skip_until = 0.0
        self._last_audit = 0
        self._audit_gaps: dict[int, float] = {}  # missing audit id -> give up at (trio time)
        # Invalidation generations: a view or verdict read while its client changed is used
        # once but not cached (the tail may already have passed that change).
        self._generation = 0
        self._changed: OrderedDict[str, int] = OrderedDict()  # id -> generation of last change
        self._forgotten = 0  # the newest generation evicted from _changed
        self._stats = StatsRecorder()
        self._global_full_warned = -LIMIT_WARNING_EVERY_MS
        # §6/T67 (and C24 as superseded): a verify operation is on iff a rule uses it and
        # `disable:` does not list it; where it is off, every client gets the not-accepted
        # reply and nothing is looked up or sent to a verifier.
        enabled = policy.enabled_operations()
        self._accepts_invites = "verify/invite" in enabled
        self._accepts_payments = "verify/payment" in enabled

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
        ident = self.config.canonicalizer.identify(src.platform_raw, src.user_id, src.user_id_alt)
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

    def _client_state(self, view: StoreView, count: _Count, now: int) -> ClientState:
        rec = view.record
        return ClientState(
            client_id=rec.client_id,
            level=rec.level,
            blocked=rec.blocked,
            secondary_blocked=view.secondary_blocked,
            is_admin=rec.is_admin,
            agent_may_promote=rec.agent_may_promote,
            requests=count.requests,
            requests_today=count.requests_today,
            requests_hour=count.requests_hour,
            days_known=max(0, (now - count.first_seen) // DAY_MS),
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
        self, event: MessageEvent, command: Command | None, client: ClientState, mentions_bot: bool
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
            command=command.kind if command else None,
            is_dm=event.source.chat_type == "dm",
            mentions_bot=mentions_bot,
            invite=invite,
            payment=payment,
        )

    async def _check_invite(self, client: ClientState, code: str | None) -> InviteCheck:
        """Look a code up only within the store's failure windows (T50, issue 12).

        The attempt is counted in the client's window before the lookup, and, unless it
        found a generated 80-bit store code, in the deployment-wide window before its result
        is used: a full window answers ``too many attempts`` whatever the code. Both windows
        live in the store, so every instance sharing it shares them, and a window's last
        slot goes to one attempt only. A right code is un-counted.
        """
        if not code:
            return InviteCheck(ok=False, reason="missing code")
        cid = client.client_id
        attempt = secrets.token_hex(12)
        per_client = AttemptWindow(
            CLIENT_SCOPE_PREFIX + cid, self.config.invite_failures_per_client_hour
        )
        if await self._window_full(attempt, per_client):
            return InviteCheck(ok=False, reason="too many attempts")
        check, strong = await lookup_invite(self.store, code)
        if not strong:
            # Any guess at a weak code (custom store codes, 0.6.5 policy codes) lands here:
            # a failed guess cannot be told apart by the code it aimed at.
            everyone = AttemptWindow(GLOBAL_SCOPE, self.config.invite_failures_per_hour)
            if await self._window_full(attempt, everyone):
                return InviteCheck(ok=False, reason="too many attempts")
            if not check.ok:
                policy_id = self.policy.match_policy_code(code)
                if policy_id is not None:
                    check = InviteCheck(ok=True, invite_id=policy_id)
        if check.ok:
            try:
                await self.store.release_invite_attempt(attempt)
            except StoreError as exc:  # the slot stays counted: the limit errs on the safe side
                self._stats.store_errors += 1
                log.warning("could not un-count a successful invite attempt: %s", exc)
        else:
            now = self.store.clock()
            self._counts[cid].add(cid, now, failures=1)  # statistics; the limit is the store's
        return check

    async def _window_full(self, attempt: str, window: AttemptWindow) -> bool:
        full = await self.store.reserve_invite_attempt(attempt, (window,))
        if full is None:
            return False
        self._stats.invite_attempts_limited += 1
        self._warn_window_full(full)
        return True

    def _warn_window_full(self, scope: str) -> None:
        if scope != GLOBAL_SCOPE:
            return
        now = self.store.clock()
        if now - self._global_full_warned >= LIMIT_WARNING_EVERY_MS:
            self._global_full_warned = now
            log.warning(
                "invite attempts: %d failures in the last hour across all clients; every "
                "/invite is refused until the window drains (invite_failures_per_hour)",
                self.config.invite_failures_per_hour,
            )

    async def _check_payment(self, client: ClientState, reference: str) -> PaymentCheck:
        payment = self.policy.payment
        if payment is None:
            return PaymentCheck(ok=False, reason="no payment configured")
        return await check_payment(
            self.store,
            self.config.verifier,
            client_id=client.client_id,
            reference=reference,
            amount=Decimal(payment.amount),
            currency=payment.currency,
            canonical_payer=self.config.canonicalizer.parse,
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
        reply = self._reply(command, client, decision, facts)
        log.info(
            "trust %s %s tier=%s rule=%s reason=%s",
            client.client_id,
            "allow" if decision.allow else "deny",
            decision.tier,
            decision.rule_index,
            clean_reason(decision.reason),  # agent-written text: no control characters in logs
        )
        return TrustOutcome(decision, decision.allow and command is None, reply)

    def _reply(
        self,
        command: Command | None,
        client: ClientState,
        decision: Decision,
        facts: RequestFacts,
    ) -> str | None:
        if client.is_blocked or client.anonymous or decision.reason == "blocked":
            return None  # blocked and anonymous senders get nothing (T53)
        if any(a.op == "block" for a in decision.actions):
            return None  # nor one this very decision blocks
        if isinstance(command, InviteCommand):
            return self._invite_reply(command, client, decision, facts)
        if isinstance(command, PayCommand):
            return self._pay_reply(command, client, decision, facts)
        if not decision.allow:
            return self.policy.reply_on_deny
        return None

    def _invite_reply(
        self, command: InviteCommand, client: ClientState, decision: Decision, facts: RequestFacts
    ) -> str | None:
        if not self._accepts_invites:
            return INVITE_OFF_REPLY
        if command.code is None:
            return "usage: /invite CODE"
        already = _already(client)
        if already is not None:
            return already
        promoted = any(a.op == "promote_to_contact" for a in decision.actions)
        if facts.invite is not None and facts.invite.ok and promoted:
            self._stats.invites_accepted += 1
            return INVITE_OK_REPLY
        self._stats.invites_rejected += 1
        return INVITE_BAD_REPLY

    def _pay_reply(
        self, command: PayCommand, client: ClientState, decision: Decision, facts: RequestFacts
    ) -> str | None:
        if not self._accepts_payments:
            return PAY_OFF_REPLY
        if command.usage is not None:
            return command.usage
        if client.level is not Level.STRANGER:
            word = "whitelisted" if client.level is Level.WHITELIST else "a contact"
            return f"No payment needed: you are already {word}."
        promoted = any(a.op == "promote_to_contact" for a in decision.actions)
        if facts.payment is not None and facts.payment.ok and promoted:
            self._stats.payments_verified += 1
            return PAY_OK_REPLY
        self._stats.payments_rejected += 1
        return PAY_BAD_REPLY

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

    # --- the trust agent ----------------------------------------------------------------------

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
        pending = self._inflight[cid] = _Consultation()
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

    # --- views, aliases, counters -------------------------------------------------------------

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

    def _count(self, cid: str, stored: Counters | None, now: int) -> _Count:
        count = self._counts.get(cid)
        if count is None:
            count = self._counts[cid] = _Count.from_stored(stored, now)
        return count

    # --- background tasks ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Write pending counter increments (every 5 s and at shutdown)."""
        deltas = [c.pending for c in self._counts.values() if c.pending is not None]
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
                    count.pending = d if count.pending is None else _merge(d, count.pending)
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


def _merge(older: CounterDelta, newer: CounterDelta) -> CounterDelta:
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


def _already(client: ClientState) -> str | None:
    if client.is_admin:
        return "You are already an admin."
    if client.level is Level.WHITELIST:
        return "You are already whitelisted."
    if client.level is Level.CONTACT:
        return "You are already a contact."
    return None


def _policy(config: TrustConfig) -> Policy:
    if isinstance(config.policy, Policy):
        return config.policy
    return resolve_policy(config.policy)


@asynccontextmanager
async def open_trust_engine(config: TrustConfig | None = None) -> AsyncIterator[TrustEngine]:
    """A running :class:`TrustEngine`; leaving the block cancels its tasks and flushes.

    Refuses to start (:class:`TrustConfigError`) when stored ids are not canonical under
    the active rules (T5). Applies ``bootstrap_admins`` while the store has no admin (T17).
    """
    config = config or TrustConfig.from_env()
    policy = _policy(config)
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


__all__ = [
    "ClientTools",
    "ConsultRequest",
    "TrustAgentLike",
    "TrustConfig",
    "TrustEngine",
    "TrustOutcome",
    "open_trust_engine",
]
