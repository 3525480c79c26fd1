"""The generated readers (structure functions) of every contract type, frames included.

Inbound events and their sources keep an all-text fast path in front of the generated
reader: the typical frame has only text and nulls, and needs no per-field coercion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from protocol import _fields as f
from protocol._actions import ACTION_TYPES, Action, Edit, FollowUp, GetChatInfo, Send, Typing
from protocol._descriptor import CapabilityDescriptor
from protocol._errors import FieldError
from protocol._events import MESSAGE_TYPES, MessageEvent, SessionSource
from protocol._frames import (
    DescriptorFrame,
    Frame,
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
from protocol._generate import SKIP, read, structurer

# -- SessionSource / MessageEvent ---------------------------------------------------------------

_W = "source"
_source_fields: dict[str, Any] = {
    "platform_raw": read(f.platform_name(_W, "platform"), "platform"),
    "chat_id": read(f.text_or(_W, "chat_id", "")),
    "chat_name": read(f.opt_text(_W, "chat_name")),
    "chat_type": read(f.text_or(_W, "chat_type", "dm")),
    **{k: read(f.opt_text(_W, k)) for k in ("user_id", "user_name", "thread_id", "chat_topic")},
    **{
        k: read(f.truthy_text(_W, k))
        for k in ("user_id_alt", "chat_id_alt", "guild_id", "parent_chat_id", "message_id")
    },
    "profile": read(f.truthy_text(_W, "profile")),
    "is_bot": SKIP,
}
_source_general = structurer(SessionSource, _W, none_is_empty=True, **_source_fields)
_scope_id = f.truthy_text(_W, "scope_id")


def _all_text(d: Mapping[str, Any]) -> bool:
    """Whether every value is text or null, so no field needs coercion (the common case)."""
    for value in d.values():  # noqa: SIM110 - a plain loop beats all() on this hot path
        if value is not None and type(value) is not str:
            return False
    return True


def structure_source(obj: Any, _: Any = None) -> SessionSource:
    # A dict (every decoded frame's) is checked first: ``isinstance`` against the
    # ``Mapping`` ABC goes through ``ABCMeta.__instancecheck__`` (Python calls) per frame.
    d = obj if type(obj) is dict or isinstance(obj, Mapping) else {}
    if not d:
        return SessionSource()
    if _all_text(d):
        get = d.get
        platform = get("platform")
        # The all-text fast path, positional in field order: 14 keyword arguments (or the
        # generated reader's kwargs dict) cost ~0.45 us per frame here.
        return SessionSource(
            platform.strip().lower() if platform else "",
            get("chat_id") or "",
            get("chat_name"),
            get("chat_type") or "dm",
            get("user_id"),
            get("user_name"),
            get("thread_id"),
            get("chat_topic"),
            get("user_id_alt"),
            get("chat_id_alt"),
            get("guild_id") or get("scope_id"),
            get("parent_chat_id"),
            get("message_id"),
            get("profile"),
        )
    source = _source_general(d)
    if source.guild_id is None and "scope_id" in d:
        source = attrs.evolve(source, guild_id=_scope_id(d["scope_id"]))
    return source


_W = "event"
_event_general = structurer(
    MessageEvent,
    _W,
    none_is_empty=True,
    text=read(f.text_or(_W, "text", "")),
    message_type=read(f.message_type),
    source=read(structure_source),
    message_id=read(f.opt_text(_W, "message_id")),
    reply_to_message_id=read(f.opt_text(_W, "reply_to_message_id")),
    media_urls=read(f.media_urls),
    delivered_via_relay=SKIP,
)


def structure_event(obj: Any, _: Any = None, *, via_relay: bool = False) -> MessageEvent:
    if type(obj) is dict:
        get = obj.get
        text, message_id, reply_to = get("text"), get("message_id"), get("reply_to_message_id")
        if (
            type(text) is str
            and (message_id is None or type(message_id) is str)
            and (reply_to is None or type(reply_to) is str)
        ):
            message_type = get("message_type")
            media = get("media_urls")
            return MessageEvent(
                text,
                message_type
                if type(message_type) is str and message_type in MESSAGE_TYPES
                else "text",
                structure_source(get("source")),
                message_id,
                reply_to,
                f.media_urls(media) if media else (),
                via_relay,
            )
    event = _event_general(obj)
    return attrs.evolve(event, delivered_via_relay=True) if via_relay else event


def _structure_relayed_event(obj: Any, _: Any = None) -> MessageEvent:
    return structure_event(obj, via_relay=True)


# -- CapabilityDescriptor and PassthroughForward ------------------------------------------------

_descriptor_fields: dict[str, Any] = {
    "contract_version": read(f.contract_version),
    **{k: read(f.descriptor_text(k)) for k in ("platform", "label", "markdown_dialect")},
    "len_unit": read(f.len_unit),
    "max_message_length": read(f.max_message_length),
    **{
        k: read(f.flag(k, required=True))
        for k in ("supports_draft_streaming", "supports_edit", "supports_threads")
    },
    "emoji": read(f.text_else("\U0001f50c")),
    "platform_hint": read(f.text_else("")),
    **{
        k: read(f.flag(k, required=False))
        for k in (
            "pii_safe",
            "supports_context",
            "supports_inchannel_continuable",
            "supports_block_formatting",
        )
    },
    "supported_ops": read(f.supported_ops),
}
structure_descriptor = structurer(
    CapabilityDescriptor,
    "descriptor",
    absent={
        "max_message_length": FieldError("descriptor.max_message_length", "missing required field")
    },
    **_descriptor_fields,
)

_W = "forward"
structure_forward = structurer(
    PassthroughForward,
    _W,
    platform=read(f.platform_name(_W, "platform")),
    bot_id=read(f.text_or(_W, "botId", ""), "botId"),
    method=read(f.text_or(_W, "method", "")),
    path=read(f.text_or(_W, "path", "")),
    headers=read(f.headers),
    body=read(f.body, "bodyB64"),
    profile=read(f.truthy_text(_W, "profile")),
)

# -- actions ------------------------------------------------------------------------------------

_W = "action"
_content = read(f.text_or(_W, "content", ""))
_meta = read(f.metadata(_W))


def _req(key: str) -> Any:
    return read(f.required_text(_W, key))


_action_structure: dict[type[Any], Callable[..., Action]] = {
    Send: structurer(
        Send,
        _W,
        chat_id=_req("chat_id"),
        content=_content,
        reply_to=read(f.opt_text(_W, "reply_to")),
        metadata=_meta,
    ),
    Edit: structurer(
        Edit,
        _W,
        chat_id=_req("chat_id"),
        message_id=_req("message_id"),
        content=_content,
        metadata=_meta,
    ),
    Typing: structurer(Typing, _W, chat_id=_req("chat_id"), metadata=_meta),
    FollowUp: structurer(
        FollowUp,
        _W,
        session_key=_req("session_key"),
        kind=_req("kind"),
        content=_content,
        metadata=_meta,
    ),
    GetChatInfo: structurer(GetChatInfo, _W, chat_id=_req("chat_id")),
}


def structure_action(obj: Any, _: Any = None) -> Action:
    if type(obj) is not dict and not isinstance(obj, Mapping):  # a dict first: no ABC check
        raise FieldError("action", f"must be an object, not {type(obj).__name__}")
    op = obj.get("op")
    if not isinstance(op, str):
        raise FieldError("action.op", "missing required text field")
    cls = ACTION_TYPES.get(op)
    if cls is None:
        raise FieldError("action.op", f"unknown op {op!r}")
    return _action_structure[cls](obj)


# -- frames -------------------------------------------------------------------------------------

_inbound_general = structurer(
    Inbound,
    "inbound",
    event=read(_structure_relayed_event),
    buffer_id=read(f.truthy_text("inbound", "bufferId"), "bufferId"),
)


def structure_inbound(obj: Any, _: Any = None) -> Inbound:
    """An ``inbound`` frame; a dict whose ``bufferId`` is text or absent reads directly.

    The generated reader's wrapper and per-field hooks cost ~1 us per frame on the
    gateway's main thread; what they would do for such a dict is what this does.
    """
    if type(obj) is dict:
        buffer_id = obj.get("bufferId")
        if buffer_id is None or type(buffer_id) is str:
            return Inbound(structure_event(obj.get("event"), via_relay=True), buffer_id or None)
    return _inbound_general(obj)


_outbound_result_general = structurer(
    OutboundResult,
    "outbound_result",
    request_id=read(f.required_text("", "requestId"), "requestId"),
    result=read(f.result_object),
)


def structure_outbound_result(obj: Any, _: Any = None) -> OutboundResult:
    """An ``outbound_result``; a dict with a text ``requestId`` and an object ``result``
    (the connector's every answer) reads directly, anything else by the generated reader."""
    if type(obj) is dict:
        request_id, result = obj.get("requestId"), obj.get("result")
        if type(request_id) is str and type(result) is dict:
            return OutboundResult(request_id, result)
    return _outbound_result_general(obj)


FRAME_READERS: dict[type[Any], Callable[..., Frame]] = {
    Hello: structurer(
        Hello,
        "hello",
        platform=read(f.required_text("", "platform")),
        bot_id=read(f.text_or("", "botId", ""), "botId"),
    ),
    Outbound: structurer(
        Outbound,
        "outbound",
        request_id=read(f.required_text("", "requestId"), "requestId"),
        action=read(structure_action),
        platform=read(f.truthy_text("", "platform")),
        bot_id=read(f.truthy_text("", "botId"), "botId"),
    ),
    Interrupt: structurer(
        Interrupt,
        "interrupt",
        session_key=read(f.required_text("", "session_key")),
        reason=read(f.opt_text("", "reason")),
    ),
    GoingIdle: structurer(GoingIdle, "going_idle"),
    InboundAck: structurer(
        InboundAck, "inbound_ack", buffer_id=read(f.required_text("", "bufferId"), "bufferId")
    ),
    DescriptorFrame: structurer(
        DescriptorFrame, "descriptor", descriptor=read(structure_descriptor)
    ),
    Inbound: structure_inbound,
    OutboundResult: structure_outbound_result,
    InterruptInbound: structurer(
        InterruptInbound,
        "interrupt_inbound",
        session_key=read(f.text_or("", "session_key", "")),
        chat_id=read(f.text_or("", "chat_id", "")),
    ),
    PassthroughForwardFrame: structurer(
        PassthroughForwardFrame,
        "passthrough_forward",
        forward=read(structure_forward),
        buffer_id=read(f.truthy_text("passthrough_forward", "bufferId"), "bufferId"),
    ),
    GoingIdleAck: structurer(GoingIdleAck, "going_idle_ack"),
}
