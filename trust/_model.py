"""The values `decide` reads and returns (TR §5).

Everything here is a frozen attrs class or an enum; nothing does I/O. The store builds a
`ClientState` from its view of one client, the engine pre-resolves `RequestFacts` for one
message, and `trust._rules.decide` turns both into a `Decision` or a `ConsultAgent`.
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Literal

import attrs

ANONYMOUS = "anonymous"
"""The identity of a sender without a usable id (§1); never stored."""


class Level(enum.StrEnum):
    """A client's stored trust level; `blocked` is a flag on top, not a level (§2)."""

    STRANGER = "stranger"
    CONTACT = "contact"
    WHITELIST = "whitelist"

    @property
    def rank(self) -> int:
        """Position in the promotion chain: stranger 0, contact 1, whitelist 2."""
        return _RANK[self]


_RANK = {Level.STRANGER: 0, Level.CONTACT: 1, Level.WHITELIST: 2}


class CommandKind(enum.StrEnum):
    """Which trust command a message is (§6, §8); plain messages have none."""

    INVITE = "invite"
    PAY = "pay"
    TRUST = "trust"


TRUST_OPERATIONS: tuple[str, ...] = (
    "promote",
    "demote",
    "block",
    "unblock",
    "admin/set",
    "admin/remove",
    "level",
    "audit",
)
"""The §8 operations of chat, CLI and API, by the names ``/trust`` and ``disable:`` use."""

OPERATIONS: tuple[str, ...] = ("verify/invite", "verify/payment", *TRUST_OPERATIONS)
"""Everything a policy's ``disable:`` may name: the verifications and the operations."""

StateOp = Literal[
    "promote_to_contact",
    "promote_to_whitelist",
    "demote_to_contact",
    "demote_to_stranger",
    "block",
]
"""The state changes a rule or the trust agent may stage (never unblock or admin changes)."""

STATE_OPS: frozenset[str] = frozenset(
    {
        "promote_to_contact",
        "promote_to_whitelist",
        "demote_to_contact",
        "demote_to_stranger",
        "block",
    }
)

Tier = Literal["rule", "cache", "agent", "default"]
"""Which step decided: a fast rule (or built-in step), a cached or fresh agent verdict, or
the policy default."""

Outcome = Literal["allow", "deny", "use_agent"]
"""A terminal outcome of a rule or of the policy default."""


@attrs.frozen
class ClientState:
    """One client's view as `decide` sees it (warm from the store cache).

    `secondary_blocked` is true when the message's secondary id, or any id aliased to the
    primary, is blocked. Counters include the current message.
    """

    client_id: str
    level: Level = Level.STRANGER
    blocked: bool = False
    secondary_blocked: bool = False
    is_admin: bool = False
    anonymous: bool = False
    agent_may_promote: bool = True
    requests: int = 0
    requests_today: int = 0
    requests_hour: int = 0
    days_known: int = 0

    @classmethod
    def anonymous_sender(cls) -> ClientState:
        """The state of an anonymous sender: a stranger with zero counters (C16)."""
        return cls(client_id=ANONYMOUS, anonymous=True, agent_may_promote=False)

    @property
    def is_blocked(self) -> bool:
        """Effective level is `blocked` (primary, secondary or an alias)."""
        return self.blocked or self.secondary_blocked

    @property
    def effective_level(self) -> str:
        """`blocked` if flagged, else the stored level (§2)."""
        return "blocked" if self.is_blocked else self.level.value


@attrs.frozen
class InviteCheck:
    """The engine's pre-resolved lookup of an `/invite CODE` (§6).

    `ok` with the invite's id when the code is usable; else `reason` is one of `unknown`,
    `expired`, `exhausted`, `revoked`, `missing code`, `too many attempts`.
    """

    ok: bool
    reason: str = ""
    invite_id: str | None = None


@attrs.frozen
class PaymentCheck:
    """A payment verifier's answer for a `/pay REFERENCE` (§6); the engine re-checks it.

    A verifier fills in, for an `ok` answer, the transfer's `tx_id`, the `amount_paid`, its
    `currency` (ISO 4217) and the `payer` as a client id (`platform:user-id`): the engine
    refuses a wrong currency and a payer who is not the sender (issue 12), so a reference
    learned from someone else's transfer cannot be claimed.
    """

    ok: bool
    reason: str = ""
    tx_id: str | None = None
    amount_paid: Decimal | None = None
    currency: str | None = None
    payer: str | None = None


@attrs.frozen
class StateChange:
    """One state change staged by a rule or the trust agent, applied by the engine.

    `client_id` None means the client under review; the agent tier may name another id,
    which `decide` drops (§5, T46). `rule_index` is the rule that staged it (None for the
    agent) so the audit actor can be `rule:<policy>#<index>`.
    """

    op: StateOp
    reason: str = ""
    invite_id: str | None = None
    payment_tx: str | None = None
    client_id: str | None = None
    rule_index: int | None = None


@attrs.frozen
class AgentVerdict:
    """A trust-agent verdict for this client and policy, fresh or from the cache (§7).

    `staged` holds the state tools the agent called; `cache_s` the TTL the verdict asked
    for (None: the policy's TTL; 0: do not cache).
    """

    allow: bool
    reason: str
    cached: bool = False
    staged: tuple[StateChange, ...] = ()
    model: str = ""
    cache_s: int | None = None


@attrs.frozen
class RequestFacts:
    """What the engine knows about one message before `decide` (§5)."""

    command: CommandKind | None = None
    is_dm: bool = False
    mentions_bot: bool = False
    invite: InviteCheck | None = None
    payment: PaymentCheck | None = None
    agent: AgentVerdict | None = None
    agent_promotion_allowed: bool = True


@attrs.frozen
class Decision:
    """The verdict for one message (§5).

    `rule_index` is 0-based, None for the default and built-in steps. `actions` are the
    state changes to apply in one transaction; `dropped` counts agent changes filtered out.
    """

    allow: bool
    reason: str
    tier: Tier
    rule_index: int | None = None
    actions: tuple[StateChange, ...] = ()
    policy: str = ""
    dropped: int = 0


@attrs.frozen
class ConsultAgent:
    """`decide` needs the trust agent: run §7, then decide again with `facts.agent` set."""

    reason: str
    rule_index: int | None = None
