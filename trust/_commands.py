"""Trust commands in message text: `/invite CODE`, `/pay REF`, `/trust ...` (TR §6, §8).

`parse_command(text)` turns a message into a command value, or None for an ordinary
message. Parsing never raises; a malformed command is still that command (so its text
never reaches the agent), carrying a `usage` message instead of its arguments.
"""

from __future__ import annotations

import hashlib
import re

import attrs

from trust._model import TRUST_OPERATIONS, CommandKind

PUBLIC_INVITE_CODES = frozenset({"OPENONION", "BETA2024"})
"""Invite codes published by connectonion; never accepted in a policy (T41)."""

TRUST_OPS = tuple(op for op in TRUST_OPERATIONS if op != "audit")
"""`/trust` operations taking a client id; `audit` and `help` take it optionally or not."""

_PAY_REF = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_LEVELS = ("stranger", "contact", "whitelist")
#: The levels each command moves to, as `/trust help` lists them (one step at a time).
_TARGETS = {"promote": "contact|whitelist", "demote": "contact|stranger"}
_TRUST_USAGE = (
    "usage: /trust promote ID contact|whitelist | demote ID contact|stranger | "
    "block ID REASON | unblock ID | admin set ID | admin remove ID | level ID | audit [ID] | help"
)


def canonical_invite_code(code: str) -> str:
    """An invite code without spaces or `-`, upper-cased (§6, C11)."""
    return re.sub(r"[\s\-]", "", code).upper()


def invite_code_digest(code: str) -> str:
    """Hex SHA-256 of the canonical code: the only form in which codes are stored."""
    return hashlib.sha256(canonical_invite_code(code).encode("utf-8")).hexdigest()


@attrs.frozen(repr=False)
class InviteCommand:
    """`/invite CODE`; `code` is canonical, None when missing (bare `/invite`)."""

    code: str | None
    kind: CommandKind = CommandKind.INVITE

    def __repr__(self) -> str:
        # The code is a secret: keep it out of logs and tracebacks (T23).
        return f"InviteCommand(code={'<redacted>' if self.code else None})"


@attrs.frozen
class PayCommand:
    """`/pay REFERENCE`; `reference` is None with a `usage` message when malformed."""

    reference: str | None
    usage: str | None = None
    kind: CommandKind = CommandKind.PAY


@attrs.frozen
class TrustCommand:
    """`/trust OP ...` from the sender; `usage` is set when the arguments are malformed.

    `op` is an operation name of §8 (`promote`, `admin/set`, `audit`, `help`, ...);
    `client` is the typed id, still to be canonicalised by the engine.
    """

    op: str
    client: str | None = None
    level: str | None = None
    reason: str | None = None
    usage: str | None = None
    kind: CommandKind = CommandKind.TRUST


Command = InviteCommand | PayCommand | TrustCommand


def _word(token: str) -> str:
    # `/invite@mybot` is how Telegram addresses one bot in a group.
    return token.split("@", 1)[0].lower()


def parse_command(text: str | None) -> Command | None:
    """The trust command in a message's text, or None for an ordinary message."""
    if not text:
        return None
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    head, *tail = stripped.split(None, 1)
    rest = tail[0].strip() if tail else ""
    word = _word(head)
    if word == "/invite":
        code = canonical_invite_code(rest)
        return InviteCommand(code=code or None)
    if word == "/pay":
        if not rest:
            return PayCommand(reference=None, usage="usage: /pay REFERENCE")
        if not _PAY_REF.fullmatch(rest):
            return PayCommand(
                reference=None,
                usage="usage: /pay REFERENCE (1-128 of A-Z a-z 0-9 _ . : -)",
            )
        return PayCommand(reference=rest)
    if word == "/trust":
        return _parse_trust(rest.split())
    return None


def _parse_trust(args: list[str]) -> TrustCommand:
    if not args:
        return TrustCommand(op="help")
    op = args[0].lower()
    rest = args[1:]
    if op == "help":
        return TrustCommand(op="help")
    if op == "admin":
        sub = rest[0].lower() if rest else ""
        if sub in ("set", "remove") and len(rest) == 2:
            return TrustCommand(op=f"admin/{sub}", client=rest[1])
        return TrustCommand(op="admin", usage="usage: /trust admin set ID | admin remove ID")
    if op in ("promote", "demote"):
        if len(rest) == 2 and rest[1].lower() in _LEVELS:
            return TrustCommand(op=op, client=rest[0], level=rest[1].lower())
        return TrustCommand(op=op, usage=f"usage: /trust {op} ID {_TARGETS[op]}")
    if op == "block":
        if len(rest) >= 2:
            return TrustCommand(op=op, client=rest[0], reason=" ".join(rest[1:]))
        return TrustCommand(op=op, usage="usage: /trust block ID REASON")
    if op in ("unblock", "level"):
        if len(rest) == 1:
            return TrustCommand(op=op, client=rest[0])
        return TrustCommand(op=op, usage=f"usage: /trust {op} ID")
    if op == "audit":
        if len(rest) <= 1:
            return TrustCommand(op=op, client=rest[0] if rest else None)
        return TrustCommand(op=op, usage="usage: /trust audit [ID]")
    return TrustCommand(op=op, usage=_TRUST_USAGE)
