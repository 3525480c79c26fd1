"""The pure connection state machine (RC §6.1 rows, §6.4 ladder, §6.5 4401 table). No loop."""

from __future__ import annotations

import random

import pytest

from protocol._backoff import ladder_bound, ladder_delay
from protocol._connection import (
    CLOCK_SKEW_MESSAGE,
    NO_CREDENTIALS_MESSAGE,
    REFUSED_DISABLED_MESSAGE,
    CancelTimer,
    CloseSocket,
    ConnectionMachine,
    ConnectionStateError,
    CredentialsRefused,
    DescriptorReceived,
    DialFailed,
    DialSucceeded,
    FailPending,
    GoingIdleAckReceived,
    HandshakeCompleted,
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
)


def top(low: float, high: float) -> float:
    """A 'random' source that always picks the upper bound, so delays are the ladder bounds."""
    return high


def machine(*, creds: bool = True, uniform: object = top) -> ConnectionMachine:
    return ConnectionMachine(has_credentials=creds, uniform=uniform)  # type: ignore[arg-type]


def ready(m: ConnectionMachine) -> None:
    """Drive a fresh (or BACKOFF/DIALING) machine to READY."""
    if m.state is State.INIT:
        m.handle(Start())
    elif m.state is State.BACKOFF:
        m.handle(TimerExpired(Timer.BACKOFF))
    m.handle(DialSucceeded())
    m.handle(DescriptorReceived(valid=True))
    assert m.state is State.READY


def backoff_delay(actions: list[object]) -> float:
    (delay,) = [
        a.seconds for a in actions if isinstance(a, StartTimer) and a.timer is Timer.BACKOFF
    ]
    return delay


# ---- RC §6.1 rows ------------------------------------------------------------------------


def test_init_start_dials() -> None:
    m = machine()
    assert m.handle(Start()) == [OpenSocket()]
    assert m.state is State.DIALING
    with pytest.raises(ConnectionStateError):
        m.handle(Start())


def test_dialing_upgrade_accepted_sends_hellos_and_arms_handshake() -> None:
    m = machine()
    m.handle(Start())
    assert m.handle(DialSucceeded()) == [SendHellos(), StartTimer(Timer.HANDSHAKE, 30.0)]
    assert m.state is State.HELLO_SENT


@pytest.mark.parametrize(
    "event", [DialFailed("connection refused"), DialFailed("HTTP 503", http_status=503)]
)
def test_dialing_failure_goes_to_backoff(event: DialFailed) -> None:
    m = machine()
    m.handle(Start())
    actions = m.handle(event)
    assert m.state is State.BACKOFF
    assert m.failures == 1
    assert backoff_delay(actions) == 2.0


def test_backoff_timer_dials() -> None:
    m = machine()
    m.handle(Start())
    m.handle(DialFailed("refused"))
    assert m.handle(TimerExpired(Timer.BACKOFF)) == [OpenSocket()]
    assert m.state is State.DIALING


def test_hello_sent_first_valid_descriptor_is_ready() -> None:
    m = machine()
    m.handle(Start())
    m.handle(DialSucceeded())
    actions = m.handle(DescriptorReceived(valid=True))
    assert actions == [
        CancelTimer(Timer.HANDSHAKE),
        HandshakeCompleted(),
        StartTimer(Timer.STABILITY, 60.0),
    ]
    assert m.state is State.READY
    assert m.handshake_seen
    assert m.live


def test_R25_invalid_descriptor_closes_1002_and_never_sets_h() -> None:
    m = machine()
    m.handle(Start())
    m.handle(DialSucceeded())
    actions = m.handle(DescriptorReceived(valid=False))
    assert CloseSocket(1002, "invalid descriptor") in actions
    assert m.state is State.BACKOFF
    assert not m.handshake_seen


def test_R40_handshake_timeout_closes_1000_and_ladders() -> None:
    m = machine()
    m.handle(Start())
    m.handle(DialSucceeded())
    actions = m.handle(TimerExpired(Timer.HANDSHAKE))
    assert actions[0] == CloseSocket(1000, "handshake timeout")
    assert m.state is State.BACKOFF
    assert m.failures == 1


def test_hello_sent_drop_ladders() -> None:
    m = machine()
    m.handle(Start())
    m.handle(DialSucceeded())
    actions = m.handle(SocketClosed(1006))
    assert CancelTimer(Timer.HANDSHAKE) in actions
    assert m.state is State.BACKOFF


def test_invalid_descriptor_after_ready_is_ignored() -> None:
    m = machine()
    ready(m)
    assert m.handle(DescriptorReceived(valid=False)) == []
    assert m.handle(DescriptorReceived(valid=True)) == []
    assert m.state is State.READY


@pytest.mark.parametrize("code", [1000, 1006, 1011, 1012, 4000])
def test_R41_ready_drop_fails_pending_and_reconnects(code: int) -> None:
    m = machine()
    ready(m)
    actions = m.handle(SocketClosed(code, "bye"))
    assert FailPending("relay transport closed", retryable=True) in actions
    assert CancelTimer(Timer.STABILITY) in actions
    assert m.state is State.BACKOFF
    assert m.failures == 1


def test_ready_go_idle_then_ack_closes_1000_and_closes_for_good() -> None:
    m = machine()
    ready(m)
    assert m.handle(StopRequested()) == [SendGoingIdle(), StartTimer(Timer.IDLE_ACK, 10.0)]
    assert m.state is State.IDLE_REQUESTED
    assert m.live
    actions = m.handle(GoingIdleAckReceived())
    assert actions == [
        CancelTimer(Timer.IDLE_ACK),
        IdleResolved(acked=True),
        CloseSocket(1000, "going idle", drain_s=5.0),
    ]
    assert m.state is State.IDLE_ACKED
    assert not m.live
    actions = m.handle(SocketClosed(1000))
    assert m.state is State.CLOSED
    assert FailPending("relay transport closed", retryable=False) in actions
    assert not any(isinstance(a, OpenSocket | StartTimer) for a in actions)


def test_R73_shutdown_without_ack_still_closes() -> None:
    m = machine()
    ready(m)
    m.handle(StopRequested())
    actions = m.handle(TimerExpired(Timer.IDLE_ACK))
    assert actions == [IdleResolved(acked=False), CloseSocket(1000, "going idle", drain_s=5.0)]
    assert m.state is State.IDLE_ACKED


def test_R73_suspend_without_ack_returns_to_ready() -> None:
    m = machine()
    ready(m)
    m.handle(SuspendRequested())
    assert m.state is State.IDLE_REQUESTED
    assert m.handle(TimerExpired(Timer.IDLE_ACK)) == [IdleResolved(acked=False)]
    assert m.state is State.READY


def test_R74_suspend_close_goes_dormant_one_second_no_jitter() -> None:
    m = machine(uniform=lambda a, b: pytest.fail("dormant cadence must not draw jitter"))
    m.handle(Start())
    m.handle(DialSucceeded())
    m.handle(DescriptorReceived(valid=True))
    m.failures = 3
    m.handle(SuspendRequested())
    m.handle(GoingIdleAckReceived())
    actions = m.handle(SocketClosed(1000))
    assert m.state is State.BACKOFF
    assert m.dormant
    assert backoff_delay(actions) == 1.0
    m.handle(TimerExpired(Timer.BACKOFF))
    actions = m.handle(DialFailed("refused"))
    assert backoff_delay(actions) == 1.0
    assert m.failures == 3  # n unchanged on the dormant cadence
    m.handle(TimerExpired(Timer.BACKOFF))
    m.handle(DialSucceeded())
    m.handle(DescriptorReceived(valid=True))
    assert not m.dormant


def test_idle_requested_drop_fails_pending_and_answers_not_acked() -> None:
    m = machine()
    ready(m)
    m.handle(SuspendRequested())
    actions = m.handle(SocketClosed(1006))
    assert IdleResolved(acked=False) in actions
    assert FailPending("relay transport closed", retryable=True) in actions
    assert m.state is State.BACKOFF


def test_shutdown_idle_drop_does_not_reconnect() -> None:
    m = machine()
    ready(m)
    m.handle(StopRequested())
    actions = m.handle(SocketClosed(1006))
    assert m.state is State.CLOSED
    assert not any(isinstance(a, OpenSocket | StartTimer) for a in actions)


def test_stop_during_suspend_flow_becomes_shutdown() -> None:
    m = machine()
    ready(m)
    m.handle(SuspendRequested())
    m.handle(StopRequested())
    m.handle(GoingIdleAckReceived())
    m.handle(SocketClosed(1000))
    assert m.state is State.CLOSED


@pytest.mark.parametrize("where", ["init", "dialing", "hello_sent", "backoff"])
def test_stop_when_not_ready_closes_at_once(where: str) -> None:
    m = machine()
    if where != "init":
        m.handle(Start())
    if where == "hello_sent":
        m.handle(DialSucceeded())
    if where == "backoff":
        m.handle(DialFailed("refused"))
    actions = m.handle(StopRequested())
    assert m.state is State.CLOSED
    assert IdleResolved(acked=False) in actions
    assert (CloseSocket(1000, "stopping") in actions) == (where in ("dialing", "hello_sent"))
    assert m.terminal
    # Terminal: nothing wakes it again.
    assert m.handle(TimerExpired(Timer.BACKOFF)) == []
    assert m.handle(SocketClosed(4401)) == []


def test_suspend_when_not_ready_answers_not_acked_without_transition() -> None:
    m = machine()
    m.handle(Start())
    assert m.handle(SuspendRequested()) == [IdleResolved(acked=False)]
    assert m.state is State.DIALING


def test_late_events_are_ignored() -> None:
    m = machine()
    m.handle(Start())
    m.handle(DialFailed("refused"))
    assert m.handle(DescriptorReceived(valid=True)) == []
    assert m.handle(GoingIdleAckReceived()) == []
    assert m.handle(TimerExpired(Timer.HANDSHAKE)) == []
    assert m.state is State.BACKOFF


# ---- RC §6.4 ladder ----------------------------------------------------------------------


def test_R49_ladder_bounds() -> None:
    assert [ladder_bound(n, base=1.0, cap=30.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert ladder_bound(10_000, base=1.0, cap=30.0) == 30.0
    with pytest.raises(ValueError, match="failures"):
        ladder_bound(-1, base=1.0, cap=30.0)


def test_R49_ladder_delays_lie_in_full_jitter_range() -> None:
    rng = random.Random(7)
    for n in range(12):
        for _ in range(50):
            delay = ladder_delay(n, base=1.0, cap=30.0, uniform=rng.uniform)
            assert 0.0 <= delay <= min(30.0, 2.0**n)


def test_R49_short_connections_advance_ladder_and_stability_resets_it() -> None:
    m = machine()
    delays = []
    ready(m)
    for _ in range(6):
        delays.append(backoff_delay(m.handle(SocketClosed(1006))))
        ready(m)
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert m.handle(TimerExpired(Timer.STABILITY)) == []
    assert m.failures == 0
    # A connection that stayed up 60 s does not count as a failure when it drops.
    assert backoff_delay(m.handle(SocketClosed(1006))) == 1.0


def test_ladder_uses_injected_source() -> None:
    calls: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        calls.append((low, high))
        return 0.25

    m = ConnectionMachine(has_credentials=True, uniform=uniform, timing=Timing(backoff_cap_s=3))
    m.handle(Start())
    for _ in range(3):
        assert backoff_delay(m.handle(DialFailed("refused"))) == 0.25
        m.handle(TimerExpired(Timer.BACKOFF))
    assert calls == [(0.0, 2.0), (0.0, 3.0), (0.0, 3.0)]


# ---- RC §6.5 4401 table ------------------------------------------------------------------


def test_R51_no_credentials_4401_logs_and_ladders_never_disables() -> None:
    m = machine(creds=False)
    ready(m)
    for _ in range(5):
        actions = m.handle(SocketClosed(4401, "unauthorized"))
        assert Log("error", NO_CREDENTIALS_MESSAGE) in actions
        assert m.state is State.BACKOFF
        ready(m)
    assert m.state is not State.DISABLED


def test_R51_4401_before_any_handshake_ladders() -> None:
    m = machine()
    m.handle(Start())
    for _ in range(4):
        actions = m.handle(DialFailed("rejected", http_status=401))
        assert m.state is State.BACKOFF
        assert StartTimer(Timer.BACKOFF, backoff_delay(actions)) in actions
        m.handle(TimerExpired(Timer.BACKOFF))
        m.handle(DialSucceeded())
        actions = m.handle(SocketClosed(4401, "unauthorized"))
        assert m.state is State.BACKOFF
        m.handle(TimerExpired(Timer.BACKOFF))
    assert not m.handshake_seen


WINDOW = StartTimer(Timer.EXPIRED_WINDOW, 150.0)  # half the 300 s token lifetime


def test_R52_expired_redials_at_once_then_ladder_with_skew_warning() -> None:
    m = machine()
    ready(m)
    assert m.handle(SocketClosed(4401, " Expired ")) == [
        CancelTimer(Timer.STABILITY),
        FailPending("relay transport closed", retryable=True),
        WINDOW,
        OpenSocket(),
    ]
    assert m.state is State.DIALING
    m.handle(DialSucceeded())
    actions = m.handle(SocketClosed(4401, "expired"))
    assert m.state is State.BACKOFF
    assert Log("warning", CLOCK_SKEW_MESSAGE) in actions
    # It never disables, however often it repeats; while `expired` keeps coming less than a
    # half a token lifetime apart, every re-dial waits on the ladder (issue 11: no 2-4 ms loop).
    for _ in range(3):
        m.handle(TimerExpired(Timer.BACKOFF))
        m.handle(DialSucceeded())
        actions = m.handle(SocketClosed(4401, "expired"))
        assert m.state is State.BACKOFF
        assert Log("warning", CLOCK_SKEW_MESSAGE) in actions and WINDOW in actions


def test_R52_expired_after_a_failed_redial_still_waits_within_the_window() -> None:
    m = machine()
    ready(m)
    m.handle(SocketClosed(4401, "expired"))  # immediate re-dial
    m.handle(DialFailed("connection refused"))  # that re-dial fails on the network
    m.handle(TimerExpired(Timer.BACKOFF))
    m.handle(DialSucceeded())
    actions = m.handle(SocketClosed(4401, "expired"))
    assert Log("warning", CLOCK_SKEW_MESSAGE) in actions
    assert m.state is State.BACKOFF


def test_R52_second_expired_after_a_handshake_within_the_token_lifetime_uses_the_ladder() -> None:
    # A connector that closes 4401 `expired` right after every handshake: re-dialed every
    # 2-4 ms for ever before (issue 11); now the ladder, climbing, with a WARNING.
    m = machine()
    ready(m)
    assert m.handle(SocketClosed(4401, "expired"))[-1] == OpenSocket()
    delays = []
    for _ in range(4):
        if m.state is State.BACKOFF:
            m.handle(TimerExpired(Timer.BACKOFF))
        m.handle(DialSucceeded())
        m.handle(DescriptorReceived(valid=True))
        assert m.state is State.READY
        actions = m.handle(SocketClosed(4401, "expired"))
        assert m.state is State.BACKOFF
        assert Log("warning", CLOCK_SKEW_MESSAGE) in actions
        delays.append(backoff_delay(actions))
    assert delays == sorted(delays) and delays[-1] > delays[0]


def test_R52_expired_window_ends_after_the_token_lifetime() -> None:
    m = machine()
    ready(m)
    m.handle(SocketClosed(4401, "expired"))
    m.handle(DialSucceeded())
    m.handle(DescriptorReceived(valid=True))
    assert m.handle(TimerExpired(Timer.EXPIRED_WINDOW)) == []
    assert m.state is State.READY
    # Half a token lifetime later an `expired` is plausible again: at once, no warning.
    actions = m.handle(SocketClosed(4401, "expired"))
    assert actions[-1] == OpenSocket()
    assert not any(isinstance(a, Log) for a in actions)


def refuse(m: ConnectionMachine, how: str) -> list[object]:
    """One handshake-less refusal: HTTP 401 at upgrade, or accept-then-close 4401."""
    if m.state is State.BACKOFF:
        m.handle(TimerExpired(Timer.BACKOFF))
    elif m.state is State.INIT:
        m.handle(Start())
    if how == "http":
        return list(m.handle(DialFailed("upgrade rejected with HTTP 401", http_status=401)))
    m.handle(DialSucceeded())
    return list(m.handle(SocketClosed(4401, "unauthorized")))


@pytest.mark.parametrize("how", ["http", "close"])
def test_refused_credentials_are_reported_after_a_streak_then_with_back_off(how: str) -> None:
    m = machine()
    reported = []
    for n in range(1, 25):
        actions = refuse(m, how)
        assert m.state is State.BACKOFF  # never disabled by default
        reported += [(n, a) for a in actions if isinstance(a, CredentialsRefused)]
    assert reported == [
        (3, CredentialsRefused(3)),
        (6, CredentialsRefused(6)),
        (12, CredentialsRefused(12)),
        (24, CredentialsRefused(24)),
    ]


def test_a_handshake_ends_the_refusal_streak() -> None:
    m = machine()
    actions = refuse(m, "http") + refuse(m, "close")
    assert not [a for a in actions if isinstance(a, CredentialsRefused | Log)]
    ready(m)
    assert m.refusals == 0


def test_exit_on_refused_disables_at_the_first_report() -> None:
    m = ConnectionMachine(has_credentials=True, uniform=top, exit_on_refused=True)
    refuse(m, "http")
    refuse(m, "http")
    assert m.state is State.BACKOFF
    actions = refuse(m, "close")
    assert actions[0] == CredentialsRefused(3, exiting=True)
    assert m.state is State.DISABLED
    assert m.disabled_reason == REFUSED_DISABLED_MESSAGE
    assert Log("error", REFUSED_DISABLED_MESSAGE) in actions
    assert FailPending("relay disabled", retryable=False) in actions


def test_expired_and_network_failures_are_not_refusals() -> None:
    m = machine()
    m.handle(Start())
    for _ in range(6):
        m.handle(DialFailed("connection refused"))
        m.handle(TimerExpired(Timer.BACKOFF))
        m.handle(DialSucceeded())
        m.handle(SocketClosed(4401, "expired"))
        if m.state is State.BACKOFF:
            m.handle(TimerExpired(Timer.BACKOFF))
        else:
            m.handle(DialFailed("connection refused"))
            m.handle(TimerExpired(Timer.BACKOFF))
    assert m.refusals == 0


def test_R53_4401_after_handshake_redials_once_with_fresh_token() -> None:
    m = machine()
    ready(m)
    actions = m.handle(SocketClosed(4401, "unauthorized"))
    assert actions[-1] == OpenSocket(fresh_token_retry=True)
    assert m.state is State.DIALING
    assert m.fresh_token_retry


@pytest.mark.parametrize("at", ["upgrade", "after_descriptor", "before_descriptor"])
def test_R54_4401_on_the_fresh_token_retry_disables(at: str) -> None:
    m = machine()
    ready(m)
    m.handle(SocketClosed(4401, "unauthorized"))
    if at == "upgrade":
        actions = m.handle(DialFailed("rejected", http_status=401))
    else:
        m.handle(DialSucceeded())
        if at == "after_descriptor":
            m.handle(DescriptorReceived(valid=True))
        actions = m.handle(SocketClosed(4401, "unauthorized"))
    assert m.state is State.DISABLED
    assert FailPending("relay disabled", retryable=False) in actions
    assert any(isinstance(a, Log) and "relay disabled" in a.message for a in actions)
    assert not any(isinstance(a, OpenSocket | StartTimer) for a in actions)
    assert m.handle(TimerExpired(Timer.BACKOFF)) == []
    assert m.handle(StopRequested()) == [IdleResolved(acked=False)]
    assert m.state is State.DISABLED


def test_fresh_token_retry_failing_otherwise_ladders_and_keeps_the_mark() -> None:
    m = machine()
    ready(m)
    m.handle(SocketClosed(4401, ""))
    actions = m.handle(DialFailed("connection refused"))
    assert m.state is State.BACKOFF
    assert backoff_delay(actions) > 0
    assert m.handle(TimerExpired(Timer.BACKOFF)) == [OpenSocket(fresh_token_retry=True)]
    m.handle(DialFailed("rejected", http_status=401))
    assert m.state is State.DISABLED


def test_fresh_token_mark_clears_once_stable() -> None:
    m = machine()
    ready(m)
    m.handle(SocketClosed(4401, ""))
    m.handle(DialSucceeded())
    m.handle(DescriptorReceived(valid=True))
    m.handle(TimerExpired(Timer.STABILITY))
    assert not m.fresh_token_retry
    assert m.handle(SocketClosed(4401, ""))[-1] == OpenSocket(fresh_token_retry=True)


def test_4401_during_idle_requested_follows_the_table() -> None:
    m = machine()
    ready(m)
    m.handle(SuspendRequested())
    actions = m.handle(SocketClosed(4401, "unauthorized"))
    assert IdleResolved(acked=False) in actions
    assert actions[-1] == OpenSocket(fresh_token_retry=True)
