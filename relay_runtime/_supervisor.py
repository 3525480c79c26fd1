"""The connection supervisor: the trio driver around :class:`protocol.RelayConnection` (RC §6, §8).

Its shape is trio's ``_serve_one_listener``: one loop, ``while not terminal: dial → serve →
back off``. Each socket is served in its own nursery (reader, writer, keepalive, timers and
the close watcher) that ends as a unit before the loop goes on, so at most one socket exists
and nothing outlives the step that started it. What to do next (dial at once, wait on the
ladder, close, stop) is decided by the connection; this module does the I/O and carries out
its actions. Stop, ``go_idle`` and ``suspend`` are events fed to the connection: the close it
orders ends the serving step, and a terminal state ends the loop.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import attrs
import trio
import trio_websocket

from protocol import _lifecycle as sm
from protocol._auth import make_upgrade_token
from protocol._descriptor import CapabilityDescriptor
from protocol._errors import FrameError
from protocol._frames import (
    Frame,
    Inbound,
    InterruptInbound,
    Outbound,
    OutboundResult,
    PassthroughForwardFrame,
)
from protocol._framing import exceeds_limit
from protocol._relay_connection import RelayConnection, RelayProtocolError
from protocol._urls import dial_url
from relay_runtime._errors import RelayDisabled
from relay_runtime._hand_off import InboundHandOff, InboundItem
from relay_runtime._outbound import (
    QUEUED,
    FrameNotEncodable,
    FrameTooLarge,
    OutboundRouter,
    Queued,
)
from relay_runtime._relay_config import (
    RelayConfig as RelayConfig,
)
from relay_runtime._relay_config import (
    SupervisorStats as SupervisorStats,
)
from relay_runtime._relay_config import (
    log_credentials_refused,
)
from relay_runtime._socket_step import SocketStep, log_end
from relay_runtime._timers import Timers
from relay_runtime._transport import (
    ABNORMAL_CLOSURE,
    Dialer,
    DialError,
    RelaySocket,
    SocketEnd,
    websocket_dialer,
)

log = logging.getLogger("relay_runtime.supervisor")


@attrs.define(eq=False)
class _IdleCall:
    """A waiting ``go_idle``/``suspend``: answered by the connection's ``IdleResolved``."""

    acked: bool = False
    answered: trio.Event = attrs.field(factory=trio.Event)


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
        dialer: opens the WebSocket (default: a real dial, :func:`websocket_dialer`).
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
        self._on_interrupt = on_interrupt
        self._dialer: Dialer = dialer if dialer is not None else websocket_dialer
        self._token_factory = token_factory if token_factory is not None else _default_token
        #: The protocol connection: state, codec, hellos, descriptors (read-only for callers).
        self.connection = RelayConnection(
            self.identities,
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
            max_frame_bytes=config.max_frame_bytes,
        )
        #: The outbound owner, writing through this supervisor (its link).
        self.outbound = OutboundRouter(
            self,
            identities=self.identities,
            outbound_timeout_s=config.outbound_timeout_s,
        )
        self.stats = SupervisorStats()
        self._hand_off = InboundHandOff(inbound, self.stats)
        self._timers = Timers()
        self._serving: SocketStep | None = None
        self._idle_call: _IdleCall | None = None
        self._state_changed = trio.Event()
        self._ready_changed = trio.Event()
        self._terminal = trio.Event()
        self._first_ready = trio.Event()
        self._loop_done = trio.Event()
        #: Called with the new state name on every state change (an observer: it must not
        #: block or raise). The demo shows the states a drop or an idle goes through.
        self.on_state: Callable[[str], None] | None = None
        #: Awaited (with the pending requests) in a going-idle close's drain window: the
        #: gateway's running turns, whose replies may still go out on this socket.
        self.drain_hook: Callable[[], Awaitable[None]] | None = None

    # ---- public surface ------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The lower-case state name (``"ready"``, ``"backoff"``, ``"disabled"`` ...)."""
        return self.connection.state.value

    @property
    def live(self) -> bool:
        """Outbound frames may be sent now (READY or IDLE_REQUESTED, or the drain window of
        a going-idle close: the connector buffers new inbound, turns still finish)."""
        return self._socket is not None and self.connection.live

    @property
    def descriptors(self) -> Mapping[str, CapabilityDescriptor]:
        """Every descriptor received, by platform (the latest one of each)."""
        return self.connection.descriptors

    @property
    def default_descriptor(self) -> CapabilityDescriptor:
        """The session default: the first descriptor of the latest handshake."""
        return self.connection.default_descriptor

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        """The descriptor in force for ``platform``; the default for ``""`` or unknown."""
        return self.connection.descriptor_for(platform)

    def stats_dict(self) -> dict[str, object]:
        """The counters, with the live socket's frames counted while it is open."""
        out = attrs.asdict(self.stats)
        socket = self._socket
        if socket is not None:  # added to ``stats`` when the socket ends
            out["frames_out"] += socket.frames_out
        return out

    def send_nowait(self, frame: Frame) -> bool:
        """Queue a fire-and-forget frame (``inbound_ack``, ``interrupt``); False if not live."""
        socket = self._socket
        if socket is None:
            return False
        try:
            text = self.connection.send(frame)
        except RelayProtocolError:
            return False
        if socket.too_large(text):
            log.error("relay: %s frame too large; not sent", type(frame).TYPE)
            return False
        return socket.enqueue_nowait(text) is not None

    async def send(self, frame: Outbound) -> str | Queued | None:
        """The router's ``Link.send``: encode through the connection, check the size, queue.

        ``QUEUED`` once handed to the socket's writer, which reports the write (or why it
        failed) to ``OutboundRouter.write_done``: the requester waits once, for the result,
        not for the write too. Else why it could not be queued; raises as ``Link.send`` says.
        """
        try:
            text = self.connection.send(frame)
        except (TypeError, ValueError) as exc:
            raise FrameNotEncodable(str(exc)) from exc
        if exceeds_limit(text[:-1], self.config.max_frame_bytes):
            raise FrameTooLarge(f"{len(text) - 1} characters encoded")
        socket = self._socket
        if socket is None:
            return "not connected"
        request_id = frame.request_id
        outbound = self.outbound
        refused = await socket.queue(text, lambda error: outbound.write_done(request_id, error))
        return QUEUED if refused is None else refused

    @property
    def handshakes(self) -> int:
        """How many handshakes completed so far (the number of the latest READY)."""
        return self.stats.handshakes

    async def wait_ready(self, *, after: int = 0) -> int:
        """Wait for a READY whose handshake number is above ``after``; return that number.

        ``await wait_ready()`` returns at once when READY. Returns early (with the current
        number) once the supervisor stopped or was disabled; see :meth:`wait_next_ready`.
        """
        await trio.lowlevel.checkpoint()
        while self.connection.state is not sm.State.READY or self.stats.handshakes <= after:
            if self.connection.terminal:
                break
            await self._ready_changed.wait()
        return self.stats.handshakes

    async def wait_next_ready(self, after: int) -> int:
        """Like :meth:`wait_ready`, for loops that act once per READY (the outbox flusher).

        Once the supervisor is terminal it never returns; the caller is cancelled with it.
        """
        number = await self.wait_ready(after=after)
        if number <= after or self.connection.terminal:
            await trio.sleep_forever()
        return number

    async def go_idle(self) -> bool:
        """Shut down through ``going_idle`` (RC §8); True if the connector acked it."""
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
        self._feed(sm.StopRequested())

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until stopped; ``started()`` after the first READY.

        Raises:
            RelayDisabled: the connector refused a freshly minted credential.
        """
        async with trio.open_nursery() as nursery:
            # The replies' timeouts, for as long as the supervisor runs (one timer task
            # instead of a cancel scope per reply).
            nursery.start_soon(self.outbound.run_timer)
            nursery.start_soon(self._loop)
            await self._first_ready.wait()
            if self.connection.state is not sm.State.DISABLED:
                task_status.started(self)
            await self._terminal.wait()
            # The close the terminal state ordered is bounded; this bounds a stuck one too.
            with trio.move_on_after(self.config.idle_ack_timeout_s + 10):
                await self._loop_done.wait()
            nursery.cancel_scope.cancel()
        if self.connection.state is sm.State.DISABLED:
            reason = self.connection.machine.disabled_reason
            raise RelayDisabled(reason or sm.DISABLED_MESSAGE)

    # ---- the loop ------------------------------------------------------------------------

    @property
    def _socket(self) -> RelaySocket | None:
        serving = self._serving
        return serving.socket if serving is not None else None

    async def _loop(self) -> None:
        """``while not terminal: dial → serve → back off``; the connection says which."""
        try:
            self._feed(sm.Start())
            while not self.connection.terminal:
                if self.connection.state is sm.State.BACKOFF:
                    await self._back_off()
                else:
                    await self._serve_one()
        finally:
            self._loop_done.set()

    async def _back_off(self) -> None:
        """Wait in BACKOFF until the connection leaves it (its timer, or a stop)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timers.run, self._fire)
            while self.connection.state is sm.State.BACKOFF:
                await self._state_changed.wait()
            nursery.cancel_scope.cancel()

    async def _serve_one(self) -> None:
        """Dial once and serve that socket until it ends; then tell the connection."""
        step = self._serving = SocketStep(
            config=self.config,
            stats=self.stats,
            dialer=self._dialer,
            url=self.url,
            bearer=self._bearer,
            opened=self._opened,
            dial_failed=self._dial_failed,
            on_message=self._on_message,
            on_message_nowait=self._on_message_nowait,
            drain=self._drain,
            timers=partial(self._timers.run, self._fire),
            write_buffer=len(self.identities) + 64,
        )
        ended: SocketEnd | None = None
        try:
            ended = await step.run()
        except* (trio.BrokenResourceError, trio_websocket.ConnectionClosed) as group:
            log.warning("relay: socket broke: %r", group.exceptions[0])
        finally:
            self._serving = None
            self.connection.drain_finished()
            self._hand_off.end_stall("the socket ended")
        if step.socket is None:
            if step.failure is None and self.connection.state is sm.State.DIALING:
                # The dial's own tasks broke before it finished: a failed dial all the same.
                self._feed(sm.DialFailed("the dial ended without a socket"))
            return
        if ended is None:
            ended = SocketEnd(ABNORMAL_CLOSURE, "")
        self.stats.drops += 1
        self.stats.last_close = (ended.code, ended.reason)
        log_end(ended, orderly=self.connection.state in (sm.State.IDLE_ACKED, sm.State.CLOSED))
        # After a handshake failure or a stop the connection has moved on already.
        if self.connection.has_socket:
            self._feed(sm.SocketClosed(ended.code, ended.reason))

    def _bearer(self) -> str | None:
        config = self.config
        if config.gateway_id and config.secret:
            return self._token_factory(config.gateway_id, config.secret)
        return None

    def _opened(self) -> bool:
        if self.connection.state is not sm.State.DIALING:
            return False  # stopped while the dial completed
        self._feed(sm.DialSucceeded())
        return True

    def _dial_failed(self, error: DialError) -> None:
        if self.connection.state is sm.State.DIALING:
            self._feed(sm.DialFailed(error.reason, error.http_status))

    async def _drain(self) -> None:
        """The going-idle drain window: running turns may still reply, then results land."""
        try:
            if self.drain_hook is not None:
                await self.drain_hook()
            self.connection.drain_finished()
            await self.outbound.wait_drained()
        finally:
            self.connection.drain_finished()

    # ---- frames in -----------------------------------------------------------------------

    async def _on_message(self, message: str | bytes) -> None:
        """The reader's one callback: decode through the connection, carry out what the
        frames caused, route each in order (an exception routing one is logged, RC R7)."""
        rest = self._on_message_nowait(message)
        if rest is not None:
            await rest()

    def _on_message_nowait(self, message: str | bytes) -> Callable[[], Awaitable[None]] | None:
        """:meth:`_on_message` as far as it goes without waiting: ``None`` once every frame
        is routed, else what is left to await (from the first ``inbound`` the dispatcher's
        full queue cannot take now, every later frame too, in order).

        The socket calls it from the WebSocket client's reader task when its own reader is
        idle, so a message costs no task step of ours unless the dispatcher applies
        backpressure.
        """
        connection = self.connection
        before = connection.state
        items = connection.receive_data(message)
        actions = connection.take_actions()
        if actions or connection.state is not before:  # most messages change nothing
            self._carry_out(before, actions)
        errors = 0
        for item in items:
            if isinstance(item, FrameError):
                errors += 1
        self.stats.frames_in += len(items) - errors
        for index, item in enumerate(items):
            try:
                if not self._route_nowait(item):
                    return partial(self._route_all, items[index:])
            except Exception:
                log.exception("relay: error while handling a frame; reader continues")
        return None

    async def _route_all(self, items: list[Frame | FrameError]) -> None:
        for item in items:
            try:
                await self._route(item)
            except Exception:
                log.exception("relay: error while handling a frame; reader continues")

    def _route_nowait(self, item: Frame | FrameError) -> bool:
        """:meth:`_route` without waiting; False (nothing done) if it would have to wait."""
        if isinstance(item, Inbound | PassthroughForwardFrame):
            return self._hand_off.put_nowait(item)
        if isinstance(item, FrameError):
            self._frame_error(item)
        elif isinstance(item, OutboundResult):
            self.outbound.resolve(item)
        elif isinstance(item, InterruptInbound):
            self._on_interrupt(item.session_key, item.chat_id)
        # Anything else is an echo of a gateway frame: ignored (RC §2 Dispatch).
        return True

    async def _route(self, item: Frame | FrameError) -> None:
        """Route one decoded frame; only ``inbound``/``passthrough_forward`` may wait.

        The connection took descriptors and ``going_idle_ack`` in :meth:`_on_message`.
        """
        if isinstance(item, Inbound | PassthroughForwardFrame):
            await self._hand_off.put(item)  # the dispatcher feeds the chat memory (once)
        else:
            self._route_nowait(item)

    def _frame_error(self, error: FrameError) -> None:
        if error.kind == "unknown_type":
            log.debug("%s", error.message)
            return
        self.stats.malformed_frames += 1
        level = logging.getLevelName(error.severity.upper())
        socket = self._socket
        if socket is not None:
            socket.rejected_log.log(level, error.message)
        else:
            log.log(level, "%s", error.message)

    # ---- the connection's actions --------------------------------------------------------

    async def _idle(self, event: sm.Event) -> bool:
        if self._idle_call is not None:
            return False
        call = self._idle_call = _IdleCall()
        try:
            self._feed(event)
            await call.answered.wait()
        finally:
            if self._idle_call is call:
                self._idle_call = None
        return call.acked

    def _fire(self, timer: sm.Timer) -> None:
        self._feed(sm.TimerExpired(timer))

    def _feed(self, event: sm.Event) -> None:
        """Hand one event to the connection and carry out its actions (synchronously)."""
        before = self.connection.state
        self._carry_out(before, self.connection.handle(event))

    def _carry_out(self, before: sm.State, actions: list[sm.Action]) -> None:
        for action in actions:
            self._apply(action)
        if self.connection.state is not before:
            if self.on_state is not None:
                self.on_state(self.connection.state.value)
            changed, self._state_changed = self._state_changed, trio.Event()
            changed.set()
        if self.connection.terminal:
            self._timers.clear()
            self._terminal.set()
            self._first_ready.set()
            self._ready_changed.set()

    def _apply(self, action: sm.Action) -> None:
        if isinstance(action, sm.WriteFrames):
            self._write_own(action.texts)
        elif isinstance(action, sm.CloseSocket):
            self._order_close(action)
        elif isinstance(action, sm.StartTimer):
            self._timers.arm(action.timer, action.seconds)
            if action.timer is sm.Timer.BACKOFF:
                self.stats.last_backoff_s = action.seconds
                log.info("relay: next dial in %.3f s", action.seconds)
        elif isinstance(action, sm.CancelTimer):
            self._timers.cancel(action.timer)
        elif isinstance(action, sm.FailPending):
            self.outbound.fail_all(action.error, retryable=action.retryable)
        elif isinstance(action, sm.HandshakeCompleted):
            self.stats.handshakes += 1
            log.info("relay: connected (%s)", self.default_descriptor.platform)
            self._first_ready.set()
            self._ready_changed.set()
            self._ready_changed = trio.Event()
        elif isinstance(action, sm.IdleResolved):
            call = self._idle_call
            if call is not None and not call.answered.is_set():
                call.acked = action.acked
                call.answered.set()
        elif isinstance(action, sm.CredentialsRefused):
            self._refused(action)
        elif isinstance(action, sm.Log):
            log.log(logging.getLevelName(action.level.upper()), "%s", action.message)
        # OpenSocket: the loop dials whenever the state is DIALING.

    def _write_own(self, texts: tuple[str, ...]) -> None:
        """Queue the connection's own frames (hellos, ``going_idle``) on the served socket."""
        socket = self._socket
        for text in texts:
            if socket is None or socket.enqueue_nowait(text) is None:
                log.warning("relay: could not queue %s", text.strip()[:60])

    def _order_close(self, action: sm.CloseSocket) -> None:
        if action.drain_s > 0 and self.drain_hook is None:
            # Without running turns to wait for, the drain window only waits for results.
            self.connection.drain_finished()
        serving = self._serving
        if serving is not None:
            serving.order_close(action)

    def _refused(self, action: sm.CredentialsRefused) -> None:
        log_credentials_refused(log, self.config.gateway_id or "?", action)
