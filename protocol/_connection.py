"""The relay connection state machine (RC §6), pure.

Events go in through :meth:`ConnectionMachine.handle`; a list of actions comes out, and
:attr:`ConnectionMachine.state` is the new state. Nothing here does I/O, reads a clock or
draws randomness of its own: timers are actions the driver arms and reports back as
:class:`TimerExpired`, and the jitter comes from an injected ``uniform``.

As in h11's ``_state.py``, the transition table :data:`TRANSITIONS` is data: each
``(state, event)`` row names the states it may lead to, and a pair with no row raises
:class:`ConnectionStateError` (the driver sent an event the machine cannot be in). Rows
with no handler are the late events a driver legitimately delivers after the machine moved
on (a frame still in flight on a socket it is closing, a timer of a finished phase): the
state stays and nothing happens. The RC §6.5 4401 table is
:meth:`ConnectionMachine._unauthorized`. The frame-level face over this machine is
:class:`protocol._relay_connection.RelayConnection`.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from protocol._backoff import Uniform, ladder_delay
from protocol._lifecycle import (
    CLOCK_SKEW_MESSAGE,
    DISABLED_MESSAGE,
    NO_CREDENTIALS_MESSAGE,
    REFUSED_DISABLED_MESSAGE,
    UNAUTHORIZED,
    Action,
    CancelTimer,
    CloseSocket,
    ConnectionStateError,
    CredentialsRefused,
    DescriptorReceived,
    DialFailed,
    DialSucceeded,
    Event,
    FailPending,
    GoingIdleAckReceived,
    HandshakeCompleted,
    IdleMode,
    IdleResolved,
    Log,
    OpenSocket,
    SendGoingIdle,
    SendHellos,
    SocketClosed,
    Start,
    StartTimer,
    State,
    StopRequested,
    SuspendRequested,
    Timer,
    TimerExpired,
    Timing,
    WriteFrames,
)
from protocol._results import DISABLED as RELAY_DISABLED
from protocol._results import TRANSPORT_CLOSED

__all__ = [
    "CLOCK_SKEW_MESSAGE",
    "DISABLED_MESSAGE",
    "NO_CREDENTIALS_MESSAGE",
    "REFUSED_DISABLED_MESSAGE",
    "RELAY_DISABLED",
    "TRANSITIONS",
    "TRANSPORT_CLOSED",
    "UNAUTHORIZED",
    "Action",
    "CancelTimer",
    "CloseSocket",
    "ConnectionMachine",
    "ConnectionStateError",
    "CredentialsRefused",
    "DescriptorReceived",
    "DialFailed",
    "DialSucceeded",
    "Event",
    "FailPending",
    "GoingIdleAckReceived",
    "HandshakeCompleted",
    "IdleMode",
    "IdleResolved",
    "Log",
    "OpenSocket",
    "SendGoingIdle",
    "SendHellos",
    "SocketClosed",
    "Start",
    "StartTimer",
    "State",
    "StopRequested",
    "SuspendRequested",
    "Timer",
    "TimerExpired",
    "Timing",
    "Transition",
    "WriteFrames",
]

#: What a handler decides: the state to move to (one of its row's targets) and the actions.
Step = tuple[State, list[Action]]
#: A table key: the state and the event's type, or for :class:`TimerExpired` its timer.
EventKey = type[Event] | Timer


@attrs.frozen
class Transition:
    """One row of :data:`TRANSITIONS`: the states it may lead to and who picks among them.

    ``handler`` is ``None`` for a late event: the state stays and there are no actions.
    """

    targets: frozenset[State]
    handler: Callable[[ConnectionMachine, Event], Step] | None = None


def event_key(event: Event) -> EventKey:
    """The key an event is looked up under: its type, or the timer that expired."""
    return event.timer if isinstance(event, TimerExpired) else type(event)


class ConnectionMachine:
    """One gateway's connection lifecycle: states, timers, the ladder and the 4401 rules.

    Args:
        has_credentials: both a gatewayId and a secret are configured (RC §5).
        timing: durations; RC defaults when omitted.
        uniform: ``uniform(low, high)`` used for the full-jitter ladder.
        exit_on_refused: go DISABLED at the first :class:`CredentialsRefused` report
            instead of retrying for ever.

    The state is :attr:`state`; the fields below are the history the RC §6.4 ladder and
    the RC §6.5 4401 table consult, which outlives any one state.
    """

    def __init__(
        self,
        *,
        has_credentials: bool,
        uniform: Uniform,
        timing: Timing | None = None,
        exit_on_refused: bool = False,
    ) -> None:
        self.has_credentials = has_credentials
        self.exit_on_refused = exit_on_refused
        self.timing = timing if timing is not None else Timing()
        self._uniform = uniform
        self.state = State.INIT
        #: consecutive failures ``n`` of the ladder (RC §6.4).
        self.failures = 0
        #: ``H``: a valid descriptor arrived in this process (RC §6.5).
        self.handshake_seen = False
        #: the current/next dial is the provisional fresh-token retry after a 4401.
        self.fresh_token_retry = False
        #: the current dial is the immediate re-dial after a 4401 ``expired``.
        self.expired_retry = False
        #: re-dial on the 1 s dormant cadence (after a suspend close) until READY.
        self.dormant = False
        #: the current connection has stayed READY ``stable_after_s``.
        self.stable = False
        #: why ``going_idle`` was sent (IDLE_REQUESTED and IDLE_ACKED only).
        self.idle_mode: IdleMode | None = None
        #: the delay chosen for the last ladder wait (for stats and logs).
        self.last_delay: float | None = None
        #: an ``expired`` 4401 arrived less than half a token lifetime ago.
        self.recent_expired = False
        #: handshake-less refusals (401/4401) since the start or the last handshake.
        self.refusals = 0
        self._report_refusals_at = self.timing.refused_report_after
        #: why the machine went DISABLED (the message ``RelayDisabled`` carries).
        self.disabled_reason: str | None = None

    @property
    def live(self) -> bool:
        """Outbound frames may be sent (READY or IDLE_REQUESTED)."""
        # Identity tests, not set membership: an Enum's hash is a Python-level call, and
        # this is asked several times per message.
        state = self.state
        return state is State.READY or state is State.IDLE_REQUESTED

    @property
    def terminal(self) -> bool:
        """CLOSED or DISABLED: nothing will ever be dialled again."""
        state = self.state
        return state is State.CLOSED or state is State.DISABLED

    def handle(self, event: Event) -> list[Action]:
        """Apply ``event``; return the actions the driver must carry out, in order.

        Raises:
            ConnectionStateError: ``(state, event)`` has no row in :data:`TRANSITIONS`.
        """
        if isinstance(event, TimerExpired) and event.timer is Timer.EXPIRED_WINDOW:
            # Not a transition: it only ends the "recent expired" window, in any state.
            self.recent_expired = False
            return []
        row = TRANSITIONS.get((self.state, event_key(event)))
        if row is None:
            raise ConnectionStateError(f"{_name(event)} in state {self.state.value}")
        if row.handler is None:
            return []
        target, actions = row.handler(self, event)
        if target not in row.targets:
            raise ConnectionStateError(
                f"{_name(event)} in state {self.state.value} led to {target.value}, "
                f"not one of the row's targets"
            )
        self.state = target
        return actions

    # ---- helpers ------------------------------------------------------------------------

    def _count_failure(self) -> None:
        if not self.dormant:
            self.failures += 1

    def _redial(self, *, immediate: bool = False) -> Step:
        """Schedule the next dial: at once, on the dormant cadence, or after a ladder wait."""
        if immediate:
            self.stable = False
            return State.DIALING, [OpenSocket(fresh_token_retry=self.fresh_token_retry)]
        if self.dormant:
            delay = self.timing.dormant_interval_s
        else:
            delay = ladder_delay(
                self.failures,
                base=self.timing.backoff_base_s,
                cap=self.timing.backoff_cap_s,
                uniform=self._uniform,
            )
        self.last_delay = delay
        return State.BACKOFF, [StartTimer(Timer.BACKOFF, delay)]

    def _failed(self) -> Step:
        """A dial failed or a connection ended before it proved stable: climb the ladder."""
        self._count_failure()
        self.expired_retry = False
        return self._redial()

    def _dropped(self) -> Step:
        """A connection that may have been READY ended (not by 4401)."""
        if not self.stable:
            self._count_failure()
        self.expired_retry = False
        return self._redial()

    def _disable(self, message: str = DISABLED_MESSAGE) -> Step:
        self.disabled_reason = message
        return State.DISABLED, [
            Log("error", message),
            FailPending(RELAY_DISABLED, retryable=False),
            *(CancelTimer(timer) for timer in Timer),
            IdleResolved(acked=False),
        ]

    def _unauthorized(self, reason: str) -> Step:
        """The RC §6.5 table: a close 4401 (or HTTP 401 at upgrade, ``reason == ""``)."""
        reason = reason.strip().lower()
        if not self.has_credentials:
            return _before([Log("error", NO_CREDENTIALS_MESSAGE)], self._failed())
        if reason == "expired":
            self._count_failure()
            # Half a token lifetime: a token minted after the last `expired` cannot have aged
            # out that soon, while a connector that re-checks token age on long sessions
            # closes a lifetime after the mint at the earliest (never a false alarm).
            window = StartTimer(Timer.EXPIRED_WINDOW, self.timing.token_ttl_s / 2)
            if self.expired_retry or self.recent_expired:
                # The clock (or the connector) is suspect: wait on the ladder while it lasts,
                # instead of re-dialing in a loop.
                self.expired_retry = False
                return _before([Log("warning", CLOCK_SKEW_MESSAGE), window], self._redial())
            self.expired_retry = True
            self.recent_expired = True
            return _before([window], self._redial(immediate=True))
        if not self.handshake_seen:
            return self._refused()
        if not self.fresh_token_retry:
            self._count_failure()
            self.fresh_token_retry = True
            return self._redial(immediate=True)
        return self._disable()

    def _refused(self) -> Step:
        """A refusal with no handshake yet: ladder, reporting a streak with back-off."""
        self.refusals += 1
        if self.refusals < self._report_refusals_at:
            return self._failed()
        self._report_refusals_at *= 2
        if self.exit_on_refused:
            return _before(
                [CredentialsRefused(self.refusals, exiting=True)],
                self._disable(REFUSED_DISABLED_MESSAGE),
            )
        return _before([CredentialsRefused(self.refusals)], self._failed())

    def _socket_gone(self, event: SocketClosed, pending_error: list[Action]) -> Step:
        if event.code == UNAUTHORIZED:
            target, actions = self._unauthorized(event.reason)
            if target is State.DISABLED:
                return target, actions
            return target, pending_error + actions
        return _before(pending_error, self._dropped())

    # ---- transitions --------------------------------------------------------------------

    def _start(self, event: Event) -> Step:
        self.stable = False
        return State.DIALING, [OpenSocket(fresh_token_retry=self.fresh_token_retry)]

    def _stop_quiet(self, event: Event) -> Step:
        """Stop outside READY: close whatever exists, never reconnect."""
        actions: list[Action] = []
        if self.state in (State.DIALING, State.HELLO_SENT):
            actions.append(CloseSocket(1000, "stopping"))
        actions += [CancelTimer(Timer.HANDSHAKE), CancelTimer(Timer.BACKOFF)]
        return State.CLOSED, [*actions, IdleResolved(acked=False)]

    def _not_acked(self, event: Event) -> Step:
        """A stop or suspend the state cannot act on: answer "not acked", change nothing."""
        return self.state, [IdleResolved(acked=False)]

    def _dial_ok(self, event: Event) -> Step:
        return State.HELLO_SENT, [
            SendHellos(),
            StartTimer(Timer.HANDSHAKE, self.timing.handshake_timeout_s),
        ]

    def _dial_failed(self, event: Event) -> Step:
        assert isinstance(event, DialFailed)
        if event.http_status == 401:
            return self._unauthorized("")
        return self._failed()

    def _first_descriptor(self, event: Event) -> Step:
        assert isinstance(event, DescriptorReceived)
        if not event.valid:
            closing: list[Action] = [
                CancelTimer(Timer.HANDSHAKE),
                CloseSocket(1002, "invalid descriptor"),
            ]
            return _before(closing, self._failed())
        self.handshake_seen = True
        self.expired_retry = False
        self.refusals = 0
        self._report_refusals_at = self.timing.refused_report_after
        self.dormant = False
        return State.READY, [
            CancelTimer(Timer.HANDSHAKE),
            HandshakeCompleted(),
            StartTimer(Timer.STABILITY, self.timing.stable_after_s),
        ]

    def _handshake_timeout(self, event: Event) -> Step:
        return _before([CloseSocket(1000, "handshake timeout")], self._failed())

    def _handshake_closed(self, event: Event) -> Step:
        assert isinstance(event, SocketClosed)
        return self._socket_gone(event, [CancelTimer(Timer.HANDSHAKE)])

    def _stable(self, event: Event) -> Step:
        self.stable = True
        self.failures = 0
        self.fresh_token_retry = False
        return self.state, []

    def _no_idle_ack(self, event: Event) -> Step:
        if self.idle_mode is IdleMode.SUSPEND:
            self.idle_mode = None
            return State.READY, [IdleResolved(acked=False)]
        return State.IDLE_ACKED, [
            IdleResolved(acked=False),
            CloseSocket(1000, "going idle", drain_s=self.timing.idle_drain_s),
        ]

    def _live_closed(self, event: Event) -> Step:
        assert isinstance(event, SocketClosed)
        actions: list[Action] = [
            CancelTimer(Timer.STABILITY),
            FailPending(TRANSPORT_CLOSED, retryable=True),
        ]
        if self.state is State.IDLE_REQUESTED:
            actions += [CancelTimer(Timer.IDLE_ACK), IdleResolved(acked=False)]
            mode, self.idle_mode = self.idle_mode, None
            if mode is IdleMode.SHUTDOWN:
                return State.CLOSED, actions
        return self._socket_gone(event, actions)

    def _request_idle(self, event: Event) -> Step:
        self.idle_mode = (
            IdleMode.SUSPEND if isinstance(event, SuspendRequested) else IdleMode.SHUTDOWN
        )
        return State.IDLE_REQUESTED, [
            SendGoingIdle(),
            StartTimer(Timer.IDLE_ACK, self.timing.idle_ack_timeout_s),
        ]

    def _stop_while_idling(self, event: Event) -> Step:
        """A stop during a suspend's idle flow turns it into a shutdown."""
        self.idle_mode = IdleMode.SHUTDOWN
        return self.state, []

    def _idle_acked(self, event: Event) -> Step:
        return State.IDLE_ACKED, [
            CancelTimer(Timer.IDLE_ACK),
            IdleResolved(acked=True),
            CloseSocket(1000, "going idle", drain_s=self.timing.idle_drain_s),
        ]

    def _idle_closed(self, event: Event) -> Step:
        mode, self.idle_mode = self.idle_mode, None
        actions: list[Action] = [CancelTimer(Timer.STABILITY)]
        if mode is IdleMode.SUSPEND:
            actions.append(FailPending(TRANSPORT_CLOSED, retryable=True))
            self.dormant = True
            return _before(actions, self._redial())
        return State.CLOSED, [*actions, FailPending(TRANSPORT_CLOSED, retryable=False)]


def _before(actions: list[Action], step: Step) -> Step:
    """``step`` with ``actions`` carried out first."""
    target, rest = step
    return target, [*actions, *rest]


def _name(event: Event) -> str:
    if isinstance(event, TimerExpired):
        return f"{event.timer.value} timer"
    return type(event).__name__


def _row(
    *targets: State, handler: Callable[[ConnectionMachine, Event], Step] | None = None
) -> Transition:
    return Transition(frozenset(targets), handler)


def _late(state: State) -> Transition:
    """A late event in ``state``: it stays, nothing happens."""
    return _row(state)


def _table() -> dict[tuple[State, EventKey], Transition]:
    m = ConnectionMachine
    S = State
    ladder = (S.BACKOFF, S.DIALING, S.DISABLED)  # where a failure or 4401 can lead
    table: dict[tuple[State, EventKey], Transition] = {
        (S.INIT, Start): _row(S.DIALING, handler=m._start),
        (S.INIT, StopRequested): _row(S.CLOSED, handler=m._stop_quiet),
        (S.DIALING, DialSucceeded): _row(S.HELLO_SENT, handler=m._dial_ok),
        (S.DIALING, DialFailed): _row(*ladder, handler=m._dial_failed),
        (S.DIALING, StopRequested): _row(S.CLOSED, handler=m._stop_quiet),
        (S.HELLO_SENT, DescriptorReceived): _row(S.READY, S.BACKOFF, handler=m._first_descriptor),
        (S.HELLO_SENT, Timer.HANDSHAKE): _row(S.BACKOFF, handler=m._handshake_timeout),
        (S.HELLO_SENT, SocketClosed): _row(*ladder, handler=m._handshake_closed),
        (S.HELLO_SENT, StopRequested): _row(S.CLOSED, handler=m._stop_quiet),
        (S.READY, DescriptorReceived): _late(S.READY),  # later descriptors: no transition
        (S.READY, Timer.STABILITY): _row(S.READY, handler=m._stable),
        (S.READY, SocketClosed): _row(*ladder, handler=m._live_closed),
        (S.READY, StopRequested): _row(S.IDLE_REQUESTED, handler=m._request_idle),
        (S.READY, SuspendRequested): _row(S.IDLE_REQUESTED, handler=m._request_idle),
        (S.IDLE_REQUESTED, DescriptorReceived): _late(S.IDLE_REQUESTED),
        (S.IDLE_REQUESTED, GoingIdleAckReceived): _row(S.IDLE_ACKED, handler=m._idle_acked),
        (S.IDLE_REQUESTED, Timer.STABILITY): _row(S.IDLE_REQUESTED, handler=m._stable),
        (S.IDLE_REQUESTED, Timer.IDLE_ACK): _row(S.READY, S.IDLE_ACKED, handler=m._no_idle_ack),
        (S.IDLE_REQUESTED, SocketClosed): _row(S.CLOSED, *ladder, handler=m._live_closed),
        (S.IDLE_REQUESTED, StopRequested): _row(S.IDLE_REQUESTED, handler=m._stop_while_idling),
        (S.IDLE_ACKED, DescriptorReceived): _late(S.IDLE_ACKED),
        (S.IDLE_ACKED, GoingIdleAckReceived): _late(S.IDLE_ACKED),
        (S.IDLE_ACKED, Timer.STABILITY): _row(S.IDLE_ACKED, handler=m._stable),
        (S.IDLE_ACKED, SocketClosed): _row(S.CLOSED, S.BACKOFF, handler=m._idle_closed),
        (S.IDLE_ACKED, StopRequested): _row(S.IDLE_ACKED, handler=m._stop_while_idling),
        (S.BACKOFF, Timer.BACKOFF): _row(S.DIALING, handler=m._start),
        (S.BACKOFF, StopRequested): _row(S.CLOSED, handler=m._stop_quiet),
    }
    # Frames come from the peer, whenever it likes: one the state has no use for (a stray
    # ack, a frame in flight on a socket the machine already gave up) changes nothing.
    for state in S:
        table.setdefault((state, DescriptorReceived), _late(state))
        table.setdefault((state, GoingIdleAckReceived), _late(state))
    # The end of a socket the machine closed after a handshake failure or a stop, and
    # timers of a phase it left, reach it late: they change nothing.
    for state in (S.BACKOFF, S.CLOSED, S.DISABLED):
        for key in (SocketClosed, Timer.HANDSHAKE, Timer.IDLE_ACK):
            table[(state, key)] = _late(state)
    for state in (S.CLOSED, S.DISABLED):
        for key in (Timer.BACKOFF, Timer.STABILITY):
            table[(state, key)] = _late(state)
    # A stop or suspend where there is no idle flow to run is answered "not acked".
    for state in S:
        table.setdefault((state, StopRequested), _row(state, handler=m._not_acked))
        table.setdefault((state, SuspendRequested), _row(state, handler=m._not_acked))
    return table


#: (state, event type or expired timer) -> :class:`Transition`. A pair missing here raises
#: :class:`ConnectionStateError`; ``Start`` outside INIT is one (a driver bug).
TRANSITIONS: dict[tuple[State, EventKey], Transition] = _table()
