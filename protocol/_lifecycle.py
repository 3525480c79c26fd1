"""The vocabulary of the relay connection (RC §6): states, timers, events in, actions out.

:class:`protocol._connection.ConnectionMachine` turns the events here into actions;
:class:`protocol._relay_connection.RelayConnection` adds the codec and the frames. Kept apart
so each of those modules holds one thing (h11 splits ``_events``/``_state`` the same way).
"""

from __future__ import annotations

import enum

import attrs

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


@attrs.frozen
class WriteFrames:
    """Write these encoded frames, in order, before anything queued after them.

    :class:`~protocol._relay_connection.RelayConnection` emits it in place of the machine's
    :class:`SendHellos` and :class:`SendGoingIdle`: the connection encodes, the driver writes.
    """

    texts: tuple[str, ...]


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
    | WriteFrames
)
