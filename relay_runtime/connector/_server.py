"""The reference connector's WebSocket side: a real ``/relay`` server on loopback.

A development and test peer for the gateway, not a production connector. It speaks the
connector's half of the relay contract v1 (RC §1-§8) well enough to run a gateway for real:

* ``/relay`` upgrades authenticated with the HMAC bearer (``protocol._auth``), a rotation list
  of secrets per gateway; a refusal is HTTP 401 or an accept-then-close 4401 (switchable);
  any other path gets 400. The gateway id comes from the token, never from a frame.
* ``hello`` -> a per-platform descriptor (or an invalid one, or none, for handshake tests).
* ``outbound`` -> ``outbound_result`` following an :class:`~.outcomes.OutcomeTable`,
  idempotent by ``requestId`` per gateway: the gateway's outbox re-sends a reply with its
  stored ``requestId`` after a drop (RC §6.2), so a repeat is answered with the first result
  and egresses nothing (counted in ``duplicate_outbounds``).
* ``going_idle`` flips the gateway's instance to buffered-only and acks; buffered inbound is
  replayed with ``bufferId``s after the next handshake, advancing only on ``inbound_ack``.
* ``bufferId``s are ``buf-<run prefix>-<n>``: the prefix is random per connector unless set,
  so a gateway whose state dir outlives a connector run never mistakes a new message for a
  replay it already completed (``bufferId`` is a replay-dedupe key, RC §4.6).
* Besides listening on TCP (:meth:`ReferenceConnector.serve`) it serves any already-open
  trio stream (:meth:`ReferenceConnector.serve_stream`), and
  :meth:`ReferenceConnector.memory_dialer` connects a gateway to it over in-memory streams,
  for tests under trio's ``MockClock``.
* Observer hooks: ``on_outbound`` sees every ``outbound`` frame before it is answered,
  ``on_going_idle`` may take over a ``going_idle`` (e.g. drop the socket instead of acking),
  and ``on_accept`` sees each socket right after the upgrade (raise in it to inject a fault).
* Test hooks: inject ``inbound`` / ``passthrough_forward`` / ``interrupt_inbound``, revoke or
  expire a gateway (4401), drop connections (TCP abort or a close code, also at seeded random
  points), and observe every frame with :meth:`ReferenceConnector.wait_for`.
* Operator controls (driven over HTTP by :mod:`~relay_runtime.connector._admin`): flip an
  instance to buffered-only (:meth:`ReferenceConnector.hold`), replay its buffer now
  (:meth:`ReferenceConnector.flush`), and the journal of what gateways posted
  (:attr:`ReferenceConnector.journal`, optionally mirrored by a ``journal_sink``).
* Upgrade tokens that never expire or live longer than ``max_token_lifetime_s`` are refused
  (see :mod:`~relay_runtime.connector._upgrade_auth`).

One :class:`ReferenceConnector` serves any number of gateways; each authenticated gateway id
is one *instance* with its own delivery buffer (an unauthenticated dev gateway is instance
``""``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import trio

from protocol._events import MessageEvent
from protocol._frames import Inbound, InterruptInbound, PassthroughForward, PassthroughForwardFrame
from relay_runtime.connector._buffer import BufferedFrame
from relay_runtime.connector._connection import (
    AcceptHook as AcceptHook,
)
from relay_runtime.connector._connection import (
    Connection as Connection,
)
from relay_runtime.connector._connection import (
    GoingIdleHook as GoingIdleHook,
)
from relay_runtime.connector._connection import (
    Instance,
)
from relay_runtime.connector._connection import (
    OutboundObserver as OutboundObserver,
)
from relay_runtime.connector._observe import Observation
from relay_runtime.connector._records import Delivery, GatedDrop
from relay_runtime.connector._relevance import RelevancePolicy, admit
from relay_runtime.connector._seams import WakePokerLike
from relay_runtime.connector._sockets import Sockets

log = logging.getLogger("relay.connector")


class ReferenceConnector(Sockets, Observation):
    """A connector peer for gateways under test (see the module docstring).

    Args:
        secrets: gateway id -> its secret, or its rotation list (primary first).
        registry: the control plane's registry; consulted for secrets of gateways not in
            ``secrets``, for relevance policies and for wake URLs.
        poker: pokes a wake URL when a flipped instance gets its first buffered message.
        descriptors: platform -> descriptor (or raw wire object) answered to ``hello``;
            defaults to the discord/telegram/relay presets. Other platforms get
            :func:`~.presets.generic_descriptor`.
        allow_unauthenticated: accept an upgrade *without* a bearer as gateway ``""``
            (development); a bearer that is present is still verified.
        reject_mode: refuse a bad upgrade with HTTP 401 (``"http"``) or by accepting and
            closing 4401 (``"close"``); the gateway treats both alike.
        buffer_when_disconnected: buffer inbound for an instance with no connected gateway
            (else such inbound is dropped and reported as ``dropped``).
        always_buffer: deliver every inbound through the ack-gated buffer (with a
            ``bufferId``), never live; for chaos tests where nothing may be lost.
        drain_window: how many buffered entries may be awaiting ``inbound_ack`` at once on
            one connection (1: strictly one at a time).
        max_frame_bytes: the frame limit for what gateways send (RC §2).
        close_timeout: how long a close handshake may take before the TCP stream is aborted.
        clock: wall clock for token expiry.
        max_token_lifetime_s: refuse (401/4401) a genuine token that never expires
            (``exp=0``) or expires more than this many seconds from now; ``None`` accepts
            such legacy tokens. Default 600 s (the gateway mints 300 s tokens).
        request_id_memory: how many performed ``requestId``s (per connector, keyed by
            gateway) are remembered to answer a repeat without egressing again; the least
            recently seen is forgotten first.
        buffer_prefix: the run prefix of every ``bufferId`` (``buf-<prefix>-<n>``); 1-64
            of ``A-Z a-z 0-9 . _ ~ -``. Default: 8 random hex digits, fresh per connector, so
            ids never repeat across runs (they are replay-dedupe keys, RC §4.6). Set it
            only to get predictable ids, and never reuse one against the same state dir.
        on_outbound: called as ``on_outbound(conn, frame)`` for each ``outbound`` frame
            received, before it is answered (repeats included). An observer: it cannot change
            the answer, and an exception in it is logged and the frame answered anyway.
        journal_sink: called with each :class:`~.records.Post` as it is journalled (e.g. to
            keep the journal on disk); an exception in it is logged and ignored.
        on_going_idle: awaited as ``on_going_idle(conn)`` for each ``going_idle`` before the
            connector handles it. Returning ``True`` means the hook dealt with the frame (for
            instance dropped the socket): the instance is then not flipped to buffered-only
            and no ``going_idle_ack`` is sent. ``False`` lets the connector go on as usual.
        keep_records: how many of each kind of record (frames received and sent, bad
            frames, rejections, gated drops, pokes, journalled posts, posted messages) are
            kept, the newest; ``None`` (the default, for tests) keeps every one. A
            long-running connector must bound them: kept records are memory and work for
            the garbage collector, which walks them all on every full collection. An edit of
            a message no longer kept is answered as unknown. The CLI keeps
            :data:`~relay_runtime.connector.DEFAULT_KEEP_RECORDS`.
        on_accept: called as ``on_accept(conn)`` once per socket the connector accepts,
            right after the WebSocket upgrade and before the connection is registered. A
            fault-injection point for tests: an exception in it is *not* caught there but
            treated as an error serving that socket: logged, that socket closed, the
            connector serving others as before.

    The hooks are also plain attributes, settable after construction.
    """

    @property
    def buffer_prefix(self) -> str:
        """The run prefix of this connector's ``bufferId``s (``buf-<prefix>-<n>``)."""
        return self._buffer_prefix

    def restore(
        self,
        gateway_id: str,
        *,
        buffered: Sequence[tuple[str, BufferedFrame]] = (),
        performed: Sequence[tuple[str, Mapping[str, Any]]] = (),
    ) -> None:
        """Reload what a restarted connector had in memory, as a durable connector would.

        ``buffered``: ``(bufferId, frame)`` entries not yet acked, oldest first, buffered
        again under their old ids (replayed after the next handshake). ``performed``:
        ``(requestId, result)`` of actions already egressed, so a repeat is answered with
        the first result and egresses nothing. Call it before any gateway connects.
        """
        inst = self._instance(gateway_id)
        for buffer_id, frame in buffered:
            inst.buffer.append(frame, buffer_id)
        for request_id, result in performed:
            self._performed[(gateway_id, request_id)] = dict(result)
        while len(self._performed) > self.request_id_memory:
            self._performed.popitem(last=False)
        self._changed()

    # -- injection ------------------------------------------------------------------------

    async def inject(
        self,
        event: MessageEvent,
        *,
        gateway_id: str | None = None,
        addressed: bool = True,
        from_bot: bool | None = None,
        buffered: bool = False,
    ) -> Delivery:
        """Deliver ``event`` to a gateway as an ``inbound`` frame.

        Passes the relevance gate first (``addressed``: the message mentions or replies to
        the bot; ``from_bot`` defaults to ``event.source.is_bot``). Then goes live to the
        connected gateway, or into the instance's buffer when it is flipped, still draining,
        disconnected, or ``always_buffer`` or ``buffered`` is set (a connected, draining
        gateway then gets it at once through the buffer, with a ``bufferId``).
        """
        inst = self._instance(self._resolve(gateway_id))
        source = event.source
        chat_id = source.chat_id
        if chat_id and chat_id not in self.chat_info:  # the first event of a chat names it
            self.chat_info[chat_id] = (source.chat_name or chat_id, source.chat_type)
        policy = self._policy(inst.gateway_id, source.platform_raw or "relay")
        reason = admit(
            policy,
            event,
            addressed=addressed,
            from_bot=source.is_bot if from_bot is None else from_bot,
        )
        if reason is not None:
            self._gated.append(GatedDrop(inst.gateway_id, event, reason))
            self._changed()
            log.info("relevance gate dropped a message for %r: %s", inst.gateway_id, reason)
            return Delivery("gated", reason=reason)
        return await self._deliver(inst, Inbound(event=event), force_buffer=buffered)

    async def inject_passthrough(
        self, forward: PassthroughForward, *, gateway_id: str | None = None
    ) -> Delivery:
        """Deliver a ``passthrough_forward`` (buffered like inbound when flipped)."""
        inst = self._instance(self._resolve(gateway_id))
        return await self._deliver(inst, PassthroughForwardFrame(forward=forward))

    async def inject_interrupt(
        self, session_key: str, chat_id: str = "", *, gateway_id: str | None = None
    ) -> bool:
        """Send ``interrupt_inbound`` to the connected gateway; ``False`` if none (not queued)."""
        inst = self._instance(self._resolve(gateway_id))
        conn = inst.current
        if conn is None or not conn.open:
            return False
        frame = InterruptInbound(session_key=session_key, chat_id=chat_id)
        return await self._write(conn, frame)

    async def send_raw(self, text: str, *, gateway_id: str | None = None) -> bool:
        """Write ``text`` as one message to the connected gateway (malformed-frame tests)."""
        inst = self._instance(self._resolve(gateway_id))
        conn = inst.current
        if conn is None or not conn.open:
            return False
        return await self._write_text(conn, text, None)

    # -- operator controls ----------------------------------------------------------------

    def hold(self, gateway_id: str | None = None) -> None:
        """Flip the instance to buffered-only, as a ``going_idle`` would (no ack is sent).

        Inbound for it is buffered from now on, the live connection (if any) stops
        replaying, and the flip lasts until :meth:`flush` or the next handshake drains the
        buffer empty.
        """
        inst = self._instance(self._resolve(gateway_id))
        inst.buffered_only = True
        inst.poked = False
        if inst.current is not None:
            inst.current.draining = False
        self._changed()

    def flush(self, gateway_id: str | None = None) -> int:
        """Replay the instance's buffer on its live connection now; returns how many wait.

        Entries still leave the buffer only on ``inbound_ack``; once it is empty the
        buffered-only flip is cleared. ``LookupError`` if no gateway is connected (the buffer
        is then replayed after its next handshake anyway).
        """
        gid = self._resolve(gateway_id)
        inst = self._instance(gid)
        conn = inst.current
        if conn is None or not conn.open:
            raise LookupError(f"gateway {gid!r} is not connected")
        conn.draining = True
        self._changed()
        return len(inst.buffer)

    def known_gateways(self) -> list[str]:
        """Every gateway id configured here, in the registry, or seen on a socket, sorted."""
        known = set(self._secrets) | set(self._instances)
        gateways = getattr(self.registry, "gateways", None)
        if isinstance(gateways, Mapping):
            known |= {g for g in gateways if isinstance(g, str)}
        return sorted(known)

    def resolve_gateway(self, gateway_id: str | None = None) -> str:
        """``gateway_id``, or the only gateway known; ``ValueError`` names the choices."""
        return self._resolve(gateway_id)

    def _policy(self, gateway_id: str, platform: str) -> RelevancePolicy | None:
        policy = self.policies.get((gateway_id, platform))
        if policy is None and self.registry is not None:
            policy = RelevancePolicy.coerce(self.registry.policy_for(gateway_id, platform))
        return policy

    async def _deliver(
        self, inst: Instance, frame: BufferedFrame, *, force_buffer: bool = False
    ) -> Delivery:
        conn = inst.current
        connected = conn is not None and conn.open and conn.draining
        if (
            connected
            and conn is not None
            and not (inst.buffered_only or len(inst.buffer) or self.always_buffer or force_buffer)
        ):
            if await self._write(conn, frame):
                return Delivery("live")
            # The socket died under us: keep the message for the next connection (our choice).
        elif not connected and not self.buffer_when_disconnected and not inst.buffered_only:
            log.info("no gateway connected for %r; dropping an injected frame", inst.gateway_id)
            return Delivery("dropped", reason="no gateway connected")
        buffer_id = f"buf-{self._buffer_prefix}-{next(self._buffer_ids)}"
        inst.buffer.append(frame, buffer_id)
        if inst.buffered_only and not inst.poked:
            inst.poked = True
            self._poke(inst)
        # The drain's only work on an append is sending it: done here, without waking it.
        self._noted()
        await self._pump(inst)
        return Delivery("buffered", buffer_id=buffer_id)

    def _poke(self, inst: Instance) -> None:
        if self.registry is None or self.poker is None or self._nursery is None:
            return
        url = self.registry.wake_url_for(inst.gateway_id, None)
        if not url:
            return
        self._pokes.append(url)
        self._nursery.start_soon(self._run_poke, self.poker, inst.gateway_id, url)

    @staticmethod
    async def _run_poke(poker: WakePokerLike, key: str, url: str) -> None:
        try:
            await poker.poke(key, url)
        except Exception as exc:  # best effort: a failed poke never hurts delivery (RC §8)
            log.warning("wake poke failed: %s", exc)


@contextlib.asynccontextmanager
async def open_connector(
    host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[ReferenceConnector]:
    """Run a :class:`ReferenceConnector` (``options`` are its arguments) for a ``with`` block."""
    connector = ReferenceConnector(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, host, port)
        yield connector
        nursery.cancel_scope.cancel()
