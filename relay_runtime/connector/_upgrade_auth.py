"""Authenticating a ``/relay`` upgrade: bearer token -> gateway id, or why not.

The token's payload is the gateway id. Like the real connector, we read that payload
(:func:`protocol._auth.token_payload_unverified`) to
choose the gateway's secret list (rotation: primary first, then secondary), then verify the
whole token with :func:`protocol._auth.verify_token`. A token whose signature is good but
whose expiry has passed is reported as ``expired`` so the connector can close 4401
``expired`` (RC §6.5). Pure: the clock and the secret lookup are passed in.

Lifetime policy (ours, not the contract's): ``protocol._auth`` accepts ``exp=0`` ("never
expires") and any future expiry, because the frozen cross-language vectors use them. A
connector should not: a leaked token that never expires is a permanent credential. So
:func:`authenticate` refuses, with ``max_lifetime_s`` set, a genuine token whose expiry is
``0`` (``no_expiry``) or lies more than ``max_lifetime_s`` after ``now`` (``lifetime``).
The gateway mints 300 s tokens; the default of 600 s leaves room for clock skew.
``max_lifetime_s=None`` accepts legacy tokens as ``protocol._auth`` does.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Final, Literal

import attrs

from protocol._auth import token_payload_unverified, verify_token

#: The longest a token may still live when it is presented, by default (seconds).
DEFAULT_MAX_TOKEN_LIFETIME_S: Final = 600.0

RejectReason = Literal[
    "missing",
    "malformed",
    "unknown_gateway",
    "unauthorized",
    "expired",
    "revoked",
    "no_expiry",
    "lifetime",
]


@attrs.frozen
class UpgradeAuth:
    """The outcome of authenticating one upgrade.

    ``gateway_id`` is set when the token verified (and also, for a ``revoked`` or ``expired``
    reject, naming whose token it was); ``reject`` is ``None`` on success.
    """

    gateway_id: str | None
    reject: RejectReason | None = None

    @property
    def ok(self) -> bool:
        """Whether the upgrade may proceed as ``gateway_id``."""
        return self.reject is None

    @property
    def close_reason(self) -> str:
        """The reason text for a 4401 close: ``expired`` for an aged-out token."""
        return "expired" if self.reject == "expired" else "unauthorized"


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of the first ``Authorization: Bearer`` header, ``None`` if there is none."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


def authenticate(
    token: str | None,
    secrets_for: Callable[[str], Sequence[str] | None],
    *,
    now: float,
    is_revoked: Callable[[str], bool] = lambda _gid: False,
    max_lifetime_s: float | None = DEFAULT_MAX_TOKEN_LIFETIME_S,
) -> UpgradeAuth:
    """Check ``token`` against the secrets of the gateway it names.

    ``secrets_for(gateway_id)`` returns that gateway's verify list, or ``None`` if the
    gateway is unknown. A revoked gateway is refused even with a valid token. With
    ``max_lifetime_s`` set, a genuine token that never expires or expires more than that
    many seconds after ``now`` is refused (see the module docstring).
    """
    if token is None:
        return UpgradeAuth(None, "missing")
    gateway_id = token_payload_unverified(token)
    if gateway_id is None:
        return UpgradeAuth(None, "malformed")
    secrets = secrets_for(gateway_id)
    if not secrets:
        return UpgradeAuth(None, "unknown_gateway")
    if verify_token(token, secrets, now=now) == gateway_id:
        if max_lifetime_s is not None:
            exp = _verified_expiry(token)
            if exp == 0:
                return UpgradeAuth(gateway_id, "no_expiry")
            if exp - now > max_lifetime_s:
                return UpgradeAuth(gateway_id, "lifetime")
        if is_revoked(gateway_id):
            return UpgradeAuth(gateway_id, "revoked")
        return UpgradeAuth(gateway_id)
    # now=0 skips the expiry check: a token that verifies then is genuine but aged out.
    if verify_token(token, secrets, now=0) == gateway_id:
        return UpgradeAuth(gateway_id, "expired")
    return UpgradeAuth(None, "unauthorized")


def _verified_expiry(token: str) -> int:
    """The ``exp`` of a token that :func:`~protocol._auth.verify_token` has just accepted.

    Only for verified tokens: their text is canonical base64url of ``payload:exp:sig`` with
    ``exp`` at most 19 digits, so this cannot fail.
    """
    text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    return int(text.rsplit(":", 2)[-2])
