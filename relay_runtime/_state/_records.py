"""What the state layer stores and returns: records, limits and errors.

Shared by every store (SQLite and PostgreSQL): nothing here knows about SQL. No wall clock is read
in the state layer: every time-dependent call takes ``now`` (seconds, any epoch the caller
uses consistently; the runtime passes ``time.time()``).
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _quoted
from typing import Final, Literal

import attrs

DB_FILENAME: Final = "relay.db"
#: A ``follow_up`` is bound to the connector's interaction vault, which forgets it after 15 min.
FOLLOW_UP_TTL_S: Final = 15 * 60
#: Deliveries of one outbox entry that may fail (drop/timeout) before it is given up.
OUTBOX_MAX_ATTEMPTS: Final = 5
#: How long a finished turn's result is kept.
TURN_RESULT_TTL_S: Final = 24 * 3600

OutboxKind = Literal["send", "follow_up"]
TurnEndState = Literal["completed", "failed", "interrupted", "denied", "cancelled", "timed_out"]
TurnState = Literal[
    "running", "completed", "failed", "interrupted", "denied", "cancelled", "timed_out", "crashed"
]
#: States a caller may finish a turn with (``crashed`` is only set by crash recovery).
TURN_END_STATES: Final[frozenset[str]] = frozenset(
    {"completed", "failed", "interrupted", "denied", "cancelled", "timed_out"}
)
#: ``K_msg`` of RC §4.6: ``(platform_raw, chat_id, message_id)``.
MessageKey = tuple[str, str, str]
#: How many times a live delivery left unfinished by a crash or a shutdown is resumed (one
#: more run per restart) before it is given up as one that keeps killing the process.
RESUME_MAX: Final = 3
#: Bytes of the random per-gateway key replies' ``requestId``s are derived with.
REPLY_KEY_BYTES: Final = 32


class StateError(Exception):
    """The state database cannot be used (unreadable, newer schema, bad argument)."""


class StorageFailed(StateError):
    """Writing the state database failed for longer than the configured limit."""


class LeaseLost(StateError):
    """This process no longer holds its gateway id's lease (another took it over, or it
    could not renew in time): it must stop serving, and its writes are refused."""


class OutboxFull(StateError):
    """The outbox holds ``outbox_max`` entries; the new request was not accepted."""

    def __init__(self, outbox_max: int) -> None:
        super().__init__(f"relay outbox full (outbox_max={outbox_max})")
        self.outbox_max = outbox_max


@attrs.frozen
class OutboxEntry:
    """One queued ``send``/``follow_up``, as committed."""

    id: int
    platform: str
    bot_id: str
    action_json: str
    request_id: str
    kind: OutboxKind
    created_at: float
    expires_at: float
    attempts: int


@attrs.frozen
class Attempt:
    """The outcome of :meth:`StateDB.bump_attempts`."""

    attempts: int
    #: True when this failure used up the last attempt and the entry was deleted.
    dropped: bool


@attrs.frozen
class ClaimRequest:
    """One delivery to claim in :meth:`StateDB.claim_turns`: its session and its keys.

    ``inbound`` is the delivery's frame (JSON) for the durable inbox: kept with its turn
    until the turn ends, so a live delivery a crash or shutdown interrupted is resumed by
    the next process (``None``: not kept, e.g. buffered ones, which the connector replays).
    """

    session_key: str
    k_msg: MessageKey | None
    k_buf: str | None
    inbound: str | None = None


@attrs.frozen
class InboxRecord:
    """A live delivery the previous process admitted and did not finish: to resume."""

    turn_id: int
    session_key: str
    k_msg: MessageKey | None
    inbound: str
    resumes: int


@attrs.frozen
class TurnRecord:
    """One turn's recorded start and end."""

    turn_id: int
    session_key: str
    k_msg: MessageKey | None
    k_buf: str | None
    state: TurnState
    started_at: float
    ended_at: float | None
    error: str | None


def _msg_key_text(k_msg: MessageKey) -> str:
    # str(): an id that arrived as the number 12345 is the same key as "12345" (R29). The
    # text is json.dumps(["msg", *parts], separators=(",", ":")), built without creating
    # an encoder per call (that cost ~7 us a delivery on the loop).
    platform, chat_id, message_id = k_msg
    return f'["msg",{_quoted(str(platform))},{_quoted(str(chat_id))},{_quoted(str(message_id))}]'


def _buf_key_text(k_buf: str) -> str:
    return f'["buf",{_quoted(str(k_buf))}]'


def _claim_keys(k_msg: MessageKey | None, k_buf: str | None) -> list[str]:
    """The stored keys of a delivery; ``K_msg`` counts only with chat and message ids."""
    keys: list[str] = []
    if k_msg is not None and k_msg[1] and k_msg[2]:
        keys.append(_msg_key_text(k_msg))
    if k_buf:
        keys.append(_buf_key_text(k_buf))
    return keys


def _check_end_state(state: str) -> None:
    if state not in TURN_END_STATES:
        raise StateError(f"turn end state must be one of {sorted(TURN_END_STATES)}, got {state!r}")
