"""Authenticating a ``/relay`` upgrade: bearer token -> gateway id, or why not.

The token's payload is the gateway id. Like the real connector, we read that payload
(:func:`protocol.auth.token_payload_unverified`) to
choose the gateway's secret list (rotation: primary first, then secondary), then verify the
whole token with :func:`protocol.auth.verify_token`. A token whose signature is good but
whose expiry has passed is reported as ``expired`` so the connector can close 4401
``expired`` (RC §6.5). Pure: the clock and the secret lookup are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import attrs

from protocol.auth import token_payload_unverified, verify_token

__all__ = ["UpgradeAuth", "authenticate", "bearer_token"]

RejectReason = Literal[
    "missing", "malformed", "unknown_gateway", "unauthorized", "expired", "revoked"
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
) -> UpgradeAuth:
    """Check ``token`` against the secrets of the gateway it names.

    ``secrets_for(gateway_id)`` returns that gateway's verify list, or ``None`` if the
    gateway is unknown. A revoked gateway is refused even with a valid token.
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
        if is_revoked(gateway_id):
            return UpgradeAuth(gateway_id, "revoked")
        return UpgradeAuth(gateway_id)
    # now=0 skips the expiry check: a token that verifies then is genuine but aged out.
    if verify_token(token, secrets, now=0) == gateway_id:
        return UpgradeAuth(gateway_id, "expired")
    return UpgradeAuth(None, "unauthorized")
