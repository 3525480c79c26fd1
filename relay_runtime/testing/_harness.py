"""The harness: a real gateway against the reference connector in the test's trio run
(:func:`open_harness`, :class:`Harness`, :class:`Said`), and :func:`autojump_around_threads`."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

import attrs
import trio
import trio.lowlevel
import trio.testing
import trio.to_thread

from protocol._events import MessageEvent, SessionSource
from relay_runtime._delivery import Agent, TrustEvaluator
from relay_runtime._gateway import Gateway, run_gateway
from relay_runtime._transport import Dialer
from relay_runtime.config import GatewayConfig
from relay_runtime.connector import Delivery, ReferenceConnector
from trust import Decision, TrustOutcome

#: How the harness connects gateway and connector; ``auto`` picks ``memory`` under a
#: ``MockClock`` and ``loopback`` otherwise.
Transport = Literal["auto", "memory", "loopback"]

DEFAULT_USER: Final = "relay:tester"
GATEWAY_ID: Final = "gw-harness"
#: The actor that sets up trust levels, acting as the local operator (audit rows name it).
OPERATOR: Final = "local:harness"
SAY_TIMEOUT_S: Final = 10.0
#: Bound on the going_idle drain when the harness closes.
STOP_TIMEOUT_S: Final = 5.0
#: The relay URL the gateway is configured with in memory mode (never resolved or dialed).
MEMORY_RELAY_URL: Final = "ws://reference-connector.invalid"
#: Real seconds between looks while nothing is scheduled at all (see autojump_around_threads).
_IDLE_POLL_S: Final = 0.01


def parse_user(user: str) -> tuple[str, str]:
    """``"platform:user_id"`` split at the first ``:`` (both parts stripped, non-empty)."""
    platform, sep, user_id = user.partition(":")
    platform, user_id = platform.strip().lower(), user_id.strip()
    if not sep or not platform or not user_id:
        raise ValueError(f"user {user!r}: expected PLATFORM:USER_ID, e.g. discord:1234")
    return platform, user_id


@attrs.frozen
class Said:
    """What became of one message sent with :meth:`Harness.say`.

    ``decision`` is the trust decision (``None`` if the gateway never asked, e.g. a
    duplicate); ``replies`` are the texts sent into the chat while the message was handled,
    oldest first, each as last edited.
    """

    text: str
    user: str
    chat_id: str
    message_id: str
    decision: Decision | None
    replies: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        """Whether trust admitted the message (the agent ran)."""
        return self.decision is not None and self.decision.allow

    @property
    def reply(self) -> str | None:
        """The replies joined by newlines, or ``None`` if there were none."""
        return "\n".join(self.replies) if self.replies else None


class _RecordingTrust:
    """The trust evaluator the gateway sees: the real one, with each outcome remembered."""

    def __init__(self, inner: TrustEvaluator) -> None:
        self.inner = inner
        self.outcomes: dict[str, TrustOutcome] = {}

    async def evaluate(self, event: MessageEvent) -> TrustOutcome:
        outcome = await self.inner.evaluate(event)
        if event.message_id is not None:
            self.outcomes[event.message_id] = outcome
        return outcome

    def stats(self) -> object:
        stats = getattr(self.inner, "stats", None)
        return stats() if callable(stats) else stats


@attrs.define(eq=False)
class Harness:
    """A running gateway, its reference connector and its trust engine (see the module doc)."""

    connector: ReferenceConnector
    gateway: Gateway
    engine: Any
    state_dir: Path
    _trust: _RecordingTrust
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    # Message ids are unique across harnesses: a reused state dir remembers completed ids
    # (replay dedupe) and would skip a repeated one.
    _prefix: str = attrs.field(factory=lambda: f"h{secrets.token_hex(4)}")
    #: ``"memory"`` or ``"loopback"``: how gateway and connector are connected.
    transport: str = "loopback"
    #: who the harness's own trust changes (levels, admins, invites) are recorded as.
    operator: str = OPERATOR

    async def say(
        self,
        text: str,
        *,
        user: str = DEFAULT_USER,
        chat_id: str | None = None,
        chat_type: str = "dm",
        user_name: str | None = None,
        timeout_s: float = SAY_TIMEOUT_S,
        on_delivered: Callable[[Delivery], None] | None = None,
    ) -> Said:
        """Send ``text`` as ``user`` (``platform:user_id``) and wait until it is handled.

        The chat defaults to the user's direct-message chat. ``on_delivered`` is called with
        the connector's :class:`~relay_runtime.connector.Delivery` as soon as the message is
        queued (before the gateway handles it). Raises ``trio.TooSlowError`` if the gateway
        has not acked the message within ``timeout_s``.
        """
        platform, user_id = parse_user(user)
        chat = chat_id if chat_id is not None else f"dm-{platform}-{user_id}"
        message_id = f"{self._prefix}-{next(self._ids)}"
        event = MessageEvent(
            text=text,
            message_id=message_id,
            source=SessionSource(
                platform=platform,
                chat_id=chat,
                chat_type=chat_type,
                user_id=user_id,
                user_name=user_name or user_id,
                message_id=message_id,
            ),
        )
        known = set(self.connector.messages)
        with trio.fail_after(timeout_s):
            delivery = await self.connector.inject(event, gateway_id=GATEWAY_ID)
            if delivery.buffer_id is None:
                raise RuntimeError(f"message not delivered: {delivery.outcome} {delivery.reason}")
            buffer_id = delivery.buffer_id
            if on_delivered is not None:
                on_delivered(delivery)
            await self.connector.wait_for(lambda: buffer_id in self.connector.inbound_acks)
        replies = tuple(
            message.content
            for key, message in self.connector.messages.items()
            if key not in known and message.chat_id == chat
        )
        outcome = self._trust.outcomes.pop(message_id, None)
        return Said(
            text=text,
            user=f"{platform}:{user_id}",
            chat_id=chat,
            message_id=message_id,
            decision=None if outcome is None else outcome.decision,
            replies=replies,
        )

    async def set_level(self, user: str, level: str) -> None:
        """Raise ``user`` to ``contact`` or ``whitelist`` as the operator (no-op if there)."""
        if level not in ("contact", "whitelist"):
            raise ValueError(f"level {level!r}: expected contact or whitelist")
        steps = ("contact", "whitelist") if level == "whitelist" else ("contact",)
        for step in steps:
            await _unless_done(self._ops().promote(user, step, self.operator, tier="operator"))

    async def make_admin(self, user: str) -> None:
        """Give ``user`` the admin role as the operator (no-op if already an admin)."""
        await _unless_done(self._ops().set_admin(user, self.operator, tier="operator"))

    async def create_invite(self, *, max_uses: int = 1) -> str:
        """A new invite code (what ``/invite CODE`` accepts under ``careful``)."""
        created = await self._ops().create_invite(self.operator, max_uses=max_uses, tier="operator")
        return str(created.code)

    def _ops(self) -> Any:
        ops = getattr(self.engine, "ops", None)
        if ops is None:
            raise RuntimeError("trust operations need the built-in trust engine, not a custom one")
        return ops

    async def drop(self, *, timeout_s: float = SAY_TIMEOUT_S) -> None:
        """Abort the gateway's socket and wait until it has reconnected (READY again)."""
        supervisor = self.gateway.supervisor
        seen = supervisor.stats.handshakes
        with trio.fail_after(timeout_s):
            await self.connector.drop(GATEWAY_ID)
            await supervisor.wait_ready(after=seen)
        if self.gateway.state != "ready":
            raise RuntimeError(f"the gateway did not reconnect (state {self.gateway.state})")


async def _unless_done(operation: Awaitable[object]) -> None:
    """Run a trust operation; ``not_applicable`` (already in that state) is fine."""
    from trust._records import TrustOpError

    try:
        await operation
    except TrustOpError as exc:
        if exc.code != "not_applicable":
            raise


@contextlib.asynccontextmanager
async def open_harness(
    agent: Agent,
    *,
    trust: str | os.PathLike[str] | TrustEvaluator = "open",
    state_dir: str | os.PathLike[str] | None = None,
    users: Mapping[str, str] | None = None,
    admins: Iterable[str] = (),
    connector_options: Mapping[str, Any] | None = None,
    transport: Transport = "auto",
    operator: str = OPERATOR,
    **config: Any,
) -> AsyncIterator[Harness]:
    """Run ``agent`` behind a real gateway and reference connector for an ``async with``.

    Args:
        agent: the agent under test, ``async def (turn) -> str | None``.
        trust: a preset name (``open`` by default: every message reaches the agent),
            a policy file, or your own evaluator (any object with ``async evaluate``).
        state_dir: where the state and trust databases live (default: a temporary
            directory removed afterwards).
        users: ``{"discord:1234": "whitelist", ...}`` levels set before the first message.
        admins: users given the admin role before the first message.
        connector_options: further :class:`ReferenceConnector` arguments.
        transport: ``memory`` (memory streams; deterministic under ``autojump_clock``),
            ``loopback`` (TCP on 127.0.0.1; real clock only) or ``auto`` (``memory`` when
            the run's clock is a ``MockClock``, else ``loopback``).
        operator: the actor the harness's own trust changes are audited as.
        config: further :class:`GatewayConfig` fields (e.g. ``max_concurrent_turns=1``).
    """
    clock = trio.lowlevel.current_clock()
    mock = clock if isinstance(clock, trio.testing.MockClock) else None
    if transport == "auto":
        transport = "memory" if mock is not None else "loopback"
    elif transport not in ("memory", "loopback"):
        raise ValueError(f"transport {transport!r}: expected auto, memory or loopback")
    async with trio.open_nursery() as guard_nursery:
        if transport == "memory" and mock is not None and mock.autojump_threshold < math.inf:
            guard_nursery.start_soon(autojump_around_threads, mock)
        async with _open(
            agent, trust, state_dir, users, admins, connector_options, transport, config, operator
        ) as harness:
            yield harness
        guard_nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _open(
    agent: Agent,
    trust: str | os.PathLike[str] | TrustEvaluator,
    state_dir: str | os.PathLike[str] | None,
    users: Mapping[str, str] | None,
    admins: Iterable[str],
    connector_options: Mapping[str, Any] | None,
    transport: str,
    config: Mapping[str, Any],
    operator: str = OPERATOR,
) -> AsyncIterator[Harness]:
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-harness-"))
        root = Path(state_dir)
        await trio.Path(root).mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        options: dict[str, Any] = {"always_buffer": True, "close_timeout": 1.0}
        options.update(connector_options or {})
        if not options["always_buffer"]:
            # say() waits for the inbound_ack, which only buffered deliveries get.
            raise ValueError("the harness needs the connector's always_buffer=True")
        # Its bufferIds carry a random run prefix, so a reused state dir (which remembers
        # completed bufferIds, RC §4.6) never skips a new message.
        connector = ReferenceConnector(secrets={GATEWAY_ID: secret}, **options)
        # The gateway stops before the connector, so no close handshake waits on a peer
        # that is gone.
        async with trio.open_nursery() as connector_nursery:
            dialer: Dialer | None = None
            if transport == "memory":
                relay_url = MEMORY_RELAY_URL
                dialer = connector.memory_dialer(connector_nursery)
            else:
                await connector_nursery.start(connector.serve, "127.0.0.1", 0)
                relay_url = connector.base_url
            settings: dict[str, Any] = {
                "relay_url": relay_url,
                "gateway_id": GATEWAY_ID,
                "secret": secret,
                "state_dir": root,
                "trust": trust if isinstance(trust, str) else "open",
                "backoff_base_s": 0.05,
                "backoff_cap_s": 0.5,
            }
            settings.update(config)
            gateway_config = GatewayConfig(**settings)
            async with contextlib.AsyncExitStack() as engines:
                engine: Any
                if isinstance(trust, str | os.PathLike):
                    from relay_runtime._cli.run import open_trust

                    engine = await engines.enter_async_context(
                        open_trust(attrs.evolve(gateway_config, trust=os.fspath(trust)))
                    )
                else:
                    engine = trust
                recording = _RecordingTrust(engine)
                async with trio.open_nursery() as gateway_nursery:
                    gateway: Gateway = await gateway_nursery.start(
                        _run, gateway_config, agent, recording, dialer
                    )
                    harness = Harness(
                        connector,
                        gateway,
                        engine,
                        root,
                        recording,
                        transport=transport,
                        operator=operator,
                    )
                    for user in admins:
                        await harness.make_admin(user)
                    for user, level in (users or {}).items():
                        await harness.set_level(user, level)
                    try:
                        yield harness
                    finally:
                        # Drain through going_idle so the socket closes cleanly; then cancel.
                        with trio.move_on_after(STOP_TIMEOUT_S, shield=True):
                            await gateway.go_idle()
                        gateway_nursery.cancel_scope.cancel()
            connector_nursery.cancel_scope.cancel()


async def _run(
    config: GatewayConfig,
    agent: Agent,
    trust: TrustEvaluator,
    dialer: Dialer | None,
    *,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    await run_gateway(config, agent, trust=trust, dialer=dialer, task_status=task_status)


async def autojump_around_threads(clock: trio.testing.MockClock) -> NoReturn:
    """Autojump ``clock`` as ``MockClock`` would, but never while a worker thread runs.

    With ``autojump_threshold=0`` trio jumps virtual time as soon as every task is blocked,
    and a task waiting for ``trio.to_thread.run_sync`` counts as blocked: a timeout can fire
    while SQLite is still working in its thread. Trio has no way to mark a thread call as
    activity, so this task takes the clock over with two documented rules: a task waiting
    in :func:`trio.testing.wait_all_tasks_blocked` suppresses ``MockClock``'s own autojump,
    and :func:`trio.testing.active_thread_count` counts the ``to_thread`` calls in flight.
    It waits until every other task has been blocked for ``clock.autojump_threshold`` real
    seconds, then jumps to the next deadline if no thread call is in flight, or else holds
    the clock still until they have all finished. Threads started other ways (``threading``,
    ``trio.lowlevel.start_thread_soon``) are not seen. Run it in a nursery for as long as
    needed; cancel it to hand autojumping back to the clock.
    """
    while True:
        await trio.testing.wait_all_tasks_blocked(clock.autojump_threshold)
        if trio.testing.active_thread_count():
            await _hold_while_threads_run()
            continue
        jump = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if 0 < jump < math.inf:
            clock.jump(jump)
        elif jump == math.inf:
            # Nothing is scheduled: look again later rather than spin on an idle loop.
            await trio.testing.wait_all_tasks_blocked(_IDLE_POLL_S)


async def _hold_while_threads_run() -> None:
    """Keep virtual time still until no ``to_thread`` call is in flight."""
    async with trio.open_nursery() as nursery:
        # An infinite cushion never fires: the waiter only keeps the clock from jumping.
        nursery.start_soon(trio.testing.wait_all_tasks_blocked, math.inf)
        await trio.testing.wait_all_threads_completed()
        nursery.cancel_scope.cancel()
