"""The connection supervisor: the trio driver around :mod:`protocol.connection` (RC §6, §8).

It owns one connector socket at a time. Each socket lives in its own nursery (reader,
writer, keepalive, close watcher) that ends as a unit; the supervisor's loop only arms
timers and carries out the actions the pure state machine returns. Everything the machine
decides (reconnect, the ladder, 4401, idle) is decided there; this module does the I/O.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Protocol

import attrs
import trio
import trio_websocket
from trio_websocket import ConnectionRejected, HandshakeError
from wsproto.utilities import LocalProtocolError

from protocol import connection as sm
from protocol.actions import Action
from protocol.auth import make_upgrade_token
from protocol.codec import encode_frame
from protocol.descriptor import CapabilityDescriptor, placeholder_descriptor
from protocol.errors import FrameError
from protocol.events import Identity, MessageEvent
from protocol.frames import (
    DescriptorFrame,
    Frame,
    GoingIdle,
    GoingIdleAck,
    Hello,
    Inbound,
    InterruptInbound,
    OutboundResult,
    PassthroughForwardFrame,
)
from protocol.results import SendResult
from protocol.urls import dial_url
from relay_runtime.errors import RelayDisabled
from relay_runtime.outbound import OutboundRouter
from relay_runtime.transport import (
    ABNORMAL_CLOSURE,
    Dialer,
    DialError,
    RejectedFrameLog,
    RelaySocket,
    SocketEnd,
    bearer_headers,
    dial,
    message_limit,
    websocket_dialer,
)

__all__ = ["RelayConfig", "Supervisor", "SupervisorStats"]

log = logging.getLogger("relay_runtime.supervisor")

InboundItem = Inbound | PassthroughForwardFrame


class RelayConfig(Protocol):
    """The :class:`relay_runtime.config.GatewayConfig` fields the supervisor reads.

    Every member is a read-only property, so a frozen attrs class satisfies it.
    """

    @property
    def relay_url(self) -> str | None: ...

    @property
    def gateway_id(self) -> str | None: ...

    @property
    def secret(self) -> str | None: ...

    @property
    def max_frame_bytes(self) -> int: ...

    @property
    def handshake_timeout_s(self) -> float: ...

    @property
    def outbound_timeout_s(self) -> float: ...

    @property
    def idle_ack_timeout_s(self) -> float: ...

    @property
    def ping_interval_s(self) -> float: ...

    @property
    def ping_timeout_s(self) -> float: ...

    @property
    def backoff_base_s(self) -> float: ...

    @property
    def backoff_cap_s(self) -> float: ...

    @property
    def stable_after_s(self) -> float: ...

    @property
    def identities(self) -> tuple[Identity, ...]:
        """The ordered identity set, first = primary."""


@attrs.define
class SupervisorStats:
    """Counters for status pages and tests."""

    dials: int = 0
    dial_failures: int = 0
    handshakes: int = 0
    drops: int = 0
    frames_in: int = 0
    frames_out: int = 0
    malformed_frames: int = 0
    inbound_stalls: int = 0
    inbound_stalled_frames: int = 0
    contained_protocol_errors: int = 0
    last_backoff_s: float | None = None
    last_close: tuple[int, str] | None = None


@attrs.define
class _Stall:
    """One backpressure episode: the reader waiting on a full inbound queue (RC §7.2)."""

    started: float
    resumed: float
    frames: int = 0


def _default_token(gateway_id: str, secret: str) -> str:
    return make_upgrade_token(gateway_id, secret, now=time.time())


class Supervisor:
    """Dial, handshake, serve, reconnect; expose outbound and the idle flow.

    Args:
        config: the gateway configuration (see :class:`RelayConfig`).
        inbound: where admitted ``inbound``/``passthrough_forward`` frames go; the reader
            waits when it is full (TCP backpressure).
        on_interrupt: called synchronously with ``(session_key, chat_id)`` for each
            ``interrupt_inbound``.
        dialer: opens the WebSocket (default: a real trio-websocket dial).
        rng: ``uniform(low, high)`` for the backoff jitter (default: ``random.uniform``).
        token_factory: mints the upgrade bearer from ``(gateway_id, secret)``.
    """

    def __init__(
        self,
        config: RelayConfig,
        *,
        inbound: trio.MemorySendChannel[InboundItem],
        on_interrupt: Callable[[str, str], None],
        dialer: Dialer | None = None,
        rng: Callable[[float, float], float] | None = None,
        token_factory: Callable[[str, str], str] | None = None,
    ) -> None:
        if not config.relay_url:
            raise ValueError("relay_url is not set")
        self.config = config
        self.url = dial_url(config.relay_url)
        self.identities = config.identities
        self._inbound = inbound
        self._on_interrupt = on_interrupt
        self._dialer: Dialer = dialer if dialer is not None else websocket_dialer
        self._token_factory = token_factory if token_factory is not None else _default_token
        self.machine = sm.ConnectionMachine(
            has_credentials=bool(config.gateway_id and config.secret),
            uniform=rng if rng is not None else random.uniform,
            timing=sm.Timing(
                handshake_timeout_s=config.handshake_timeout_s,
                idle_ack_timeout_s=config.idle_ack_timeout_s,
                backoff_base_s=config.backoff_base_s,
                backoff_cap_s=config.backoff_cap_s,
                stable_after_s=config.stable_after_s,
                token_ttl_s=float(getattr(config, "token_ttl_s", 300) or 300),
            ),
            # Optional on RelayConfig: a plain config without the key retries for ever.
            exit_on_refused=bool(getattr(config, "exit_on_refused", False)),
        )
        self.outbound = OutboundRouter(
            identities=self.identities,
            outbound_timeout_s=config.outbound_timeout_s,
            max_frame_bytes=config.max_frame_bytes,
        )
        self.stats = SupervisorStats()
        self._descriptors: dict[str, CapabilityDescriptor] = {}
        self._default: CapabilityDescriptor | None = None
        self._first_of_connection = True
        self._nursery: trio.Nursery | None = None
        self._socket: RelaySocket | None = None
        self._socket_scope: trio.CancelScope | None = None
        self._close_request: trio.Event | None = None
        self._close_args: sm.CloseSocket | None = None
        self._generation = 0
        self._connection_done = trio.Event()
        self._connection_done.set()
        self._timers: dict[sm.Timer, float] = {}
        self._timers_changed = trio.Event()
        self._ready_changed = trio.Event()
        self._terminal = trio.Event()
        self._first_ready = trio.Event()
        self._idle_waiter: list[bool] | None = None
        self._idle_done: trio.Event | None = None
        self._stall: _Stall | None = None
        #: Called with the new state name on every state change (an observer: it must not
        #: block or raise). The demo shows the states a drop or an idle goes through.
        self.on_state: Callable[[str], None] | None = None
        #: Awaited (with the pending requests) in a going-idle close's drain window: the
        #: gateway's running turns, whose replies may still go out on this socket.
        self.drain_hook: Callable[[], Awaitable[None]] | None = None
        self._draining = False

    # ---- public surface ------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The lower-case state name (``"ready"``, ``"backoff"``, ``"disabled"`` ...)."""
        return self.machine.state.value

    @property
    def live(self) -> bool:
        """Outbound frames may be sent now (READY or IDLE_REQUESTED, or the drain window of
        a going-idle close: the connector buffers new inbound, turns still finish)."""
        return self._socket is not None and (self.machine.live or self._draining)

    @property
    def descriptors(self) -> Mapping[str, CapabilityDescriptor]:
        """Every descriptor received, by platform (the latest one of each)."""
        return MappingProxyType(self._descriptors)

    @property
    def default_descriptor(self) -> CapabilityDescriptor:
        """The session default: the first descriptor of the latest handshake."""
        if self._default is not None:
            return self._default
        return placeholder_descriptor(self.identities[0].platform)

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        """The descriptor in force for ``platform``; the default for ``""`` or unknown."""
        if platform in self._descriptors:
            return self._descriptors[platform]
        if not platform:
            return self.default_descriptor
        if any(identity.platform == platform for identity in self.identities):
            return placeholder_descriptor(platform)
        return self.default_descriptor

    def stats_dict(self) -> dict[str, object]:
        """The counters, with the live socket's frames counted while it is open."""
        out = attrs.asdict(self.stats)
        socket = self._socket
        if socket is not None:  # added to ``stats`` when the socket ends
            out["frames_in"] += socket.frames_in
            out["frames_out"] += socket.frames_out
        return out

    def remember(self, event: MessageEvent) -> None:
        """Feed the chat memory used for tagging and scope injection (RC §7.7)."""
        self.outbound.memory.remember(event)

    async def request(self, action: Action, *, platform_raw: str | None = None) -> SendResult:
        """Send one outbound action and wait for its result (never raises, R20)."""
        return await self.outbound.request(self, action, platform_raw=platform_raw)

    def send_nowait(self, frame: Frame) -> bool:
        """Queue a fire-and-forget frame (``inbound_ack``, ``interrupt``); False if not live."""
        socket = self._socket
        if socket is None or not self.live:
            return False
        text = encode_frame(frame)
        if socket.too_large(text):
            log.error("relay: %s frame too large; not sent", type(frame).TYPE)
            return False
        return socket.enqueue_nowait(text) is not None

    async def write(self, text: str) -> str | None:
        """Write one encoded frame on the current socket (the outbound router's link)."""
        socket = self._socket
        if socket is None:
            return "not connected"
        return await socket.write(text)

    @property
    def handshakes(self) -> int:
        """How many handshakes completed so far (a READY generation counter)."""
        return self.stats.handshakes

    async def wait_ready(self, *, after: int = 0) -> int:
        """Wait for a READY whose handshake number is above ``after``; return that number.

        ``await wait_ready()`` returns at once when READY. Returns early (with the current
        number) once the supervisor stopped or was disabled; see :meth:`wait_next_ready`.
        """
        await trio.lowlevel.checkpoint()
        while self.machine.state is not sm.State.READY or self.stats.handshakes <= after:
            if self.machine.terminal:
                break
            await self._ready_changed.wait()
        return self.stats.handshakes

    async def wait_next_ready(self, after: int) -> int:
        """Like :meth:`wait_ready`, for loops that act once per READY (the outbox flusher).

        Once the supervisor is terminal it never returns; the caller is cancelled with it.
        """
        number = await self.wait_ready(after=after)
        if number <= after or self.machine.terminal:
            await trio.sleep_forever()
        return number

    async def go_idle(self) -> bool:
        """Shut down through ``going_idle`` (RC §8); True if the connector acked it."""
        self.outbound.stopped = True
        acked = await self._idle(sm.StopRequested())
        await self._terminal.wait()
        return acked

    async def suspend(self) -> bool:
        """Flip to buffered delivery and close, then re-dial on the dormant cadence.

        False ("not acked") if the connection was not READY or no ack came in time; the
        socket then stays connected.
        """
        return await self._idle(sm.SuspendRequested())

    def stop(self) -> None:
        """Stop for good: drain through ``going_idle`` when READY; never reconnect."""
        self.outbound.stopped = True
        self._feed(sm.StopRequested())

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until stopped; ``started()`` after the first READY.

        Raises:
            RelayDisabled: the connector refused a freshly minted credential.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer_loop)
            self._feed(sm.Start())
            await self._first_ready.wait()
            if self.machine.state is not sm.State.DISABLED:
                task_status.started(self)
            await self._terminal.wait()
            with trio.move_on_after(self.config.idle_ack_timeout_s + 10):
                await self._connection_done.wait()
            nursery.cancel_scope.cancel()
        if self.machine.state is sm.State.DISABLED:
            raise RelayDisabled(self.machine.disabled_reason or sm.DISABLED_MESSAGE)

    # ---- internals -----------------------------------------------------------------------

    async def _idle(self, event: sm.Event) -> bool:
        if self._idle_waiter is not None:
            return False
        waiter: list[bool] = []
        done = trio.Event()
        self._idle_waiter, self._idle_done = waiter, done
        try:
            self._feed(event)
            await done.wait()
        finally:
            if self._idle_waiter is waiter:
                self._idle_waiter = self._idle_done = None
        return bool(waiter and waiter[0])

    def _feed(self, event: sm.Event) -> None:
        """Hand one event to the machine and carry out its actions (synchronously)."""
        before = self.machine.state
        for action in self.machine.handle(event):
            self._apply(action)
        if self.machine.state is not before and self.on_state is not None:
            self.on_state(self.machine.state.value)
        if self.machine.terminal:
            self._timers.clear()
            self._terminal.set()
            self._first_ready.set()
            self._ready_changed.set()
        self._timers_changed.set()

    def _apply(self, action: sm.Action) -> None:
        if isinstance(action, sm.OpenSocket):
            self._open(action)
        elif isinstance(action, sm.SendHellos):
            self._send_hellos()
        elif isinstance(action, sm.SendGoingIdle):
            if not self.send_nowait(GoingIdle()):
                log.warning("relay: could not queue going_idle")
        elif isinstance(action, sm.CloseSocket):
            self._request_close(action)
        elif isinstance(action, sm.StartTimer):
            self._timers[action.timer] = trio.current_time() + action.seconds
            if action.timer is sm.Timer.BACKOFF:
                self.stats.last_backoff_s = action.seconds
                log.info("relay: next dial in %.3f s", action.seconds)
        elif isinstance(action, sm.CancelTimer):
            self._timers.pop(action.timer, None)
        elif isinstance(action, sm.FailPending):
            self.outbound.fail_all(action.error, retryable=action.retryable)
        elif isinstance(action, sm.HandshakeCompleted):
            self.stats.handshakes += 1
            log.info("relay: connected (%s)", self.default_descriptor.platform)
            self._first_ready.set()
            self._ready_changed.set()
            self._ready_changed = trio.Event()
        elif isinstance(action, sm.IdleResolved):
            if self._idle_waiter is not None and self._idle_done is not None:
                self._idle_waiter.append(action.acked)
                self._idle_done.set()
        elif isinstance(action, sm.CredentialsRefused):
            self._refused(action)
        elif isinstance(action, sm.Log):
            log.log(logging.getLevelName(action.level.upper()), "%s", action.message)

    def _refused(self, action: sm.CredentialsRefused) -> None:
        gateway_id = self.config.gateway_id or "?"
        then = (
            "exiting (--exit-on-refused)"
            if action.exiting
            else f"still retrying; reported again after {2 * action.refusals} refusals"
        )
        log.error(
            "relay: the connector refuses these credentials: %d dials in a row refused "
            "(HTTP 401 / close 4401) without a handshake for gateway id %s; check that %s "
            "is enrolled (relay-runtime enroll) or provisioned (relay-runtime provision) "
            "with this connector and that GATEWAY_RELAY_SECRET is its current secret; %s",
            action.refusals,
            gateway_id,
            gateway_id,
            then,
            extra={"event": "credentials_refused", "refusals": action.refusals},
        )

    def _send_hellos(self) -> None:
        socket = self._socket
        assert socket is not None
        for identity in self.identities:
            if (
                socket.enqueue_nowait(encode_frame(Hello(identity.platform, identity.bot_id)))
                is None
            ):
                log.error("relay: could not queue hello for %s", identity.platform)

    async def _timer_loop(self) -> None:
        while not self.machine.terminal:
            self._timers_changed = trio.Event()
            deadline = math.inf
            expiring: sm.Timer | None = None
            for timer, at in self._timers.items():
                if at < deadline:
                    deadline, expiring = at, timer
            with trio.move_on_at(deadline):
                await self._timers_changed.wait()
                continue
            if expiring is not None and self._timers.get(expiring) == deadline:
                del self._timers[expiring]
                self._feed(sm.TimerExpired(expiring))

    # ---- one connection ----------------------------------------------------------------

    def _open(self, action: sm.OpenSocket) -> None:
        assert self._nursery is not None
        self._generation += 1
        self._socket = None
        self._first_of_connection = True
        previous = self._connection_done
        self._connection_done = trio.Event()
        self._close_request = trio.Event()
        self._close_args = None
        self._nursery.start_soon(
            self._connection, self._generation, previous, self._connection_done, self._close_request
        )

    def _request_close(self, action: sm.CloseSocket) -> None:
        if self._close_request is not None and not self._close_request.is_set():
            self._close_args = action
            # Live from this very moment (the state is already IDLE_ACKED): a turn that
            # replies before the close watcher runs must still reply on this socket.
            self._draining = action.drain_s > 0 and self.drain_hook is not None
            self._close_request.set()

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self.machine.terminal

    def _report(self, generation: int, event: sm.Event) -> None:
        if generation == self._generation:
            self._feed(event)

    async def _connection(
        self,
        generation: int,
        previous: trio.Event,
        done: trio.Event,
        close_request: trio.Event,
    ) -> None:
        """Dial, then run the socket's tasks until it ends. At most one runs at a time."""
        try:
            await previous.wait()
            if not self._current(generation):
                return
            ended: SocketEnd | None = None
            try:
                ended = await self._socket_lifetime(generation, close_request)
            except* LocalProtocolError as group:
                # trio-websocket #184: a ping racing our own close raises in its reader.
                self.stats.contained_protocol_errors += 1
                log.warning("relay: contained websocket protocol error: %r", group.exceptions[0])
            except* (trio.BrokenResourceError, trio_websocket.ConnectionClosed) as group:
                log.warning("relay: socket broke: %r", group.exceptions[0])
            if self._socket is not None and generation == self._generation:
                self._socket = None
            self._end_stall("the socket ended")
            if ended is None:
                ended = SocketEnd(ABNORMAL_CLOSURE, "")
            if ended.code >= 0:
                self.stats.drops += 1
                self.stats.last_close = (ended.code, ended.reason)
                self._log_end(generation, ended)
                self._report(generation, sm.SocketClosed(ended.code, ended.reason))
        finally:
            done.set()

    def _log_end(self, generation: int, ended: SocketEnd) -> None:
        """One line per socket end: INFO for the close we asked for, else a WARNING drop."""
        reason = repr(ended.reason) if ended.reason else "none given"
        orderly = generation == self._generation and self.machine.state in (
            sm.State.IDLE_ACKED,
            sm.State.CLOSED,
        )
        if orderly:
            log.info("relay: connection closed (close code %d, reason %s)", ended.code, reason)
        else:
            log.warning(
                "relay: connection dropped (close code %d, reason %s)",
                ended.code,
                reason,
                extra={"close_code": ended.code},
            )

    async def _socket_lifetime(self, generation: int, close_request: trio.Event) -> SocketEnd:
        """One socket from dial to end; a ``SocketEnd`` with code -1 means 'no socket'."""
        config = self.config
        socket: RelaySocket | None = None
        ended: list[SocketEnd] = []  # stays empty when our close watcher cancels the reader
        failed: list[DialError] = []
        try:
            async with trio.open_nursery() as nursery:
                token = None
                if config.gateway_id and config.secret:
                    token = self._token_factory(config.gateway_id, config.secret)
                self.stats.dials += 1
                dial_scope = trio.CancelScope()
                nursery.start_soon(self._close_watcher, nursery, close_request, dial_scope)
                try:
                    with dial_scope:
                        ws = await dial(
                            self._dialer,
                            nursery,
                            self.url,
                            headers=bearer_headers(token),
                            max_message_size=message_limit(config.max_frame_bytes),
                            timeout_s=config.handshake_timeout_s,
                        )
                except DialError as exc:
                    failed.append(exc)
                    nursery.cancel_scope.cancel()
                    return SocketEnd(-1)
                if dial_scope.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    return SocketEnd(-1)
                socket = RelaySocket(
                    ws,
                    max_frame_bytes=config.max_frame_bytes,
                    ping_interval_s=config.ping_interval_s,
                    ping_timeout_s=config.ping_timeout_s,
                    write_buffer=len(self.identities) + 64,
                    rejected_log=RejectedFrameLog(log),
                )
                self._socket = socket
                nursery.start_soon(socket.writer)
                self._report(generation, sm.DialSucceeded())
                nursery.start_soon(socket.keepalive, nursery)
                nursery.start_soon(socket.rejected_log.run)
                ended.append(
                    await socket.reader(lambda item: self._on_item(generation, item, socket))
                )
                await socket.settle()
                nursery.cancel_scope.cancel()
        except* ConnectionRejected as group:
            # trio-websocket raises a rejected upgrade from its reader task, not the dial.
            rejected = group.exceptions[0]
            assert isinstance(rejected, ConnectionRejected)
            status = rejected.status_code
            failed.append(DialError(f"upgrade rejected with HTTP {status}", status))
        except* (HandshakeError, OSError) as group:
            failed.append(DialError(f"{type(group.exceptions[0]).__name__}: {group.exceptions[0]}"))
        finally:
            if socket is not None:
                self.stats.frames_in += socket.frames_in
                self.stats.frames_out += socket.frames_out
            if failed and socket is None:
                self.stats.dial_failures += 1
                log.warning("relay: dial failed: %s", failed[0].reason)
                self._report(generation, sm.DialFailed(failed[0].reason, failed[0].http_status))
        if ended:
            return ended[0]
        # Our close watcher ended the socket's tasks: report the close we sent.
        return socket.end_from(None) if socket is not None else SocketEnd(-1)

    async def _close_watcher(
        self, nursery: trio.Nursery, close_request: trio.Event, dial_scope: trio.CancelScope
    ) -> None:
        """Carry out a ``CloseSocket`` for this socket: drain, close frame, end its tasks."""
        await close_request.wait()
        args = self._close_args or sm.CloseSocket(1000, "closing")
        socket = self._socket
        if socket is None:
            self._draining = False
            dial_scope.cancel()
            return
        if args.drain_s > 0:
            try:
                with trio.move_on_after(args.drain_s):
                    if self.drain_hook is not None:
                        await self.drain_hook()
                    self._draining = False
                    await self.outbound.wait_drained()
            finally:
                self._draining = False
        await socket.close(args.code, args.reason)
        nursery.cancel_scope.cancel()

    async def _on_item(
        self, generation: int, item: Frame | FrameError, socket: RelaySocket | None = None
    ) -> None:
        """Route one decoded frame; only ``inbound``/``passthrough_forward`` may wait."""
        if isinstance(item, FrameError):
            self._frame_error(generation, item, socket)
        elif isinstance(item, DescriptorFrame):
            self._descriptor(generation, item.descriptor)
        elif isinstance(item, OutboundResult):
            self.outbound.resolve(item)
        elif isinstance(item, GoingIdleAck):
            self._report(generation, sm.GoingIdleAckReceived())
        elif isinstance(item, InterruptInbound):
            self._on_interrupt(item.session_key, item.chat_id)
        elif isinstance(item, Inbound):
            self.remember(item.event)
            await self._hand_off(item)
        elif isinstance(item, PassthroughForwardFrame):
            await self._hand_off(item)
        # Anything else is an echo of a gateway frame: ignored (RC §2 Dispatch).

    def _frame_error(
        self, generation: int, error: FrameError, socket: RelaySocket | None = None
    ) -> None:
        if error.kind == "unknown_type":
            log.debug("%s", error.message)
            return
        self.stats.malformed_frames += 1
        level = logging.getLevelName(error.severity.upper())
        if socket is not None:
            socket.rejected_log.log(level, error.message)
        else:
            log.log(level, "%s", error.message)
        if error.kind == "invalid_descriptor":
            self._report(generation, sm.DescriptorReceived(valid=False))

    def _descriptor(self, generation: int, descriptor: CapabilityDescriptor) -> None:
        if generation != self._generation:
            return
        self._descriptors[descriptor.platform] = descriptor
        if self._first_of_connection:
            self._first_of_connection = False
            self._default = descriptor
        self._report(generation, sm.DescriptorReceived(valid=True))

    async def _hand_off(self, item: InboundItem) -> None:
        """Give one frame to the dispatcher, waiting (and so not reading) while it is full.

        One ERROR opens a backpressure episode; it ends, with one INFO, at the first hand-off
        that does not wait while the queue is at most half full, or when the socket ends.
        """
        stall = self._stall
        if stall is not None:
            queued = self._inbound.statistics()
            # Hysteresis: a queue hovering at the brim would otherwise open a new episode
            # every few frames.
            if queued.current_buffer_used <= queued.max_buffer_size // 2:
                self._end_stall("the queue has room again")
                stall = None
        try:
            self._inbound.send_nowait(item)
            return
        except trio.WouldBlock:
            pass
        if stall is None:
            now = trio.current_time()
            stall = self._stall = _Stall(started=now, resumed=now)
            self.stats.inbound_stalls += 1
            log.error("relay: inbound queue full; pausing the socket reader (backpressure)")
        stall.frames += 1
        self.stats.inbound_stalled_frames += 1
        try:
            await self._inbound.send(item)
        finally:
            stall.resumed = trio.current_time()

    def _end_stall(self, why: str) -> None:
        """Close the open backpressure episode, if any, with its one INFO line."""
        stall, self._stall = self._stall, None
        if stall is None:
            return
        log.info(
            "relay: inbound backpressure ended (%s) after %.3f s; %d frame(s) waited",
            why,
            stall.resumed - stall.started,
            stall.frames,
        )
