"""Stand-ins for dispatcher/reply-policy unit tests.

``FakeLink`` plays the outbound owner at the action level (state, identities, descriptors,
``request``, ``send_nowait``, the chat memory): the test answers each action. ``WireLink``
plays the supervisor under a real :class:`OutboundRouter` (the wire shape is checked).
``MemoryState`` is an in-memory twin of the state interface, used where a test runs under
``autojump_clock``: the real ``StateDB`` works in a worker thread, and a thread the mock
clock cannot see makes autojump fire timers early (``relay_runtime.testing.
autojump_around_threads`` is the way to run the real one under a mock clock). The contract
suite (test_state_contract.py) holds the twin to the real store's behaviour.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from protocol import (
    Action,
    CapabilityDescriptor,
    Frame,
    Identity,
    Inbound,
    InboundAck,
    MessageEvent,
    Outbound,
    OutboundResult,
    RelayProtocolError,
    SessionSource,
    encode_frame,
    placeholder_descriptor,
)
from protocol._results import NOT_CONNECTED, ErrorKind, SendResult
from relay_runtime._outbound import FrameNotEncodable, OutboundRouter, find_identity
from relay_runtime._state import (
    FOLLOW_UP_TTL_S,
    TURN_END_STATES,
    Attempt,
    ClaimHandle,
    ClaimRequest,
    ClaimResult,
    ClaimStatus,
    InboxRecord,
    MessageKey,
    OutboxEntry,
    OutboxFull,
    OutboxKind,
    StateError,
    TurnEndState,
)
from trust import Decision

Responder = Callable[[Action, str | None, str | None], Awaitable[SendResult]]


async def ok(action: Action, platform_raw: str | None, request_id: str | None) -> SendResult:
    """The connector accepted the action."""
    return SendResult.from_wire({"success": True, "message_id": f"m-{request_id}"})


@attrs.define(eq=False)
class Sent:
    """One request the link received."""

    action: Action
    platform_raw: str | None
    request_id: str | None
    at: float


@attrs.define(eq=False)
class FakeLink:
    """The outbound owner as the dispatcher and reply policy see it; the test answers."""

    state: str = "ready"
    descriptor: CapabilityDescriptor = attrs.field(
        factory=lambda: placeholder_descriptor("discord")
    )
    responder: Responder = ok
    requests: list[Sent] = attrs.field(factory=list)
    frames: list[Frame] = attrs.field(factory=list)
    remembered: list[MessageEvent] = attrs.field(factory=list)
    identities: tuple[Identity, ...] = (Identity("discord", "b1"),)

    @property
    def live(self) -> bool:
        return self.state in ("ready", "idle_requested")

    @property
    def acks(self) -> list[str]:
        return [f.buffer_id for f in self.frames if isinstance(f, InboundAck)]

    def identity_for(self, platform_raw: str | None) -> Identity | None:
        return find_identity(self.identities, platform_raw)

    def reply_platform(self, platform_raw: str | None) -> str:
        return platform_raw or self.identities[0].platform

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        return self.descriptor

    async def request(
        self, action: Action, *, platform_raw: str | None = None, request_id: str | None = None
    ) -> SendResult:
        if not self.live:
            return SendResult.failure(NOT_CONNECTED, retryable=True, kind=ErrorKind.NOT_CONNECTED)
        self.requests.append(Sent(action, platform_raw, request_id, trio.current_time()))
        return await self.responder(action, platform_raw, request_id)

    def send_nowait(self, frame: Frame) -> bool:
        if not self.live:
            return False
        self.frames.append(frame)
        return True

    def remember(self, event: MessageEvent) -> None:
        self.remembered.append(event)


@attrs.define(eq=False)
class _Claim:
    keys: list[str]
    state: str = "in_flight"


@attrs.define(eq=False)
class MemoryState:
    """In-memory twin of the state interface (:class:`~relay_runtime._state.StateStore`'s
    ``TurnStore`` and ``OutboxStore`` calls), for tests that run under ``autojump_clock``.

    Its public calls are exactly the interface's; ``tests/runtime/test_state_contract.py``
    runs the same scenarios against it and the real SQLite store, so the twin cannot drift.
    ``claim_batches``, ``turns``, ``inbox`` and ``outbox`` are there to inspect.
    """

    outbox_max: int = 1000
    outbox_ttl_s: float = 86400
    reply_key: bytes = b"k" * 32
    claims: dict[int, _Claim] = attrs.field(factory=dict)
    keys: dict[str, int] = attrs.field(factory=dict)
    turns: dict[int, tuple[str, str]] = attrs.field(factory=dict)
    #: Size of every ``claim_turns`` call, in order.
    claim_batches: list[int] = attrs.field(factory=list)
    #: Frames kept in the inbox, by turn id.
    inbox: dict[int, str] = attrs.field(factory=dict)
    outbox: dict[int, OutboxEntry] = attrs.field(factory=dict)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    # dedupe + turns
    def _claim(self, k_msg: MessageKey | None, k_buf: str | None) -> ClaimResult:
        keys = []
        if k_msg is not None and k_msg[1] and k_msg[2]:
            keys.append(f"msg:{[str(part) for part in k_msg]}")
        if k_buf:
            keys.append(f"buf:{k_buf}")
        if not keys:
            return ClaimResult(ClaimStatus.NEW, None)
        found = [self.keys[k] for k in keys if k in self.keys]
        for cid in found:
            if self.claims[cid].state == "completed":
                return ClaimResult(ClaimStatus.COMPLETED, ClaimHandle(cid))
        if found:
            return ClaimResult(ClaimStatus.IN_FLIGHT, ClaimHandle(found[0]))
        cid = next(self._ids)
        self.claims[cid] = _Claim(keys)
        for k in keys:
            self.keys[k] = cid
        return ClaimResult(ClaimStatus.NEW, ClaimHandle(cid))

    def _release(self, handle: ClaimHandle | None) -> None:
        if handle is None or handle.claim_id not in self.claims:
            return
        claim = self.claims[handle.claim_id]
        if claim.state != "in_flight":
            return
        del self.claims[handle.claim_id]
        for k in claim.keys:
            self.keys.pop(k, None)

    def _end(self, turn_id: int | None, state: str) -> None:
        if turn_id is not None and self.turns.get(turn_id, ("", ""))[1] == "running":
            self.turns[turn_id] = (self.turns[turn_id][0], state)
            self.inbox.pop(turn_id, None)

    async def complete_turn(
        self,
        handle: ClaimHandle | None,
        turn_id: int | None,
        state: TurnEndState,
        now: float,
        error: str | None = None,
        *,
        write_behind: bool = False,
    ) -> None:
        await trio.lowlevel.checkpoint()
        if state not in TURN_END_STATES:
            raise StateError(f"turn end state must be one of {sorted(TURN_END_STATES)}")
        if handle is not None and handle.claim_id in self.claims:
            self.claims[handle.claim_id].state = "completed"
        self._end(turn_id, state)

    async def release_turn(
        self, handle: ClaimHandle | None, turn_id: int | None, now: float
    ) -> None:
        await trio.lowlevel.checkpoint()
        self._release(handle)
        self._end(turn_id, "cancelled")

    async def claim_turns(
        self, requests: Sequence[ClaimRequest], now: float
    ) -> list[tuple[ClaimResult, int | None]]:
        await trio.lowlevel.checkpoint()
        self.claim_batches.append(len(requests))
        results: list[tuple[ClaimResult, int | None]] = []
        for r in requests:
            result = self._claim(r.k_msg, r.k_buf)
            turn_id = None
            if result.status is ClaimStatus.NEW:
                turn_id = next(self._ids)
                self.turns[turn_id] = (r.session_key, "running")
                if r.inbound is not None:
                    self.inbox[turn_id] = r.inbound
            results.append((result, turn_id))
        return results

    async def inbox_frames(self, turn_ids: Sequence[int]) -> dict[int, str]:
        await trio.lowlevel.checkpoint()
        return {t: self.inbox[t] for t in turn_ids if t in self.inbox}

    def take_resumable(self) -> list[InboxRecord]:
        return []  # nothing survives this twin: no process before this one

    async def claim_resumed(self, records: Sequence[InboxRecord], now: float) -> list[ClaimResult]:
        await trio.lowlevel.checkpoint()
        results = []
        for r in records:
            result = self._claim(r.k_msg, None)
            if result.status is not ClaimStatus.NEW:
                self._end(r.turn_id, "crashed")
            results.append(result)
        return results

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_queued(self) -> None:
        await trio.sleep_forever()  # nothing is ever written behind here

    async def release_unstarted(self, handle: ClaimHandle | None, turn_id: int | None) -> None:
        await trio.lowlevel.checkpoint()
        self._release(handle)
        if turn_id is not None and self.turns.get(turn_id, ("", ""))[1] == "running":
            del self.turns[turn_id]
            self.inbox.pop(turn_id, None)

    def turn_states(self) -> list[str]:
        return [state for _, state in self.turns.values()]

    # outbox
    async def put(
        self,
        identity_platform: str,
        identity_bot_id: str,
        action_json: str,
        request_id: str,
        kind: OutboxKind,
        now: float,
    ) -> int:
        await trio.lowlevel.checkpoint()
        await self.expire(now)
        if len(self.outbox) >= self.outbox_max:
            raise OutboxFull(self.outbox_max)
        if kind not in ("send", "follow_up"):
            raise StateError(f"outbox kind must be 'send' or 'follow_up', got {kind!r}")
        ttl = self.outbox_ttl_s if kind == "send" else FOLLOW_UP_TTL_S
        oid = next(self._ids)
        self.outbox[oid] = OutboxEntry(
            oid,
            identity_platform,
            identity_bot_id,
            action_json,
            request_id,
            kind,
            now,
            now + ttl,
            0,
        )
        return oid

    async def entries(self) -> list[OutboxEntry]:
        await trio.lowlevel.checkpoint()
        return sorted(self.outbox.values(), key=lambda e: e.id)

    async def peek_batch(self, now: float, limit: int) -> list[OutboxEntry]:
        await trio.lowlevel.checkpoint()
        live = sorted((e for e in self.outbox.values() if e.expires_at > now), key=lambda e: e.id)
        return live[:limit]

    async def delete(self, outbox_id: int) -> bool:
        await trio.lowlevel.checkpoint()
        return self.outbox.pop(outbox_id, None) is not None

    async def delete_many(self, outbox_ids: list[int]) -> list[int]:
        await trio.lowlevel.checkpoint()
        return [i for i in outbox_ids if self.outbox.pop(i, None) is not None]

    async def bump_attempts(self, outbox_id: int) -> Attempt:
        await trio.lowlevel.checkpoint()
        entry = self.outbox.get(outbox_id)
        if entry is None:
            return Attempt(0, False)
        entry = attrs.evolve(entry, attempts=entry.attempts + 1)
        if entry.attempts >= 5:
            del self.outbox[outbox_id]
            return Attempt(entry.attempts, True)
        self.outbox[outbox_id] = entry
        return Attempt(entry.attempts, False)

    async def expire(self, now: float) -> list[OutboxEntry]:
        await trio.lowlevel.checkpoint()
        gone = [e for e in self.outbox.values() if e.expires_at <= now]
        for e in gone:
            del self.outbox[e.id]
        return gone

    async def count(self) -> int:
        await trio.lowlevel.checkpoint()
        return len(self.outbox)


@attrs.define(eq=False)
class Verdict:
    """A scripted trust evaluator: allow everyone unless told otherwise."""

    allow: bool = True
    run_agent: bool = True
    reply: str | None = None
    seen: list[MessageEvent] = attrs.field(factory=list)

    @property
    def decision(self) -> Decision:
        return Decision(allow=self.allow, reason="test", tier="rule")

    async def evaluate(self, event: MessageEvent) -> Verdict:
        self.seen.append(event)
        return self


def inbound(
    text: str = "hi",
    *,
    chat: str = "c1",
    user: str = "u1",
    message_id: str | None = None,
    buffer_id: str | None = None,
    platform: str = "discord",
    chat_type: str = "group",
    guild: str | None = None,
    **event_fields: Any,
) -> Inbound:
    """An ``inbound`` frame as the reader delivers it (stamped ``delivered_via_relay``)."""
    source = SessionSource(
        platform=platform, chat_id=chat, chat_type=chat_type, user_id=user, guild_id=guild
    )
    event = MessageEvent(
        text=text,
        source=source,
        message_id=message_id,
        delivered_via_relay=True,
        **event_fields,
    )
    return Inbound(event=event, buffer_id=buffer_id)


WireAnswer = Callable[[dict[str, Any]], dict[str, Any] | None]


@attrs.define(eq=False)
class WireLink:
    """The supervisor under the real :class:`OutboundRouter` (``router``): a fake socket
    that answers each frame at once.

    ``written`` holds every ``outbound`` frame as the connector would read it (parsed JSON),
    so tests can check the exact wire shape. ``answer`` maps a frame to its ``result``
    (``None``: no answer, the request then waits for its timeout).
    """

    identities: tuple[Identity, ...] = (Identity("discord", "b1"),)
    state: str = "ready"
    descriptors: dict[str, CapabilityDescriptor] = attrs.field(factory=dict)
    answer: WireAnswer = lambda frame: {"success": True, "message_id": "m1"}
    written: list[dict[str, Any]] = attrs.field(factory=list)
    frames: list[Frame] = attrs.field(factory=list)
    router: OutboundRouter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.router = OutboundRouter(self, identities=self.identities, outbound_timeout_s=30.0)

    @property
    def live(self) -> bool:
        return self.state in ("ready", "idle_requested")

    def descriptor_for(self, platform: str) -> CapabilityDescriptor:
        platform = platform or self.identities[0].platform  # "" = the default one
        return self.descriptors.get(platform) or placeholder_descriptor(platform)

    async def send(self, outbound: Outbound) -> str | None:
        if not self.live:  # as RelayConnection.send refuses
            raise RelayProtocolError(f"cannot send outbound in state {self.state}")
        try:
            text = encode_frame(outbound)
        except (TypeError, ValueError) as exc:
            raise FrameNotEncodable(str(exc)) from exc
        await trio.lowlevel.checkpoint()
        frame = json.loads(text)
        self.written.append(frame)
        result = self.answer(frame)
        if result is not None:
            self.router.resolve(OutboundResult(request_id=frame["requestId"], result=result))
        return None

    def send_nowait(self, frame: Frame) -> bool:
        self.frames.append(frame)
        return self.live


def wire_link(*identities: Identity, **kwargs: Any) -> WireLink:
    """A :class:`WireLink` for ``identities`` (default: one ``discord`` identity)."""
    return WireLink(identities or (Identity("discord", "b1"),), **kwargs)
