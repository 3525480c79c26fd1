"""Store-side value types: what the client store reads, writes and returns.

These are the durable records (one row each) and the results and errors of the atomic
functions (TR §2, §3). The pure decision types live in :mod:`trust._model`.
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

from trust._model import Level

AuditTier = Literal["rule", "agent", "admin", "operator"]
"""Who made a change: a fast rule, the trust agent, an admin, or the local operator (§3)."""
AUDIT_TIERS: Final[tuple[AuditTier, ...]] = ("rule", "agent", "admin", "operator")

MAX_REASON_CHARS: Final = 500


def as_level(text: str) -> Level:
    """``text`` as a :class:`Level`, or ValueError naming it."""
    try:
        return Level(text)
    except ValueError:
        names = ", ".join(level.value for level in Level)
        raise ValueError(f"unknown level {text!r}; expected one of {names}") from None


def as_audit_tier(text: str) -> AuditTier:
    """``text`` as an :data:`AuditTier`, or ValueError naming it."""
    for tier in AUDIT_TIERS:
        if text == tier:
            return tier
    raise ValueError(f"unknown audit tier {text!r}")


def state_text(level: Level, blocked: bool) -> str:
    """The audit log's spelling of a client's level state: ``contact`` or ``contact+blocked``.

    Recording the level under a block (not just ``blocked``) lets revert and import restore
    exactly the state a row started from.
    """
    return f"{level.value}+blocked" if blocked else level.value


def parse_state_text(text: str) -> tuple[Level, bool]:
    """Inverse of :func:`state_text`."""
    level, plus, flag = text.partition("+")
    if plus and flag != "blocked":
        raise ValueError(f"bad state text {text!r}")
    return as_level(level), bool(plus)


@attrs.frozen
class ClientRecord:
    """One ``trust_clients`` row; a client with no row is :meth:`absent` (a stranger)."""

    client_id: str
    level: Level = Level.STRANGER
    blocked: bool = False
    blocked_reason: str | None = None
    blocked_by: str | None = None
    blocked_at: int | None = None
    is_admin: bool = False
    admin_by: str | None = None
    admin_at: int | None = None
    agent_may_promote: bool = True
    created_at: int = 0
    updated_at: int = 0
    stored: bool = True

    @classmethod
    def absent(cls, client_id: str) -> ClientRecord:
        """The view of a client the store has never recorded."""
        return cls(client_id=client_id, stored=False)

    @property
    def effective_level(self) -> str:
        """``blocked`` when flagged, else the level (TR §2)."""
        return "blocked" if self.blocked else self.level.value

    @property
    def state(self) -> str:
        """The audit spelling of the level state (:func:`state_text`)."""
        return state_text(self.level, self.blocked)


@attrs.frozen
class AuditEntry:
    """One ``trust_audit`` row: a state change, a refusal, or an invite event."""

    id: int
    at: int
    client_id: str | None
    action: str
    from_level: str | None
    to_level: str | None
    from_admin: bool | None
    to_admin: bool | None
    actor: str
    tier: AuditTier
    reason: str | None = None
    policy: str | None = None
    rule_index: int | None = None
    invite_id: str | None = None
    payment_tx: str | None = None
    reverts: int | None = None
    reverted_by: int | None = None


@attrs.frozen
class Invite:
    """One ``trust_invites`` row. The code itself is never stored, only its SHA-256."""

    invite_id: str
    code_sha256: bytes = attrs.field(repr=False)
    created_by: str
    created_at: int
    expires_at: int | None
    max_uses: int
    uses: int
    revoked_at: int | None = None
    revoked_by: str | None = None
    note: str | None = None
    generated: bool = False
    """An 80-bit code made by :func:`trust._invites.generate_code` (not a custom one): too
    strong to guess, so attempts that hit it skip the deployment-wide failure window."""

    def status(self, now_ms: int) -> Literal["active", "revoked", "expired", "exhausted"]:
        """Why this invite can or cannot be used at ``now_ms``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now_ms >= self.expires_at:
            return "expired"
        if self.uses >= self.max_uses:
            return "exhausted"
        return "active"


@attrs.frozen
class PaymentRecord:
    """One ``trust_payments`` row: a transfer that onboarded one client."""

    tx_id: str
    client_id: str
    amount: str
    currency: str | None
    at: int
    audit_id: int | None


@attrs.frozen
class CachedVerdict:
    """One ``trust_decision_cache`` row: a trust-agent verdict kept for its TTL."""

    client_id: str
    policy_digest: str
    allow: bool
    reason: str
    created_at: int
    expires_at: int


@attrs.frozen
class Counters:
    """One ``trust_counters`` row (times in ms; ``day``/``hour`` are UTC bucket numbers)."""

    client_id: str
    first_seen: int
    last_seen: int
    requests: int = 0
    day: int = 0
    requests_today: int = 0
    hour: int = 0
    requests_hour: int = 0
    agent_calls_hour: int = 0
    invite_failures_hour: int = 0


@attrs.frozen
class ImportEntry:
    """The state an import wants one client to have."""

    client_id: str
    level: Level
    blocked: bool
    is_admin: bool


@attrs.frozen
class ImportReport:
    """What an import did (or, dry, would do)."""

    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    conflicts: tuple[str, ...]
    audit_ids: tuple[int, ...]


@attrs.frozen
class OpResult:
    """What a successful atomic function or operation returns."""

    message: str
    audit_id: int | None
    client: ClientRecord | None


class TrustOpError(Exception):
    """An operation refused, with a stable ``code`` and a one-line ``message``; nothing written
    (except the ``refused:<op>`` audit row of ``not_authorized``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PreconditionFailed(Exception):
    """A staged change no longer fits the row it re-read; the caller re-decides."""

    def __init__(self, client_id: str, op: str, detail: str) -> None:
        super().__init__(f"{op} on {client_id}: {detail}")
        self.client_id = client_id
        self.op = op
        self.detail = detail


class StoreError(Exception):
    """The store could not be reached or answered badly; the engine fails closed."""
