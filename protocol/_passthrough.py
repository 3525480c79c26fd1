"""Turning a ``passthrough_forward`` into a :class:`MessageEvent` (RC §7.6).

The connector has already verified, edge-acknowledged and token-stripped the platform
request; all that is left is reading it. Only Discord interactions have a handler. Every
problem comes back as a :class:`PassthroughError` value with the log line to write; nothing
here raises on any input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from protocol._events import MessageEvent, SessionSource
from protocol._frames import PassthroughForward

#: Discord interaction types with text: APPLICATION_COMMAND and MESSAGE_COMPONENT.
_APPLICATION_COMMAND = 2
_MESSAGE_COMPONENT = 3

PassthroughErrorKind = Literal["no_handler", "bad_body"]


@attrs.frozen
class PassthroughError:
    """A forward that maps to no event: dropped (and acked if buffered), never raised.

    ``message`` is the log line; ``no_handler`` is logged at INFO, ``bad_body`` at WARNING.
    """

    kind: PassthroughErrorKind
    message: str
    platform: str = ""

    @property
    def severity(self) -> Literal["info", "warning"]:
        """The log level for this drop."""
        return "info" if self.kind == "no_handler" else "warning"


def _text(value: Any) -> str | None:
    """A JSON string, or a number as its decimal text (RC §3); anything else is absent."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _bad_body(reason: str) -> PassthroughError:
    return PassthroughError(
        "bad_body", f"relay passthrough_forward dropped (discord body {reason})", "discord"
    )


def _interaction(body: bytes) -> Mapping[str, Any] | PassthroughError:
    if not body:
        return _bad_body("is empty or was not valid base64")
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return _bad_body("is not valid UTF-8")
    except ValueError as exc:
        return _bad_body(f"is not valid JSON: {exc}")
    except RecursionError:
        return _bad_body("is nested too deeply")
    if not isinstance(value, dict):
        return _bad_body(f"is not a JSON object but {type(value).__name__}")
    return value


def discord_interaction_event(forward: PassthroughForward) -> MessageEvent | PassthroughError:
    """The event a Discord interaction forward stands for (RC §7.6).

    Type 2 reads ``data.name``, type 3 ``data.custom_id``, others empty text. The session
    source is platform ``discord``, chat ``channel_id``, ``group`` in a guild else ``dm``,
    with the interaction id as the source's ``message_id`` (its delivery key).
    """
    interaction = _interaction(forward.body)
    if isinstance(interaction, PassthroughError):
        return interaction
    data = _object(interaction.get("data"))
    kind = interaction.get("type")
    text: str | None = None
    if not isinstance(kind, bool) and kind == _APPLICATION_COMMAND:
        text = _text(data.get("name"))
    elif not isinstance(kind, bool) and kind == _MESSAGE_COMPONENT:
        text = _text(data.get("custom_id"))

    member_user = _object(interaction.get("member")).get("user")
    user = _object(member_user if isinstance(member_user, dict) else interaction.get("user"))
    guild_id = _text(interaction.get("guild_id")) or None
    source = SessionSource(
        platform="discord",
        chat_id=_text(interaction.get("channel_id")) or "",
        chat_type="group" if guild_id else "dm",
        user_id=_text(user.get("id")),
        user_name=_text(user.get("username")),
        guild_id=guild_id,
        message_id=_text(interaction.get("id")) or None,
        profile=forward.profile or None,
    )
    return MessageEvent(text=text or "", source=source, delivered_via_relay=True)


def decode_forward(forward: PassthroughForward) -> MessageEvent | PassthroughError:
    """Map any forward: Discord interactions become events, other platforms an INFO drop."""
    platform = forward.platform.strip().lower()
    if platform == "discord":
        return discord_interaction_event(forward)
    return PassthroughError(
        "no_handler", f"relay passthrough_forward dropped (no handler for {platform})", platform
    )
