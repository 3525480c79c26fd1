"""The generated writers (unstructure functions) of every contract type, frames included.

Key order is the contract's: a frame's ``type`` (an action's ``op``) first, then the fields
in class order, the keys written only when set last.
"""

from __future__ import annotations

import base64
from typing import Any

from protocol._actions import ACTION_TYPES
from protocol._descriptor import CapabilityDescriptor
from protocol._events import MessageEvent, SessionSource
from protocol._frames import (
    DescriptorFrame,
    GoingIdle,
    GoingIdleAck,
    Hello,
    Inbound,
    InboundAck,
    Interrupt,
    InterruptInbound,
    Outbound,
    OutboundResult,
    PassthroughForward,
    PassthroughForwardFrame,
)
from protocol._generate import SKIP, JSONDict, Unstructure, unstructurer, write

#: Frames write their ``TYPE`` constant first, as ``type``.
_TYPE = ("type", "TYPE")

_TRUTHY_IDS = ("user_id_alt", "chat_id_alt", "guild_id", "parent_chat_id", "message_id", "profile")
unstructure_source = unstructurer(
    SessionSource,
    platform_raw=write("platform", lambda p: p or "relay"),
    is_bot=SKIP,
    **{k: write(omit_if_default=True) for k in _TRUTHY_IDS},
)
unstructure_event = unstructurer(
    MessageEvent,
    source=write(hook=unstructure_source),
    media_urls=write(hook=list),
    delivered_via_relay=SKIP,
)
unstructure_descriptor = unstructurer(CapabilityDescriptor, supported_ops=write(hook=list))


def _base64(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


unstructure_forward = unstructurer(
    PassthroughForward,
    bot_id=write("botId"),
    headers=write(hook=lambda pairs: [[k, v] for k, v in pairs]),
    body=write("bodyB64", _base64),
    profile=write(omit_if_default=True),
)
ACTION_WRITERS: dict[type[Any], Unstructure] = {
    cls: unstructurer(cls, ("op", "OP")) for cls in ACTION_TYPES.values()
}
_untagged_outbound = unstructurer(
    Outbound,
    _TYPE,
    request_id=write("requestId"),
    action=write(hook=lambda a: ACTION_WRITERS[a.__class__](a)),
    platform=write(omit_if_default=True),
    bot_id=SKIP,
)


def _unstructure_outbound(frame: Outbound) -> JSONDict:
    out = _untagged_outbound(frame)
    # botId travels only with a platform tag (RC §3.1).
    if frame.platform is not None and frame.bot_id:
        out["botId"] = frame.bot_id
    return out


FRAME_WRITERS: dict[type[Any], Unstructure] = {
    Hello: unstructurer(Hello, _TYPE, bot_id=write("botId")),
    Outbound: _unstructure_outbound,
    Interrupt: unstructurer(Interrupt, _TYPE),
    GoingIdle: unstructurer(GoingIdle, _TYPE),
    InboundAck: unstructurer(InboundAck, _TYPE, buffer_id=write("bufferId")),
    DescriptorFrame: unstructurer(
        DescriptorFrame,
        _TYPE,
        descriptor=write(hook=unstructure_descriptor),
    ),
    Inbound: unstructurer(
        Inbound,
        _TYPE,
        event=write(hook=unstructure_event),
        buffer_id=write("bufferId", omit_if_default=True),
    ),
    OutboundResult: unstructurer(
        OutboundResult,
        _TYPE,
        request_id=write("requestId"),
        result=write(hook=dict),
    ),
    InterruptInbound: unstructurer(InterruptInbound, _TYPE),
    PassthroughForwardFrame: unstructurer(
        PassthroughForwardFrame,
        _TYPE,
        forward=write(hook=unstructure_forward),
        buffer_id=write("bufferId", omit_if_default=True),
    ),
    GoingIdleAck: unstructurer(GoingIdleAck, _TYPE),
}
