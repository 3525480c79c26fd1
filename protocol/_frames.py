"""Every frame of the relay contract v1, in both directions (RC §3.1, §3.2, §4.5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from protocol._actions import Action
from protocol._descriptor import CapabilityDescriptor
from protocol._events import MessageEvent, absent_if_empty

# -- gateway -> connector -------------------------------------------------------------------


@attrs.frozen
class Hello:
    """Announces one fronted identity; sent first on every dial, once per identity."""

    TYPE: ClassVar[str] = "hello"
    platform: str
    bot_id: str = ""


@attrs.frozen
class Outbound:
    """Asks the connector to perform an action; answered by an ``outbound_result``.

    ``platform``/``bot_id`` tag the target identity on multi-identity gateways (RC §3.1);
    single-identity gateways leave both ``None``. An empty ``bot_id`` is stored as ``None``.
    """

    TYPE: ClassVar[str] = "outbound"
    request_id: str
    action: Action
    platform: str | None = None
    bot_id: str | None = attrs.field(default=None, converter=absent_if_empty)


@attrs.frozen
class Interrupt:
    """Asks the connector to route a ``/stop`` to the instance running ``session_key``."""

    TYPE: ClassVar[str] = "interrupt"
    session_key: str
    reason: str | None = None


@attrs.frozen
class GoingIdle:
    """Asks the connector to buffer this instance's inbound; answered by ``going_idle_ack``."""

    TYPE: ClassVar[str] = "going_idle"


@attrs.frozen
class InboundAck:
    """Confirms a buffered delivery was durably handed off; the connector may drop it."""

    TYPE: ClassVar[str] = "inbound_ack"
    buffer_id: str


# -- connector -> gateway -------------------------------------------------------------------


@attrs.frozen
class DescriptorFrame:
    """The connector's answer to a ``hello``: one platform's capabilities."""

    TYPE: ClassVar[str] = "descriptor"
    descriptor: CapabilityDescriptor


@attrs.frozen
class Inbound:
    """A normalized message; ``buffer_id`` marks a replay from the connector's buffer.

    An empty ``buffer_id`` is stored as ``None`` (the wire field counts only when non-empty).
    """

    TYPE: ClassVar[str] = "inbound"
    event: MessageEvent
    buffer_id: str | None = attrs.field(default=None, converter=absent_if_empty)


@attrs.frozen
class OutboundResult:
    """The answer to one ``outbound``; ``result`` is the connector's raw result object."""

    TYPE: ClassVar[str] = "outbound_result"
    request_id: str
    result: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class InterruptInbound:
    """Asks the gateway to cancel the running turn of ``session_key``."""

    TYPE: ClassVar[str] = "interrupt_inbound"
    session_key: str = ""
    chat_id: str = ""


@attrs.frozen
class PassthroughForward:
    """A platform request the connector verified, acknowledged and stripped at its edge.

    Discord interactions arrive this way; ``body`` is the decoded ``bodyB64`` (``b""`` when
    absent or malformed) and ``headers`` keep their arrival order.
    """

    platform: str = ""
    bot_id: str = ""
    method: str = ""
    path: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    profile: str | None = attrs.field(default=None, converter=absent_if_empty)


@attrs.frozen
class PassthroughForwardFrame:
    """Carries a :class:`PassthroughForward`; ``buffer_id`` as for :class:`Inbound`."""

    TYPE: ClassVar[str] = "passthrough_forward"
    forward: PassthroughForward
    buffer_id: str | None = attrs.field(default=None, converter=absent_if_empty)


@attrs.frozen
class GoingIdleAck:
    """The connector has flipped this instance to buffered-only delivery."""

    TYPE: ClassVar[str] = "going_idle_ack"


GatewayFrame = Hello | Outbound | Interrupt | GoingIdle | InboundAck
ConnectorFrame = (
    DescriptorFrame
    | Inbound
    | OutboundResult
    | InterruptInbound
    | PassthroughForwardFrame
    | GoingIdleAck
)
Frame = GatewayFrame | ConnectorFrame

FRAME_TYPES: dict[str, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Outbound,
        Interrupt,
        GoingIdle,
        InboundAck,
        DescriptorFrame,
        Inbound,
        OutboundResult,
        InterruptInbound,
        PassthroughForwardFrame,
        GoingIdleAck,
    )
}
