"""What an outbound action came to: :class:`SendResult` and the local failure texts (RC §3.4)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

# Local outcomes (RC §3.4); the texts are part of the contract.
TRANSPORT_CLOSED = "relay transport closed"
OUTBOUND_TIMED_OUT = "relay outbound timed out"
NOT_CONNECTED = "relay transport not connected"
QUEUED = "relay not connected; queued for delivery after reconnect"
OUTBOX_FULL = "relay outbox full"
DISABLED = "relay disabled"
FRAME_TOO_LARGE = "relay frame too large"
MALFORMED_RESULT = "relay: malformed outbound_result"
SEND_FAILED_PREFIX = "relay send failed: "
OP_NOT_SUPPORTED_PREFIX = "relay op not supported by connector: "


class ErrorKind(enum.StrEnum):
    """What a failed :class:`SendResult` came to (its ``error_kind``), for retry decisions.

    The connector's answers carry ``EGRESS_DECLINED`` or no kind; a local failure carries one
    of the others, so callers decide on the kind and never on the RC §3.4 text.
    """

    #: The connector declined to egress the action: final, never retried.
    EGRESS_DECLINED = "egress_declined"
    #: Not written: the link is not live now (it may come back).
    NOT_CONNECTED = "not_connected"
    #: The transport is closed for good (stopping or closed): not written, or pending at
    #: our own shutdown close.
    CLOSED = "closed"
    #: The relay is disabled: nothing goes out any more.
    DISABLED = "disabled"
    #: Pending when the socket dropped, or its write failed: it may have been performed.
    DROPPED = "dropped"
    #: No answer on a live link within the outbound timeout: it may have been performed.
    TIMED_OUT = "timed_out"
    #: The frame can never go out: too large, an op the connector lacks, not encodable.
    REJECTED = "rejected"
    #: The durable outbox had no room for the reply.
    OUTBOX_FULL = "outbox_full"


EGRESS_DECLINED = ErrorKind.EGRESS_DECLINED


def _text_or_none(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


@attrs.frozen
class SendResult:
    """The outcome of one outbound action, from the connector or decided locally.

    Outbound APIs return this instead of raising for transport reasons. ``error_kind ==
    "egress_declined"`` is final: such a reply is never retried, queued or re-sent.
    """

    success: bool
    message_id: str | None = None
    error: str | None = None
    retryable: bool = False
    ambiguous: bool = False
    queued: bool = False
    outbox_id: int | None = None
    error_kind: ErrorKind | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, hash=False)

    @classmethod
    def from_wire(cls, result: Mapping[str, Any]) -> SendResult:
        """Read an ``outbound_result``'s ``result`` object."""
        error = _text_or_none(result.get("error"))
        declined = result.get("code") == EGRESS_DECLINED or (
            error is not None and "egress declined:" in error
        )
        return cls(
            success=bool(result.get("success")),
            message_id=_text_or_none(result.get("message_id")),
            error=error,
            retryable=bool(result.get("retryable")) and not declined,
            ambiguous=bool(result.get("ambiguous")),
            error_kind=EGRESS_DECLINED if declined else None,
            raw=dict(result),
        )

    @classmethod
    def failure(
        cls,
        error: str,
        *,
        retryable: bool = False,
        ambiguous: bool = False,
        kind: ErrorKind | None = None,
    ) -> SendResult:
        """A local failure (never reached the connector, or its answer never came).

        ``kind`` is what it came to (see :class:`ErrorKind`); it is not part of ``raw``.
        """
        raw: dict[str, Any] = {"success": False, "error": error, "retryable": retryable}
        if ambiguous:
            raw["ambiguous"] = True
        return cls(
            success=False,
            error=error,
            retryable=retryable,
            ambiguous=ambiguous,
            error_kind=kind,
            raw=raw,
        )

    @classmethod
    def queued_result(cls, outbox_id: int) -> SendResult:
        """The answer for a reply committed to the outbox while disconnected."""
        return cls(
            success=False,
            error=QUEUED,
            queued=True,
            outbox_id=outbox_id,
            raw={"success": False, "error": QUEUED, "queued": True, "outbox_id": outbox_id},
        )


@attrs.frozen
class ChatInfo:
    """A chat's display name and type, as ``get_chat_info`` reports it."""

    name: str
    type: str

    @classmethod
    def from_result(cls, result: Mapping[str, Any], chat_id: str) -> ChatInfo:
        """Read ``chat_info`` (or the result itself), defaulting to ``(chat_id, "dm")``."""
        info = result.get("chat_info")
        source: Mapping[str, Any] = info if isinstance(info, Mapping) and info else result
        name = source.get("name")
        kind = source.get("type")
        return cls(
            name=str(name) if name else chat_id,
            type=str(kind) if kind else "dm",
        )

    def to_dict(self) -> dict[str, str]:
        """The ``{name, type}`` shape callers of ``get_chat_info`` expect."""
        return {"name": self.name, "type": self.type}
