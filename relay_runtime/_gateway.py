"""``run_gateway``: the runtime assembled, and the :class:`Gateway` handle (AR §2-§3).

One nursery, owned by :func:`run_gateway`, holds everything that lives as long as the
gateway: the connection supervisor (which owns each socket's nursery), the inbound
dispatcher, the turn tasks (so a turn outlives a socket drop), the outbox flusher and the
READY watcher that starts each flush. The gateway ends when the supervisor does (after
``stop()``/``go_idle()``), when it is cancelled, or with :class:`RelayDisabled`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from protocol._descriptor import CapabilityDescriptor
from protocol._events import MessageEvent
from protocol._frames import Interrupt
from relay_runtime._control import (
    Credentials,
    boot_control_plane,
    declare_policy,
    upgrade_token_factory,
)
from relay_runtime._delivery import Agent, TrustEvaluator
from relay_runtime._dispatcher import Dispatcher
from relay_runtime._errors import RelayDisabled, leaves
from relay_runtime._hand_off import InboundItem
from relay_runtime._outbound import OutboundRouter
from relay_runtime._replies import Replies
from relay_runtime._state import LeaseLost, StateDB, StateError, StateStore, StorageFailed
from relay_runtime._supervisor import Supervisor
from relay_runtime._transport import Dialer
from relay_runtime.config import ConfigError, GatewayConfig
from trust import Decision, TrustConfig, TrustOutcome, open_trust_engine
from trust._policy import PolicyError, TrustConfigError, resolve_policy

if TYPE_CHECKING:
    from relay_runtime._state import Lease


log = logging.getLogger("relay_runtime.gateway")

#: Buffer between the supervisor's reader and the dispatcher. The dispatcher is the
#: admission point (``max_pending_inbound``); this slack lets the reader run ahead while the
#: dispatcher is busy (admitting, or waiting for the commit a duplicate's ack needs). It
#: matches the dispatcher's batch (64), so a burst that arrives meanwhile is admitted whole.
INBOUND_BUFFER: Final = 64


# --------------------------------------------------------------------------- trust seam


class AdmitAll:
    """A trust evaluator that admits every relay event (development, tests, benchmarks).

    Events not stamped ``delivered_via_relay`` are denied ``"unauthenticated event"`` as
    the trust engine would; everything else is allowed and runs the agent.
    """

    _ALLOW: Final = TrustOutcome(Decision(allow=True, reason="admit all", tier="default"), True)
    _DENY: Final = TrustOutcome(
        Decision(allow=False, reason="unauthenticated event", tier="rule"), False
    )

    async def evaluate(self, event: MessageEvent) -> TrustOutcome:
        """Allow any event that arrived on the connector socket."""
        return self._ALLOW if event.delivered_via_relay else self._DENY


# --------------------------------------------------------------------------- the handle


@attrs.frozen
class SuspendCheck:
    """Whether ``suspend()`` may proceed; ``reason`` names the first unmet obligation."""

    ok: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.ok


class Gateway:
    """The running gateway, as :func:`run_gateway` hands it to its caller."""

    def __init__(
        self,
        config: GatewayConfig,
        supervisor: Supervisor,
        dispatcher: Dispatcher,
        replies: Replies,
        trust: TrustEvaluator,
        *,
        wake_confirmed: bool,
    ) -> None:
        self.config = config
        self.supervisor = supervisor
        self.dispatcher = dispatcher
        self.replies = replies
        self.trust = trust
        self.wake_confirmed = wake_confirmed
        #: ``http://host:port`` of the metrics and health endpoint, when ``config.metrics``.
        self.metrics_url: str | None = None

    @property
    def outbound(self) -> OutboundRouter:
        """The one outbound owner: every frame the gateway sends, and the pending requests.

        Read it for ``pending_count``, ``live`` or ``await wait_drained()``; a turn's replies
        go through :class:`~relay_runtime._turn.Turn`, not through it.
        """
        return self.replies.outbound

    @property
    def state(self) -> str:
        """The connection state name: ``ready``, ``backoff``, ``closed``, ``disabled`` …"""
        return self.supervisor.state

    @property
    def descriptors(self) -> Mapping[str, CapabilityDescriptor]:
        """The connector's capability descriptors, by platform."""
        return self.supervisor.descriptors

    @property
    def stats(self) -> dict[str, Any]:
        """Counters from every part (dispatcher, replies, connection, trust if it has any)."""
        out: dict[str, Any] = {"state": self.state}
        out.update(self.supervisor.stats_dict())
        out["pending_requests"] = self.outbound.pending_count
        out.update(self.dispatcher.stats_dict())
        out.update(self.replies.stats())
        trust_stats = getattr(self.trust, "stats", None)
        if callable(trust_stats):
            trust_stats = trust_stats()
        if isinstance(trust_stats, Mapping):
            out["trust"] = dict(trust_stats)
        return out

    async def go_idle(self) -> bool:
        """Shut down through ``going_idle`` (RC §8); True if the connector acked it."""
        self.outbound.stop()
        return await self.supervisor.go_idle()

    def stop(self) -> None:
        """Stop for good (drains through ``going_idle`` when READY); the gateway then ends."""
        self.outbound.stop()
        self.supervisor.stop()

    def send_interrupt(self, session_key: str, reason: str | None = None) -> bool:
        """Ask the connector to route a ``/stop`` for ``session_key``; False if not sent."""
        return self.outbound.send_nowait(Interrupt(session_key=session_key, reason=reason))

    def can_suspend(self) -> SuspendCheck:
        """Whether a suspend may start now; names the first unmet obligation (R75)."""
        if not self.config.wake_url:
            return SuspendCheck(False, "no wake URL configured")
        if not self.wake_confirmed:
            return SuspendCheck(False, "wake URL not confirmed by the connector")
        if self.dispatcher.running:
            return SuspendCheck(False, f"{self.dispatcher.running} turn(s) running")
        if self.dispatcher.queued:
            return SuspendCheck(False, f"{self.dispatcher.queued} inbound delivery(ies) queued")
        pending = self.outbound.pending_count
        if pending:
            return SuspendCheck(False, f"{pending} outbound request(s) pending")
        if self.replies.outbox_count:
            return SuspendCheck(False, f"outbox not empty ({self.replies.outbox_count})")
        if self.state != "ready":
            return SuspendCheck(False, f"not connected (state {self.state})")
        return SuspendCheck(True)

    async def suspend(self) -> SuspendCheck:
        """Flip to buffered delivery and close, re-dialing on the dormant cadence (RC §8).

        Refused (nothing sent) while :meth:`can_suspend` is not met; ``"not acked"`` when
        the connector did not ack ``going_idle`` in time (the socket then stays up). State
        written behind is committed first (raises :class:`StateError` if it cannot be).
        """
        check = self.can_suspend()
        if not check:
            return check
        # What was written behind is committed before the process may be scaled away.
        await self.dispatcher.db.flush()
        if await self.supervisor.suspend():
            return SuspendCheck(True)
        return SuspendCheck(False, "not acked")


# --------------------------------------------------------------------------- run_gateway


def _check(config: object, agent: object, trust: object = None) -> GatewayConfig:
    if trust is not None and not inspect.iscoroutinefunction(getattr(trust, "evaluate", None)):
        # Never silently replaced by a default (TR §4.1 level 3, T30).
        raise ConfigError(
            "trust",
            "must be None, or an object with an async evaluate(event) method "
            f"(a trust engine); got {type(trust).__name__}",
        )
    if not isinstance(config, GatewayConfig):
        raise ConfigError("config", f"must be a GatewayConfig, got {type(config).__name__}")
    if config.relay_url is None:
        raise ConfigError("relay_url", "is not set; the gateway has no connector to dial")
    if not config.enabled:
        raise ConfigError("enabled", "is false; the relay is disabled by configuration")
    if not callable(agent):
        raise ConfigError("agent", f"must be an async callable, got {type(agent).__name__}")
    if not config.group_sessions_per_user or config.thread_sessions_per_user:
        log.warning(
            "relay: non-default session keying (group_sessions_per_user=%s, "
            "thread_sessions_per_user=%s); follow_up lookups at the connector will miss",
            config.group_sessions_per_user,
            config.thread_sessions_per_user,
        )
    return config


def _with_credentials(config: GatewayConfig, credentials: Credentials | None) -> GatewayConfig:
    if credentials is None or config.has_pinned_credentials:
        return config
    return attrs.evolve(
        config,
        gateway_id=credentials.gateway_id,
        secret=credentials.secret,
        delivery_key=credentials.delivery_key,
        wake_confirmed=config.wake_confirmed or credentials.wake_confirmed,
    )


async def _flush_on_ready(supervisor: Supervisor, replies: Replies) -> None:
    """Start an outbox flush on every READY (RC §6.2)."""
    seen = 0
    while True:
        seen = await supervisor.wait_next_ready(seen)
        replies.poke()


async def _watch_storage(db: StateStore, supervisor: Supervisor, limit_s: float) -> None:
    """Bound a storage failure: go idle so the connector buffers, exit if it lasts.

    On each failure episode (the state db logs its one ERROR) the gateway sends
    ``going_idle`` as a suspend would, so new inbound waits in the connector's buffer
    instead of arriving here unrecordable; the dormant re-dial then drains that buffer once
    acks can be recorded again. An episode longer than ``limit_s`` raises
    :class:`StorageFailed` (the CLI exits 1).
    """
    while True:
        await db.wait_failing()
        if supervisor.state == "ready":
            with trio.move_on_after(limit_s):
                await supervisor.suspend()
        since = db.failing_since
        if since is None:
            continue
        with trio.move_on_at(since + limit_s):
            await db.wait_recovered()
            continue
        message = (
            f"state database {db.location!r} could not be written for {limit_s:g} s "
            f"({db.failure_cause}); exiting"
        )
        log.critical("relay: %s", message)
        raise StorageFailed(message)


def _plain_error_in(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The RelayDisabled or ConfigError a nursery raised, if that (plus cancellations) is
    all it raised."""
    matched, rest = group.split((RelayDisabled, ConfigError, LeaseLost))
    if matched is None:
        return None
    if rest is not None:
        _, other = rest.split(trio.Cancelled)
        if other is not None:
            return None
    carried = leaves(matched)
    disabled = [leaf for leaf in carried if isinstance(leaf, RelayDisabled)]
    if disabled:
        return disabled[0]
    if len(carried) == 1 and isinstance(carried[0], ConfigError | LeaseLost):
        return carried[0]
    return None


async def run_gateway(
    config: GatewayConfig,
    agent: Agent,
    *,
    trust: TrustEvaluator | None = None,
    dialer: Dialer | None = None,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a gateway until it is stopped or cancelled (AR §3).

    Calls ``task_status.started(gateway)`` once the first descriptor has arrived. Raises
    :class:`ConfigError` for a bad configuration before any dial, and
    :class:`RelayDisabled` when the connector revoked the credential (terminal 4401), each
    as itself, never inside an exception group.
    A failing dial is retried on the backoff ladder; it never raises. ``trust=None`` opens
    the trust engine for ``config.trust`` (``careful`` unless configured) for the gateway's
    lifetime.

    ``dialer`` opens the connector socket (default: a real dial of ``config.relay_url``
    with the gateway's WebSocket client); it is the testing seam for running over memory
    streams (see :class:`~relay_runtime._transport.Dialer` and ``relay_runtime.testing``).
    """
    config = _check(config, agent, trust)
    try:
        await _run(config, agent, trust, dialer, task_status)
    except BaseExceptionGroup as group:
        # Nurseries on the way (ours, the trust engine's) wrap it; callers get it plainly.
        plain = _plain_error_in(group)
        if plain is None:
            raise
        raise plain from None


async def _run(
    config: GatewayConfig,
    agent: Agent,
    trust: TrustEvaluator | None,
    dialer: Dialer | None,
    task_status: trio.TaskStatus[Gateway],
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        db: StateStore | None = None
        if config.state_dsn is None:
            db = await stack.enter_async_context(await _open_sqlite_state(config))
        evaluator = trust if trust is not None else await _open_policy_engine(config, stack)
        credentials = await boot_control_plane(config)
        config = _with_credentials(config, credentials)
        if credentials is not None:
            await declare_policy(config, credentials)
        lease = None
        if db is None:  # in PostgreSQL: the lease is taken before anything dials
            db, lease = await _open_pg_state(config, stack)
        await _serve(config, agent, evaluator, db, dialer, task_status, lease)


async def _open_sqlite_state(config: GatewayConfig) -> StateDB:
    """``<state_dir>/relay.db`` (its ``flock``: one gateway per state dir)."""
    try:
        return await StateDB.open(config.state_dir, now=time.time(), **_state_sizes(config))
    except StateError as exc:
        raise ConfigError("state_dir", str(exc)) from exc


async def _open_pg_state(
    config: GatewayConfig, stack: contextlib.AsyncExitStack
) -> tuple[StateStore, Lease]:
    """The gateway id's lease (standby until it is free), then its state in PostgreSQL."""
    if config.state_dsn is None or config.gateway_id is None:
        raise ConfigError("state_dsn", "state in PostgreSQL is kept per gateway id: none is known")
    try:
        from relay_runtime._state._pg import open_leased

        return await open_leased(
            stack,
            config.state_dsn,
            config.gateway_id,
            now=time.time,
            lease_ttl_s=config.lease_ttl_s,
            **_state_sizes(config),
        )
    except ImportError as exc:
        raise ConfigError("state_dsn", f"needs the postgres extra (psycopg): {exc}") from None
    except StateError as exc:
        raise ConfigError("state_dsn", str(exc)) from exc


def _state_sizes(config: GatewayConfig) -> dict[str, Any]:
    names = ("outbox_max", "outbox_ttl_s", "dedupe_window_s", "dedupe_max", "turns_max")
    return {name: getattr(config, name) for name in names}


async def _open_policy_engine(
    config: GatewayConfig, stack: contextlib.AsyncExitStack
) -> TrustEvaluator:
    """The trust engine for ``config.trust`` (a preset name or a policy file), on ``stack``."""
    try:
        policy = resolve_policy(config.trust)
        trust_config = TrustConfig.from_env(policy=policy, state_dir=config.state_dir)
        engine: TrustEvaluator = await stack.enter_async_context(open_trust_engine(trust_config))
    except (PolicyError, TrustConfigError) as exc:
        raise ConfigError("trust", str(exc)) from exc
    return engine


async def _serve_metrics(
    gateway: Gateway, address: str, *, task_status: trio.TaskStatus[None]
) -> None:
    """The metrics and health endpoint (imported only when configured) in our nursery."""
    from relay_runtime._metrics import GatewayMetrics, serve_metrics

    async with trio.open_nursery() as nursery:
        gateway.metrics_url = await nursery.start(serve_metrics, GatewayMetrics(gateway), address)
        task_status.started()


async def _serve(
    config: GatewayConfig,
    agent: Agent,
    evaluator: TrustEvaluator,
    db: StateStore,
    dialer: Dialer | None,
    task_status: trio.TaskStatus[Gateway],
    lease: Lease | None = None,
) -> None:
    """Assemble the parts and run them in the gateway's one nursery (which ends, sockets
    closed, when the ``lease`` is lost)."""
    inbound_send, inbound_recv = trio.open_memory_channel[InboundItem](INBOUND_BUFFER)

    def on_interrupt(session_key: str, chat_id: str) -> None:
        dispatcher.interrupt(session_key, chat_id)

    supervisor = Supervisor(
        config,
        inbound=inbound_send,
        on_interrupt=on_interrupt,
        dialer=dialer,
        token_factory=upgrade_token_factory(config),
    )
    replies = Replies(supervisor.outbound, db)
    dispatcher = Dispatcher(
        agent=agent,
        trust=evaluator,
        replies=replies,
        outbound=supervisor.outbound,
        db=db,
        max_concurrent_turns=config.max_concurrent_turns,
        max_pending_inbound=config.max_pending_inbound,
        group_sessions_per_user=config.group_sessions_per_user,
        thread_sessions_per_user=config.thread_sessions_per_user,
        turn_timeout_s=config.turn_timeout_s,
        reply_key=db.reply_key,
    )
    # Turns running when a going-idle close starts get its drain window to finish (their
    # replies still go out); what does not finish is resumed (live) or replayed (buffered).
    supervisor.drain_hook = dispatcher.wait_idle
    gateway = Gateway(
        config,
        supervisor,
        dispatcher,
        replies,
        evaluator,
        wake_confirmed=bool(config.wake_url) and config.wake_confirmed,
    )
    async with trio.open_nursery() as nursery:

        async def supervise(*, task_status: trio.TaskStatus[Supervisor]) -> None:
            try:
                await supervisor.run(task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()

        if config.metrics is not None:  # /metrics, /healthz, /readyz (issue 16)
            await nursery.start(_serve_metrics, gateway, config.metrics)
        await nursery.start(replies.run_flusher)
        nursery.start_soon(_watch_storage, db, supervisor, config.storage_failure_limit_s)
        if lease is not None:
            nursery.start_soon(lease.keep)
        nursery.start_soon(dispatcher.run, inbound_recv, nursery)
        nursery.start_soon(_flush_on_ready, supervisor, replies)
        await nursery.start(supervise)
        task_status.started(gateway)
