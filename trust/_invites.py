"""Store invites (TR §6): creation, lookup by digest, revocation, and the failure limits.

Codes are 80 random bits in Crockford base32 (``XXXX-XXXX-XXXX-XXXX``) or an operator's
custom code of at least 12 characters. Only ``sha256(canonical code)`` is stored; the code
is returned once by :func:`create_invite` and never logged, listed or put in an error. A
use is consumed in the promotion's own transaction (``trust._store.onboarding``), by a guarded
update, so a ``max_uses: 1`` invite admits exactly one client. Failed attempts are counted
in the store's windows (per client, and for all clients together) by the engine before a
lookup's result is used.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final

import attrs

from trust._commands import canonical_invite_code, invite_code_digest
from trust._model import InviteCheck
from trust._policy import parse_duration
from trust._records import AuditTier, Invite, TrustOpError
from trust._store.base import ClientStore

CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_BITS: Final = 80
MIN_CUSTOM_CODE: Final = 12
MAX_USES: Final = 10_000
MAX_EXPIRY_S: Final = 365 * 86_400
DEFAULT_EXPIRY: Final = "7d"
MAX_FAILURES_PER_HOUR: Final = 5
"""After this many failed ``/invite`` attempts in an hour a client is refused unlooked (T50)."""
GLOBAL_FAILURES_PER_HOUR: Final = 20
"""The default deployment-wide window: failed ``/invite`` attempts in any hour, all clients
together, before every attempt is refused unlooked. A failed guess cannot be told apart by
the code it aimed at, so this one window guards every code, including short 0.6.5 policy
codes (issue 12); the default is sized for those."""
CLIENT_SCOPE_PREFIX: Final = "client:"
GLOBAL_SCOPE: Final = "global"


def generate_code() -> str:
    """A fresh 80-bit code, ``XXXX-XXXX-XXXX-XXXX`` in Crockford base32."""
    number = secrets.randbits(CODE_BITS)
    chars = [CROCKFORD[(number >> shift) & 31] for shift in range(CODE_BITS - 5, -1, -5)]
    text = "".join(chars)
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


def code_digest(code: str) -> bytes:
    """The stored form of a code: SHA-256 of its canonical spelling."""
    return bytes.fromhex(invite_code_digest(code))


def parse_expiry(text: str | int | None) -> int | None:
    """Seconds until expiry from ``90s``/``12h``/``7d``/``never`` (None), 1 s to 365 d."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "never"):
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        try:
            seconds = parse_duration(text, max_s=MAX_EXPIRY_S)
        except ValueError as exc:
            raise TrustOpError("invalid_expiry", f"expiry: {exc}, or 'never'") from None
    if not 1 <= seconds <= MAX_EXPIRY_S:
        raise TrustOpError("invalid_expiry", "expiry must be between 1 s and 365 d, or 'never'")
    return seconds


@attrs.frozen(repr=False)
class CreatedInvite:
    """A new invite's id and its code, shown once."""

    invite_id: str
    code: str
    invite: Invite

    def __repr__(self) -> str:
        return f"CreatedInvite(invite_id={self.invite_id!r}, code=<redacted>)"


async def create_invite(
    store: ClientStore,
    *,
    by: str,
    tier: AuditTier = "operator",
    max_uses: int = 1,
    expires_in: str | int | None = DEFAULT_EXPIRY,
    note: str | None = None,
    code: str | None = None,
) -> CreatedInvite:
    """Store a new invite and return it with its code (the only time the code is seen).

    ``tier`` ``admin`` needs ``by`` to be an admin. Over chat invites are never created.
    """
    if tier not in ("operator", "admin"):
        raise TrustOpError("not_authorized", "invites are created by the operator or an admin")
    if tier == "admin" and not (await store.get(by)).is_admin:
        await store.record_refusal(
            "invite/create", None, actor=by, tier=tier, reason="invite create needs an admin"
        )
        raise TrustOpError("not_authorized", f"{by} is not an admin; invite create needs one")
    if not 1 <= max_uses <= MAX_USES:
        raise TrustOpError("invalid_max_uses", f"max uses must be 1-{MAX_USES}")
    seconds = parse_expiry(expires_in)
    generated = code is None
    if code is None:
        code = generate_code()
    elif len(canonical_invite_code(code)) < MIN_CUSTOM_CODE:
        raise TrustOpError(
            "invalid_code", f"a custom invite code needs at least {MIN_CUSTOM_CODE} characters"
        )
    if note is not None and len(note) > 200:
        raise TrustOpError("invalid_note", "an invite note has at most 200 characters")
    now = store.clock()
    invite = Invite(
        invite_id=f"inv_{secrets.token_hex(4)}",
        code_sha256=code_digest(code),
        created_by=by,
        created_at=now,
        expires_at=None if seconds is None else now + seconds * 1000,
        max_uses=max_uses,
        uses=0,
        note=note,
        generated=generated,
    )
    if await store.find_invite(invite.code_sha256) is not None:
        raise TrustOpError("invalid_code", "that invite code is already in use")
    await store.insert_invite(invite, tier)
    return CreatedInvite(invite.invite_id, code, invite)


async def check_invite(store: ClientStore, code: str | None) -> InviteCheck:
    """Classify a typed code: ok with its invite id, or unknown/revoked/expired/exhausted."""
    return (await lookup_invite(store, code))[0]


async def lookup_invite(store: ClientStore, code: str | None) -> tuple[InviteCheck, bool]:
    """:func:`check_invite` and whether the code is a stored *generated* one (any status):
    an attempt that found an 80-bit code was not a guess at a weak one."""
    if not code:
        return InviteCheck(ok=False, reason="missing code"), False
    digest = code_digest(code)
    invite = await store.find_invite(digest)
    if invite is None or not hmac.compare_digest(invite.code_sha256, digest):
        return InviteCheck(ok=False, reason="unknown"), False
    status = invite.status(store.clock())
    if status != "active":
        return InviteCheck(ok=False, reason=status, invite_id=invite.invite_id), invite.generated
    return InviteCheck(ok=True, reason="", invite_id=invite.invite_id), invite.generated


async def revoke_invite(
    store: ClientStore, invite_id: str, *, by: str, tier: AuditTier = "operator"
) -> str:
    """Revoke an invite; returns the one-line answer."""
    if tier == "admin" and not (await store.get(by)).is_admin:
        await store.record_refusal(
            "invite/revoke",
            None,
            actor=by,
            tier=tier,
            reason=f"invite revoke of {invite_id} needs an admin",
        )
        raise TrustOpError("not_authorized", f"{by} is not an admin; invite revoke needs one")
    entry = await store.revoke_invite(invite_id, actor=by, tier=tier)
    return f"invite {invite_id} revoked (audit #{entry.id})"
