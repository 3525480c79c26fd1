"""The relay connection state machine (RC §6), pure.

Events go in through :meth:`ConnectionMachine.handle`; a list of :data:`Action` values comes
out, and :attr:`ConnectionMachine.state` is the new state. Nothing here does I/O, reads a
clock or draws randomness of its own: timers are actions the driver arms and reports back as
:class:`TimerExpired`, and the jitter comes from an injected ``uniform``. Everything that
decides a transition lives in this file (h11's ``_state.py`` is the model): the transition
table is :data:`TRANSITIONS`, the RC §6.5 4401 table is :meth:`ConnectionMachine._unauthorized`.

The driver (``relay_runtime.supervisor``) feeds only events of the *current* socket, the
end of a close the machine ordered included: in IDLE_ACKED that close is what the machine
waits for; after a handshake failure it has already moved to BACKOFF and ignores it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from protocol.backoff import Uniform, ladder_delay

__all__ = [
    "CLOCK_SKEW_MESSAGE",
    "NO_CREDENTIALS_MESSAGE",
    "REFUSED_DISABLED_MESSAGE",
    "TRANSITIONS",
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
]

NO_CREDENTIALS_MESSAGE = (
    "connector requires authentication; set GATEWAY_RELAY_ID and GATEWAY_RELAY_SECRET"
)
DISABLED_MESSAGE = (
    "relay disabled: connector refused a freshly minted credential (4401); "
    "re-provision or re-enroll to re-enable"
)
CLOCK_SKEW_MESSAGE = (
    "relay: connector rejected a freshly minted token as expired again within the token "
    "lifetime; check this host's clock (skew) or the connector; re-dialing on the backoff "
    "ladder instead of at once"
)
REFUSED_DISABLED_MESSAGE = (
    "relay disabled: the connector refuses these credentials (401/4401 on every dial, never "
    "a handshake) and --exit-on-refused is set"
)
UNAUTHORIZED = 4401
TRANSPORT_CLOSED = "relay transport closed"
RELAY_DISABLED = "relay disabled"


class ConnectionStateError(RuntimeError):
    """An event the driver must never send in the current state (a driver bug)."""


class State(enum.Enum):
    """Connection states (RC §6.1). ``value`` is the lower-case name the gateway reports."""

    INIT = "init"
    DIALING = "dialing"
    HELLO_SENT = "hello_sent"
    READY = "ready"
    IDLE_REQUESTED = "idle_requested"
    IDLE_ACKED = "idle_acked"
    BACKOFF = "backoff"
    CLOSED = "closed"
    DISABLED = "disabled"


class Timer(enum.Enum):
    """The timers the machine arms; at most one of each runs at a time."""

    HANDSHAKE = "handshake"
    IDLE_ACK = "idle_ack"
    STABILITY = "stability"
    BACKOFF = "backoff"
    #: half a token lifetime after a 4401 ``expired``: another one within it is suspect.
    EXPIRED_WINDOW = "expired_window"


class IdleMode(enum.Enum):
    """Why a ``going_idle`` was sent: to shut down for good, or to suspend and re-dial."""

    SHUTDOWN = "shutdown"
    SUSPEND = "suspend"


@attrs.frozen
class Timing:
    """The durations the machine uses (RC §6, §8, §10 defaults)."""

    handshake_timeout_s: float = 30.0
    idle_ack_timeout_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    stable_after_s: float = 60.0
    dormant_interval_s: float = 1.0
    idle_drain_s: float = 5.0
    #: lifetime of a freshly minted upgrade token (RC §5); bounds the ``expired`` window.
    token_ttl_s: float = 300.0
    #: handshake-less refusals (HTTP 401 / close 4401) in a row before they are reported.
    refused_report_after: int = 3


# ---- events -------------------------------------------------------------------------------


@attrs.frozen
class Start:
    """Begin connecting (the first dial happens at once)."""


@attrs.frozen
class DialSucceeded:
    """The WebSocket upgrade was accepted."""


@attrs.frozen
class DialFailed:
    """The dial failed: network error, timeout, or an HTTP status other than 101."""

    reason: str
    http_status: int | None = None


@attrs.frozen
class DescriptorReceived:
    """A ``descriptor`` frame arrived; ``valid`` is whether it parsed (RC §4.1)."""

    valid: bool


@attrs.frozen
class GoingIdleAckReceived:
    """A ``going_idle_ack`` frame arrived."""


@attrs.frozen
class SocketClosed:
    """The current socket ended (peer close, abnormal end, keepalive timeout)."""

    code: int
    reason: str = ""


@attrs.frozen
class TimerExpired:
    """A timer armed by :class:`StartTimer` ran out."""

    timer: Timer


@attrs.frozen
class StopRequested:
    """Shut down: drain through ``going_idle`` when READY, never reconnect."""


@attrs.frozen
class SuspendRequested:
    """Flip to buffered delivery and close, then re-dial on the dormant cadence (RC §8)."""


Event = (
    Start
    | DialSucceeded
    | DialFailed
    | DescriptorReceived
    | GoingIdleAckReceived
    | SocketClosed
    | TimerExpired
    | StopRequested
    | SuspendRequested
)


# ---- actions ------------------------------------------------------------------------------


@attrs.frozen
class OpenSocket:
    """Dial the connector, minting a fresh upgrade token for this dial."""

    fresh_token_retry: bool = False


@attrs.frozen
class SendHellos:
    """Write one ``hello`` per identity, in order, before any other frame."""


@attrs.frozen
class SendGoingIdle:
    """Write ``going_idle``."""


@attrs.frozen
class CloseSocket:
    """Close (or abort the dial of) the current socket.

    ``drain_s`` > 0: first wait up to that long for pending requests to resolve.
    """

    code: int
    reason: str
    drain_s: float = 0.0


@attrs.frozen
class StartTimer:
    """Arm ``timer`` to expire after ``seconds`` (re-arming replaces it)."""

    timer: Timer
    seconds: float


@attrs.frozen
class CancelTimer:
    """Disarm ``timer`` if it is armed."""

    timer: Timer


@attrs.frozen
class FailPending:
    """Resolve every pending outbound request at once with this failure."""

    error: str
    retryable: bool


@attrs.frozen
class HandshakeCompleted:
    """The first valid descriptor of this connection arrived: outbound is live."""


@attrs.frozen
class IdleResolved:
    """Answer the waiting ``go_idle``/``suspend`` call: was ``going_idle`` acked?"""

    acked: bool


@attrs.frozen
class CredentialsRefused:
    """The connector has refused every dial's credentials ``refusals`` times in a row, with
    no handshake since the process started or since the last handshake.

    Reported after :attr:`Timing.refused_report_after` refusals, then after twice as many
    each time (a back-off on the report). ``exiting``: this report disables the machine
    (``exit_on_refused``).
    """

    refusals: int
    exiting: bool = False


@attrs.frozen
class Log:
    """Emit a log record; ``level`` is a lower-case level name."""

    level: str
    message: str


Action = (
    OpenSocket
    | SendHellos
    | SendGoingIdle
    | CloseSocket
    | StartTimer
    | CancelTimer
    | FailPending
    | HandshakeCompleted
    | IdleResolved
    | CredentialsRefused
    | Log
)

_Handler = Callable[["ConnectionMachine", Event], list[Action]]
_LIVE = frozenset({State.READY, State.IDLE_REQUESTED})
_TERMINAL = frozenset({State.CLOSED, State.DISABLED})


class ConnectionMachine:
    """One gateway's connection lifecycle: states, timers, the ladder and the 4401 rules.

    Args:
        has_credentials: both a gatewayId and a secret are configured (RC §5).
        timing: durations; RC defaults when omitted.
        uniform: ``uniform(low, high)`` used for the full-jitter ladder.
        exit_on_refused: go DISABLED at the first :class:`CredentialsRefused` report
            instead of retrying for ever.
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
        return self.state in _LIVE

    @property
    def terminal(self) -> bool:
        """CLOSED or DISABLED: nothing will ever be dialled again."""
        return self.state in _TERMINAL

    def handle(self, event: Event) -> list[Action]:
        """Apply ``event``; return the actions the driver must carry out, in order."""
        if isinstance(event, TimerExpired) and event.timer is Timer.EXPIRED_WINDOW:
            self.recent_expired = False
            return []
        handler = TRANSITIONS.get((self.state, type(event)))
        if handler is None:
            if isinstance(event, Start):
                raise ConnectionStateError(f"start in state {self.state.value}")
            if isinstance(event, StopRequested | SuspendRequested):
                return [IdleResolved(acked=False)]
            # Anything else is a late event for a socket or timer the machine already left.
            return []
        return handler(self, event)

    # ---- helpers ------------------------------------------------------------------------

    def _count_failure(self) -> None:
        if not self.dormant:
            self.failures += 1

    def _redial(self, *, immediate: bool = False) -> list[Action]:
        """Schedule the next dial: at once, on the dormant cadence, or after a ladder wait."""
        if immediate:
            self.state = State.DIALING
            self.stable = False
            return [OpenSocket(fresh_token_retry=self.fresh_token_retry)]
        self.state = State.BACKOFF
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
        return [StartTimer(Timer.BACKOFF, delay)]

    def _failed(self) -> list[Action]:
        """A dial failed or a connection ended before it proved stable: climb the ladder."""
        self._count_failure()
        self.expired_retry = False
        return self._redial()

    def _dropped(self) -> list[Action]:
        """A connection that may have been READY ended (not by 4401)."""
        if not self.stable:
            self._count_failure()
        self.expired_retry = False
        return self._redial()

    def _disable(self, message: str = DISABLED_MESSAGE) -> list[Action]:
        self.state = State.DISABLED
        self.disabled_reason = message
        return [
            Log("error", message),
            FailPending(RELAY_DISABLED, retryable=False),
            *(CancelTimer(timer) for timer in Timer),
            IdleResolved(acked=False),
        ]

    def _unauthorized(self, reason: str) -> list[Action]:
        """The RC §6.5 table: a close 4401 (or HTTP 401 at upgrade, ``reason == ""``)."""
        reason = reason.strip().lower()
        if not self.has_credentials:
            return [Log("error", NO_CREDENTIALS_MESSAGE), *self._failed()]
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
                return [Log("warning", CLOCK_SKEW_MESSAGE), window, *self._redial()]
            self.expired_retry = True
            self.recent_expired = True
            return [window, *self._redial(immediate=True)]
        if not self.handshake_seen:
            return self._refused()
        if not self.fresh_token_retry:
            self._count_failure()
            self.fresh_token_retry = True
            return self._redial(immediate=True)
        return self._disable()

    def _refused(self) -> list[Action]:
        """A refusal with no handshake yet: ladder, reporting a streak with back-off."""
        self.refusals += 1
        if self.refusals < self._report_refusals_at:
            return self._failed()
        self._report_refusals_at *= 2
        if self.exit_on_refused:
            return [
                CredentialsRefused(self.refusals, exiting=True),
                *self._disable(REFUSED_DISABLED_MESSAGE),
            ]
        return [CredentialsRefused(self.refusals), *self._failed()]

    def _close_socket_gone(self, event: SocketClosed, pending_error: list[Action]) -> list[Action]:
        if event.code == UNAUTHORIZED:
            actions = self._unauthorized(event.reason)
            if self.state is State.DISABLED:
                return actions
            return pending_error + actions
        return pending_error + self._dropped()

    # ---- transitions --------------------------------------------------------------------

    def _start(self, event: Event) -> list[Action]:
        self.state = State.DIALING
        self.stable = False
        return [OpenSocket(fresh_token_retry=self.fresh_token_retry)]

    def _stop_quiet(self, event: Event) -> list[Action]:
        """Stop outside READY: close whatever exists, never reconnect."""
        actions: list[Action] = []
        if self.state in (State.DIALING, State.HELLO_SENT):
            actions.append(CloseSocket(1000, "stopping"))
        actions += [CancelTimer(Timer.HANDSHAKE), CancelTimer(Timer.BACKOFF)]
        self.state = State.CLOSED
        return [*actions, IdleResolved(acked=False)]

    def _dial_ok(self, event: Event) -> list[Action]:
        self.state = State.HELLO_SENT
        return [SendHellos(), StartTimer(Timer.HANDSHAKE, self.timing.handshake_timeout_s)]

    def _dial_failed(self, event: Event) -> list[Action]:
        assert isinstance(event, DialFailed)
        if event.http_status == 401:
            return self._unauthorized("")
        return self._failed()

    def _first_descriptor(self, event: Event) -> list[Action]:
        assert isinstance(event, DescriptorReceived)
        if not event.valid:
            return [
                CancelTimer(Timer.HANDSHAKE),
                CloseSocket(1002, "invalid descriptor"),
                *self._failed(),
            ]
        self.state = State.READY
        self.handshake_seen = True
        self.expired_retry = False
        self.refusals = 0
        self._report_refusals_at = self.timing.refused_report_after
        self.dormant = False
        return [
            CancelTimer(Timer.HANDSHAKE),
            HandshakeCompleted(),
            StartTimer(Timer.STABILITY, self.timing.stable_after_s),
        ]

    def _handshake_timer(self, event: Event) -> list[Action]:
        assert isinstance(event, TimerExpired)
        if event.timer is not Timer.HANDSHAKE:
            return []
        return [CloseSocket(1000, "handshake timeout"), *self._failed()]

    def _handshake_closed(self, event: Event) -> list[Action]:
        assert isinstance(event, SocketClosed)
        return self._close_socket_gone(event, [CancelTimer(Timer.HANDSHAKE)])

    def _live_timer(self, event: Event) -> list[Action]:
        assert isinstance(event, TimerExpired)
        if event.timer is Timer.STABILITY:
            self.stable = True
            self.failures = 0
            self.fresh_token_retry = False
            return []
        if event.timer is Timer.IDLE_ACK and self.state is State.IDLE_REQUESTED:
            if self.idle_mode is IdleMode.SUSPEND:
                self.state = State.READY
                self.idle_mode = None
                return [IdleResolved(acked=False)]
            self.state = State.IDLE_ACKED
            return [
                IdleResolved(acked=False),
                CloseSocket(1000, "going idle", drain_s=self.timing.idle_drain_s),
            ]
        return []

    def _live_closed(self, event: Event) -> list[Action]:
        assert isinstance(event, SocketClosed)
        actions: list[Action] = [
            CancelTimer(Timer.STABILITY),
            FailPending(TRANSPORT_CLOSED, retryable=True),
        ]
        if self.state is State.IDLE_REQUESTED:
            actions += [CancelTimer(Timer.IDLE_ACK), IdleResolved(acked=False)]
            mode, self.idle_mode = self.idle_mode, None
            if mode is IdleMode.SHUTDOWN:
                self.state = State.CLOSED
                return actions
        return self._close_socket_gone(event, actions)

    def _request_idle(self, event: Event) -> list[Action]:
        self.idle_mode = (
            IdleMode.SUSPEND if isinstance(event, SuspendRequested) else IdleMode.SHUTDOWN
        )
        self.state = State.IDLE_REQUESTED
        return [SendGoingIdle(), StartTimer(Timer.IDLE_ACK, self.timing.idle_ack_timeout_s)]

    def _stop_while_idling(self, event: Event) -> list[Action]:
        """A stop during a suspend's idle flow turns it into a shutdown."""
        self.idle_mode = IdleMode.SHUTDOWN
        return []

    def _idle_acked(self, event: Event) -> list[Action]:
        self.state = State.IDLE_ACKED
        return [
            CancelTimer(Timer.IDLE_ACK),
            IdleResolved(acked=True),
            CloseSocket(1000, "going idle", drain_s=self.timing.idle_drain_s),
        ]

    def _idle_closed(self, event: Event) -> list[Action]:
        mode, self.idle_mode = self.idle_mode, None
        actions: list[Action] = [CancelTimer(Timer.STABILITY)]
        if mode is IdleMode.SUSPEND:
            actions.append(FailPending(TRANSPORT_CLOSED, retryable=True))
            self.dormant = True
            return actions + self._redial()
        self.state = State.CLOSED
        return [*actions, FailPending(TRANSPORT_CLOSED, retryable=False)]

    def _backoff_timer(self, event: Event) -> list[Action]:
        assert isinstance(event, TimerExpired)
        if event.timer is not Timer.BACKOFF:
            return []
        return self._start(event)


def _table() -> dict[tuple[State, type[Event]], _Handler]:
    m = ConnectionMachine
    return {
        (State.INIT, Start): m._start,
        (State.INIT, StopRequested): m._stop_quiet,
        (State.DIALING, DialSucceeded): m._dial_ok,
        (State.DIALING, DialFailed): m._dial_failed,
        (State.DIALING, StopRequested): m._stop_quiet,
        (State.HELLO_SENT, DescriptorReceived): m._first_descriptor,
        (State.HELLO_SENT, TimerExpired): m._handshake_timer,
        (State.HELLO_SENT, SocketClosed): m._handshake_closed,
        (State.HELLO_SENT, StopRequested): m._stop_quiet,
        (State.READY, TimerExpired): m._live_timer,
        (State.READY, SocketClosed): m._live_closed,
        (State.READY, StopRequested): m._request_idle,
        (State.READY, SuspendRequested): m._request_idle,
        (State.IDLE_REQUESTED, GoingIdleAckReceived): m._idle_acked,
        (State.IDLE_REQUESTED, TimerExpired): m._live_timer,
        (State.IDLE_REQUESTED, SocketClosed): m._live_closed,
        (State.IDLE_REQUESTED, StopRequested): m._stop_while_idling,
        (State.IDLE_ACKED, TimerExpired): m._live_timer,
        (State.IDLE_ACKED, SocketClosed): m._idle_closed,
        (State.IDLE_ACKED, StopRequested): m._stop_while_idling,
        (State.BACKOFF, TimerExpired): m._backoff_timer,
        (State.BACKOFF, StopRequested): m._stop_quiet,
    }


#: (state, event type) -> handler. A pair missing here is ignored (a late event), except
#: ``Start`` outside INIT (a driver bug) and stop/suspend requests (answered "not acked").
TRANSITIONS: dict[tuple[State, type[Event]], _Handler] = _table()
