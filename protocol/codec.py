"""The one converter between wire JSON and the attrs types of the contract.

Every (un)structuring of a contract type goes through :data:`converter`. Its hooks are
written out by hand because the contract's rules are per field: exact key names and order,
keys present only when truthy, ``null`` read as absent, a JSON number in a string field read
as its decimal text, and a precise error naming any required field that is missing.
Soft problems (a boolean where text was expected, a non-boolean descriptor flag) are logged
as warnings on the ``relay.protocol`` logger and read as the field's default.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import cattrs

from protocol.actions import ACTION_TYPES, Action, Edit, FollowUp, GetChatInfo, Send, Typing
from protocol.descriptor import (
    CONTRACT_VERSION,
    DEFAULT_MAX_MESSAGE_LENGTH,
    CapabilityDescriptor,
)
from protocol.errors import FieldError, FrameError
from protocol.events import MESSAGE_TYPES, MessageEvent, SessionSource
from protocol.frames import (
    FRAME_TYPES,
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
from protocol.results import MALFORMED_RESULT

log = logging.getLogger("relay.protocol")

JSONDict = dict[str, Any]
T = TypeVar("T")

converter = cattrs.Converter()
"""The converter for every contract type (frames, actions, events, descriptors)."""

# -- reading helpers --------------------------------------------------------------------------


def _opt_str(d: Mapping[str, Any], key: str, where: str) -> str | None:
    """A string field: absent/null -> None; a number -> its decimal text; else warn, None."""
    value = d.get(key)
    kind = type(value)
    if kind is str:
        return value
    if value is None:
        return None
    if kind is int or kind is float:
        return str(value)
    log.warning("relay: ignoring non-text %s.%s (%s)", where, key, kind.__name__)
    return None


def _req_str(d: Mapping[str, Any], key: str, where: str) -> str:
    value = _opt_str(d, key, where)
    if value is None:
        raise FieldError(f"{where}.{key}" if where else key, "missing required text field")
    return value


def _truthy_str(d: Mapping[str, Any], key: str, where: str) -> str | None:
    """An optional field that only counts when non-empty."""
    return _opt_str(d, key, where) or None


def _object(value: Any, field: str, *, default_empty: bool = True) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if value is None and default_empty:
        return {}
    raise FieldError(field, f"must be an object, not {type(value).__name__}")


def _metadata(d: Mapping[str, Any], where: str) -> JSONDict:
    value = d.get("metadata")
    if isinstance(value, dict):
        return value
    if value is not None:
        log.warning("relay: ignoring non-object %s.metadata", where)
    return {}


# -- SessionSource / MessageEvent ---------------------------------------------------------------


def _all_text(d: Mapping[str, Any]) -> bool:
    """Whether every value is text or null, so no field needs coercion (the common case)."""
    for value in d.values():  # noqa: SIM110 - a plain loop beats all() on this hot path
        if value is not None and type(value) is not str:
            return False
    return True


def _structure_source(obj: Any, _: Any = None) -> SessionSource:
    d = obj if isinstance(obj, Mapping) else {}
    if not d:
        return SessionSource()
    if _all_text(d):
        get = d.get
        platform = get("platform")
        # Positional, in field order: 14 keyword arguments cost ~0.45 us per frame here.
        return SessionSource(
            platform.strip().lower() if platform else "",
            get("chat_id") or "",
            get("chat_name"),
            get("chat_type") or "dm",
            get("user_id"),
            get("user_name"),
            get("thread_id"),
            get("chat_topic"),
            get("user_id_alt") or None,
            get("chat_id_alt") or None,
            get("guild_id") or get("scope_id") or None,
            get("parent_chat_id") or None,
            get("message_id") or None,
            get("profile") or None,
        )
    w = "source"
    platform = _opt_str(d, "platform", w)
    return SessionSource(
        platform=platform.strip().lower() if platform else "",
        chat_id=_opt_str(d, "chat_id", w) or "",
        chat_name=_opt_str(d, "chat_name", w),
        chat_type=_opt_str(d, "chat_type", w) or "dm",
        user_id=_opt_str(d, "user_id", w),
        user_name=_opt_str(d, "user_name", w),
        thread_id=_opt_str(d, "thread_id", w),
        chat_topic=_opt_str(d, "chat_topic", w),
        user_id_alt=_truthy_str(d, "user_id_alt", w),
        chat_id_alt=_truthy_str(d, "chat_id_alt", w),
        guild_id=_truthy_str(d, "guild_id", w) or _truthy_str(d, "scope_id", w),
        parent_chat_id=_truthy_str(d, "parent_chat_id", w),
        message_id=_truthy_str(d, "message_id", w),
        profile=_truthy_str(d, "profile", w),
    )


def _unstructure_source(s: SessionSource) -> JSONDict:
    out: JSONDict = {
        "platform": s.platform_raw or "relay",
        "chat_id": s.chat_id,
        "chat_name": s.chat_name,
        "chat_type": s.chat_type,
        "user_id": s.user_id,
        "user_name": s.user_name,
        "thread_id": s.thread_id,
        "chat_topic": s.chat_topic,
    }
    if s.user_id_alt:
        out["user_id_alt"] = s.user_id_alt
    if s.chat_id_alt:
        out["chat_id_alt"] = s.chat_id_alt
    if s.guild_id:
        out["guild_id"] = s.guild_id
    if s.parent_chat_id:
        out["parent_chat_id"] = s.parent_chat_id
    if s.message_id:
        out["message_id"] = s.message_id
    if s.profile:
        out["profile"] = s.profile
    return out


def _message_type(value: Any) -> str:
    """A v1 ``message_type``; anything else (including non-text) reads as ``text``."""
    return value if type(value) is str and value in MESSAGE_TYPES else "text"


def _media_urls(d: Mapping[str, Any]) -> tuple[str, ...]:
    value = d.get("media_urls")
    if not value:
        return ()
    if not isinstance(value, list):
        log.warning("relay: ignoring non-list event.media_urls")
        return ()
    return tuple(u for u in value if isinstance(u, str))


def _structure_event(obj: Any, _: Any = None, *, via_relay: bool = False) -> MessageEvent:
    d = obj if type(obj) is dict else _object(obj, "event")
    get = d.get
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
            _message_type(message_type),
            _structure_source(get("source")),
            message_id,
            reply_to,
            _media_urls(d) if media else (),
            via_relay,
        )
    w = "event"
    message_type = d.get("message_type")
    return MessageEvent(
        text=_opt_str(d, "text", w) or "",
        message_type=_message_type(message_type),
        source=_structure_source(d.get("source")),
        message_id=_opt_str(d, "message_id", w),
        reply_to_message_id=_opt_str(d, "reply_to_message_id", w),
        media_urls=_media_urls(d),
        delivered_via_relay=via_relay,
    )


def _unstructure_event(e: MessageEvent) -> JSONDict:
    return {
        "text": e.text,
        "message_type": e.message_type,
        "source": _unstructure_source(e.source),
        "message_id": e.message_id,
        "reply_to_message_id": e.reply_to_message_id,
        "media_urls": list(e.media_urls),
    }


# -- CapabilityDescriptor -----------------------------------------------------------------------

_DESCRIPTOR_TEXT = ("platform", "label", "markdown_dialect", "len_unit")
_DESCRIPTOR_FLAGS = ("supports_draft_streaming", "supports_edit", "supports_threads")
_DESCRIPTOR_OPTIONAL_FLAGS = (
    "pii_safe",
    "supports_context",
    "supports_inchannel_continuable",
    "supports_block_formatting",
)


def _flag(d: Mapping[str, Any], key: str, *, required: bool) -> bool:
    value = d.get(key)
    if value is None:
        if required:
            raise FieldError(f"descriptor.{key}", "missing required field")
        return False
    if isinstance(value, bool):
        return value
    log.warning("relay: descriptor.%s is not a boolean (%r); reading it as false", key, value)
    return False


def _max_length(d: Mapping[str, Any]) -> int:
    if "max_message_length" not in d:
        raise FieldError("descriptor.max_message_length", "missing required field")
    value = d["max_message_length"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DEFAULT_MAX_MESSAGE_LENGTH
    if isinstance(value, float) and not value.is_integer():
        return DEFAULT_MAX_MESSAGE_LENGTH
    n = int(value)
    return n if n > 0 else DEFAULT_MAX_MESSAGE_LENGTH


def _structure_descriptor(obj: Any, _: Any = None) -> CapabilityDescriptor:
    d = _object(obj, "descriptor", default_empty=False)
    version = d.get("contract_version")
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if version is None:
        raise FieldError("descriptor.contract_version", "missing required field")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FieldError("descriptor.contract_version", f"must be an integer >= 1, not {version!r}")
    if version > CONTRACT_VERSION:
        log.warning(
            "relay: descriptor contract_version %d > %d; using v%d semantics",
            version,
            CONTRACT_VERSION,
            CONTRACT_VERSION,
        )
    texts: dict[str, str] = {}
    for key in _DESCRIPTOR_TEXT:
        value = d.get(key)
        if value is None:
            raise FieldError(f"descriptor.{key}", "missing required field")
        if not isinstance(value, str):
            raise FieldError(f"descriptor.{key}", f"must be text, not {type(value).__name__}")
        texts[key] = value
    ops = d.get("supported_ops")
    if ops is None:
        ops = []
    elif not isinstance(ops, list):
        log.warning("relay: ignoring non-list descriptor.supported_ops")
        ops = []
    emoji = d.get("emoji")
    hint = d.get("platform_hint")
    return CapabilityDescriptor(
        contract_version=version,
        platform=texts["platform"],
        label=texts["label"],
        max_message_length=_max_length(d),
        supports_draft_streaming=_flag(d, "supports_draft_streaming", required=True),
        supports_edit=_flag(d, "supports_edit", required=True),
        supports_threads=_flag(d, "supports_threads", required=True),
        markdown_dialect=texts["markdown_dialect"],
        len_unit=texts["len_unit"] if texts["len_unit"] in ("chars", "utf16") else "chars",
        emoji=emoji if isinstance(emoji, str) else "\U0001f50c",
        platform_hint=hint if isinstance(hint, str) else "",
        pii_safe=_flag(d, "pii_safe", required=False),
        supports_context=_flag(d, "supports_context", required=False),
        supports_inchannel_continuable=_flag(d, "supports_inchannel_continuable", required=False),
        supports_block_formatting=_flag(d, "supports_block_formatting", required=False),
        supported_ops=tuple(op for op in ops if isinstance(op, str)),
    )


def _unstructure_descriptor(c: CapabilityDescriptor) -> JSONDict:
    return {
        "contract_version": c.contract_version,
        "platform": c.platform,
        "label": c.label,
        "max_message_length": c.max_message_length,
        "supports_draft_streaming": c.supports_draft_streaming,
        "supports_edit": c.supports_edit,
        "supports_threads": c.supports_threads,
        "markdown_dialect": c.markdown_dialect,
        "len_unit": c.len_unit,
        "emoji": c.emoji,
        "platform_hint": c.platform_hint,
        "pii_safe": c.pii_safe,
        "supports_context": c.supports_context,
        "supports_inchannel_continuable": c.supports_inchannel_continuable,
        "supports_block_formatting": c.supports_block_formatting,
        "supported_ops": list(c.supported_ops),
    }


# -- PassthroughForward -------------------------------------------------------------------------


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        return ()
    pairs: list[tuple[str, str]] = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            continue
        k, v = pair
        if all(isinstance(x, str | int | float) and not isinstance(x, bool) for x in (k, v)):
            pairs.append((str(k), str(v)))
    return tuple(pairs)


def _body(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _structure_forward(obj: Any, _: Any = None) -> PassthroughForward:
    d = _object(obj, "forward", default_empty=False)
    w = "forward"
    platform = _opt_str(d, "platform", w) or ""
    return PassthroughForward(
        platform=platform.strip().lower(),
        bot_id=_opt_str(d, "botId", w) or "",
        method=_opt_str(d, "method", w) or "",
        path=_opt_str(d, "path", w) or "",
        headers=_headers(d.get("headers")),
        body=_body(d.get("bodyB64")),
        profile=_truthy_str(d, "profile", w),
    )


def _unstructure_forward(f: PassthroughForward) -> JSONDict:
    out: JSONDict = {
        "platform": f.platform,
        "botId": f.bot_id,
        "method": f.method,
        "path": f.path,
        "headers": [[k, v] for k, v in f.headers],
        "bodyB64": base64.b64encode(f.body).decode("ascii"),
    }
    if f.profile:
        out["profile"] = f.profile
    return out


# -- actions ------------------------------------------------------------------------------------


def _unstructure_send(a: Send) -> JSONDict:
    return {
        "op": "send",
        "chat_id": a.chat_id,
        "content": a.content,
        "reply_to": a.reply_to,
        "metadata": a.metadata,
    }


def _unstructure_edit(a: Edit) -> JSONDict:
    return {
        "op": "edit",
        "chat_id": a.chat_id,
        "message_id": a.message_id,
        "content": a.content,
        "metadata": a.metadata,
    }


def _unstructure_typing(a: Typing) -> JSONDict:
    return {"op": "typing", "chat_id": a.chat_id, "metadata": a.metadata}


def _unstructure_follow_up(a: FollowUp) -> JSONDict:
    return {
        "op": "follow_up",
        "session_key": a.session_key,
        "kind": a.kind,
        "content": a.content,
        "metadata": a.metadata,
    }


def _unstructure_chat_info(a: GetChatInfo) -> JSONDict:
    return {"op": "get_chat_info", "chat_id": a.chat_id}


def _structure_action(obj: Any, _: Any = None) -> Action:
    d = _object(obj, "action", default_empty=False)
    op = d.get("op")
    if not isinstance(op, str):
        raise FieldError("action.op", "missing required text field")
    cls = ACTION_TYPES.get(op)
    if cls is None:
        raise FieldError("action.op", f"unknown op {op!r}")
    w = "action"
    if cls is Send:
        return Send(
            chat_id=_req_str(d, "chat_id", w),
            content=_opt_str(d, "content", w) or "",
            reply_to=_opt_str(d, "reply_to", w),
            metadata=_metadata(d, w),
        )
    if cls is Edit:
        return Edit(
            chat_id=_req_str(d, "chat_id", w),
            message_id=_req_str(d, "message_id", w),
            content=_opt_str(d, "content", w) or "",
            metadata=_metadata(d, w),
        )
    if cls is Typing:
        return Typing(chat_id=_req_str(d, "chat_id", w), metadata=_metadata(d, w))
    if cls is FollowUp:
        return FollowUp(
            session_key=_req_str(d, "session_key", w),
            kind=_req_str(d, "kind", w),
            content=_opt_str(d, "content", w) or "",
            metadata=_metadata(d, w),
        )
    return GetChatInfo(chat_id=_req_str(d, "chat_id", w))


# -- frames -------------------------------------------------------------------------------------


def _buffer_id(d: Mapping[str, Any], where: str) -> str | None:
    return _opt_str(d, "bufferId", where) or None


def _structure_hello(d: Mapping[str, Any], _: Any = None) -> Hello:
    return Hello(platform=_req_str(d, "platform", ""), bot_id=_opt_str(d, "botId", "") or "")


def _structure_outbound(d: Mapping[str, Any], _: Any = None) -> Outbound:
    return Outbound(
        request_id=_req_str(d, "requestId", ""),
        action=_structure_action(d.get("action")),
        platform=_opt_str(d, "platform", "") or None,
        bot_id=_opt_str(d, "botId", "") or None,
    )


def _structure_interrupt(d: Mapping[str, Any], _: Any = None) -> Interrupt:
    return Interrupt(session_key=_req_str(d, "session_key", ""), reason=_opt_str(d, "reason", ""))


def _structure_inbound_ack(d: Mapping[str, Any], _: Any = None) -> InboundAck:
    return InboundAck(buffer_id=_req_str(d, "bufferId", ""))


def _structure_descriptor_frame(d: Mapping[str, Any], _: Any = None) -> DescriptorFrame:
    return DescriptorFrame(descriptor=_structure_descriptor(d.get("descriptor")))


def _structure_inbound(d: Mapping[str, Any], _: Any = None) -> Inbound:
    buffer_id = d.get("bufferId")
    return Inbound(
        _structure_event(d.get("event"), via_relay=True),
        (buffer_id or None) if type(buffer_id) is str else _buffer_id(d, "inbound"),
    )


def _structure_outbound_result(d: Mapping[str, Any], _: Any = None) -> OutboundResult:
    result = d.get("result")
    if result is None:
        result = {}
    elif not isinstance(result, dict):
        result = {"success": False, "error": MALFORMED_RESULT}
    return OutboundResult(request_id=_req_str(d, "requestId", ""), result=result)


def _structure_interrupt_inbound(d: Mapping[str, Any], _: Any = None) -> InterruptInbound:
    return InterruptInbound(
        session_key=_opt_str(d, "session_key", "") or "",
        chat_id=_opt_str(d, "chat_id", "") or "",
    )


def _structure_forward_frame(d: Mapping[str, Any], _: Any = None) -> PassthroughForwardFrame:
    return PassthroughForwardFrame(
        forward=_structure_forward(d.get("forward")),
        buffer_id=_buffer_id(d, "passthrough_forward"),
    )


def _unstructure_outbound(f: Outbound) -> JSONDict:
    out: JSONDict = {
        "type": "outbound",
        "requestId": f.request_id,
        "action": converter.unstructure(f.action),
    }
    if f.platform is not None:
        out["platform"] = f.platform
        if f.bot_id:
            out["botId"] = f.bot_id
    return out


def _unstructure_inbound(f: Inbound) -> JSONDict:
    out: JSONDict = {"type": "inbound", "event": _unstructure_event(f.event)}
    if f.buffer_id:
        out["bufferId"] = f.buffer_id
    return out


def _unstructure_forward_frame(f: PassthroughForwardFrame) -> JSONDict:
    out: JSONDict = {"type": "passthrough_forward", "forward": _unstructure_forward(f.forward)}
    if f.buffer_id:
        out["bufferId"] = f.buffer_id
    return out


def _register() -> None:
    unstructure: dict[type[Any], Callable[[Any], JSONDict]] = {
        SessionSource: _unstructure_source,
        MessageEvent: _unstructure_event,
        CapabilityDescriptor: _unstructure_descriptor,
        PassthroughForward: _unstructure_forward,
        Send: _unstructure_send,
        Edit: _unstructure_edit,
        Typing: _unstructure_typing,
        FollowUp: _unstructure_follow_up,
        GetChatInfo: _unstructure_chat_info,
        Hello: lambda f: {"type": "hello", "platform": f.platform, "botId": f.bot_id},
        Outbound: _unstructure_outbound,
        Interrupt: lambda f: {
            "type": "interrupt",
            "session_key": f.session_key,
            "reason": f.reason,
        },
        GoingIdle: lambda f: {"type": "going_idle"},
        InboundAck: lambda f: {"type": "inbound_ack", "bufferId": f.buffer_id},
        DescriptorFrame: lambda f: {
            "type": "descriptor",
            "descriptor": _unstructure_descriptor(f.descriptor),
        },
        Inbound: _unstructure_inbound,
        OutboundResult: lambda f: {
            "type": "outbound_result",
            "requestId": f.request_id,
            "result": dict(f.result),
        },
        InterruptInbound: lambda f: {
            "type": "interrupt_inbound",
            "session_key": f.session_key,
            "chat_id": f.chat_id,
        },
        PassthroughForwardFrame: _unstructure_forward_frame,
        GoingIdleAck: lambda f: {"type": "going_idle_ack"},
    }
    for cls, fn in unstructure.items():
        converter.register_unstructure_hook(cls, fn)

    structure: dict[type[Any], Callable[[Any, Any], Any]] = {
        SessionSource: _structure_source,
        MessageEvent: _structure_event,
        CapabilityDescriptor: _structure_descriptor,
        PassthroughForward: _structure_forward,
        Hello: _structure_hello,
        Outbound: _structure_outbound,
        Interrupt: _structure_interrupt,
        GoingIdle: lambda d, _: GoingIdle(),
        InboundAck: _structure_inbound_ack,
        DescriptorFrame: _structure_descriptor_frame,
        Inbound: _structure_inbound,
        OutboundResult: _structure_outbound_result,
        InterruptInbound: _structure_interrupt_inbound,
        PassthroughForwardFrame: _structure_forward_frame,
        GoingIdleAck: lambda d, _: GoingIdleAck(),
    }
    for cls, sfn in structure.items():
        converter.register_structure_hook(cls, sfn)
    for action_cls in ACTION_TYPES.values():
        converter.register_structure_hook(action_cls, _structure_action)


_register()

# The converter's hook per frame class, looked up once: decoding is the hot path.
_frame_hooks: dict[type[Any], Callable[[Any, Any], Any]] = {
    cls: converter.get_structure_hook(cls) for cls in FRAME_TYPES.values()
}

# -- encode / decode ----------------------------------------------------------------------------

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SURROGATE = re.compile("[\ud800-\udfff]")


def to_json(obj: Any) -> str:
    """Compact JSON with raw UTF-8 text; lone surrogates become U+FFFD (RC §2 Encoder)."""
    text = _dumps(obj)
    if not text.isascii() and _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    return text


def encode_frame(frame: Frame) -> str:
    """One frame as it goes on the wire: compact JSON plus exactly one ``"\\n"``."""
    return to_json(converter.unstructure(frame)) + "\n"


def decode_object(obj: Any) -> Frame | FrameError:
    """Turn one parsed JSON value into a frame, or a :class:`FrameError` naming the problem."""
    if not isinstance(obj, dict):
        return FrameError("malformed", "relay: skipping malformed frame (not a JSON object)")
    frame_type = obj.get("type")
    if not isinstance(frame_type, str):
        return FrameError("malformed", 'relay: skipping malformed frame (no string "type")')
    cls = FRAME_TYPES.get(frame_type)
    if cls is None:
        return FrameError(
            "unknown_type", f"relay: ignoring frame of unknown type {frame_type!r}", frame_type
        )
    try:
        frame: Frame = _frame_hooks[cls](obj, cls)
    except FieldError as exc:
        if cls is DescriptorFrame:
            return FrameError(
                "invalid_descriptor",
                f"relay: invalid descriptor ({exc.field}: {exc.problem})",
                frame_type,
                exc.field,
            )
        return FrameError(
            "bad_field",
            f"relay: dropping {frame_type} frame ({exc.field}: {exc.problem})",
            frame_type,
            exc.field,
        )
    except Exception as exc:  # one frame must never end the reader (RC §2, R7)
        log.exception("relay: decoder failed on a %s frame", frame_type)
        return FrameError(
            "malformed",
            f"relay: skipping malformed frame ({frame_type}: {type(exc).__name__}: {exc})",
            frame_type,
        )
    return frame


def decode_line(line: str) -> Frame | FrameError:
    """Parse one NDJSON line (without its newline) into a frame or an error value."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return FrameError("malformed", f"relay: skipping malformed frame (invalid JSON: {exc})")
    except RecursionError:
        return FrameError("malformed", "relay: skipping malformed frame (nested too deeply)")
    return decode_object(obj)


def structure(obj: Any, cls: type[T]) -> T:
    """Structure a wire object as ``cls``; raises :class:`FieldError` on a missing field."""
    return converter.structure(obj, cls)


def unstructure(obj: Any) -> JSONDict:
    """The wire object for any contract value (frame, action, event, descriptor)."""
    result: JSONDict = converter.unstructure(obj)
    return result
