"""The relevance gate: which injected messages a gateway's declared policy lets through.

A gateway declares ``requireAddress`` / ``freeResponseScopes`` / ``allowOtherBots`` per platform
through ``POST /relay/policy`` (RC §9); the connector applies it before delivery (and before
it would wake a sleeping instance). This is a small model of that drop, kept pure: the
connector asks :func:`admit` and records what it rejects.

Rules (our reading of the three fields): direct messages always pass; a message from another
bot needs ``allowOtherBots``; with ``requireAddress`` a message must address the bot (a mention
or a reply, said by the injector) unless its chat, or the chat's parent, is a free-response
scope.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from protocol._events import MessageEvent
from relay_runtime.config import string_list


def _scopes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str | list | tuple) and isinstance(value, Iterable):
        value = list(value)
    return tuple(string_list(value) or ())


@attrs.frozen
class RelevancePolicy:
    """One platform's relevance policy for one gateway."""

    require_address: bool = False
    free_response_scopes: tuple[str, ...] = attrs.field(default=(), converter=_scopes)
    allow_other_bots: bool = False

    @classmethod
    def coerce(cls, value: object) -> RelevancePolicy | None:
        """Read a policy from a registry: this class, a wire mapping, or a look-alike object.

        Mappings may use the wire names (``requireAddress`` ...) or snake case; ``None``
        means "no policy" (everything passes).
        """
        if value is None or isinstance(value, RelevancePolicy):
            return value
        if isinstance(value, Mapping):

            def get(wire: str, snake: str) -> Any:
                return value.get(wire, value.get(snake))

            return cls(
                require_address=bool(get("requireAddress", "require_address")),
                free_response_scopes=get("freeResponseScopes", "free_response_scopes") or (),
                allow_other_bots=bool(get("allowOtherBots", "allow_other_bots")),
            )
        return cls(
            require_address=bool(getattr(value, "require_address", False)),
            free_response_scopes=getattr(value, "free_response_scopes", ()) or (),
            allow_other_bots=bool(getattr(value, "allow_other_bots", False)),
        )


def admit(
    policy: RelevancePolicy | None,
    event: MessageEvent,
    *,
    addressed: bool,
    from_bot: bool,
) -> str | None:
    """``None`` if ``event`` may be delivered, else the reason the gate drops it."""
    if policy is None:
        return None
    source = event.source
    if source.chat_type == "dm":
        return None
    if from_bot and not policy.allow_other_bots:
        return "message from another bot"
    if policy.require_address and not addressed:
        scopes = set(policy.free_response_scopes)
        if source.chat_id not in scopes and (source.parent_chat_id or "") not in scopes:
            return "bot not addressed outside a free-response scope"
    return None
