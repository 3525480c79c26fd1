"""Who may connect: secrets per gateway, revocation, expiry, and the upgrade check."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from protocol._connection import UNAUTHORIZED
from relay_runtime.connector._core import ConnectorCore
from relay_runtime.connector._records import Rejection
from relay_runtime.connector._upgrade_auth import UpgradeAuth, authenticate, bearer_token

log = logging.getLogger("relay.connector")


class Access(ConnectorCore):
    """Credentials of a :class:`~.server.ReferenceConnector`: secrets, revocation, expiry."""

    def secrets_for(self, gateway_id: str) -> Sequence[str] | None:
        """The verify list for ``gateway_id``: configured here, else from the registry."""
        configured = self._secrets.get(gateway_id)
        if configured:
            return configured
        if self.registry is not None:
            return self.registry.secrets_for(gateway_id)
        return None

    async def revoke(self, gateway_id: str) -> int:
        """Refuse ``gateway_id`` from now on and close its live sockets 4401 ``unauthorized``.

        Returns how many sockets were closed. :meth:`reinstate` undoes the refusal.
        """
        self._revoked.add(gateway_id)
        self._changed()
        return await self._close_all(gateway_id, UNAUTHORIZED, "unauthorized")

    def reinstate(self, gateway_id: str) -> None:
        """Accept ``gateway_id``'s tokens again after :meth:`revoke`."""
        self._revoked.discard(gateway_id)
        self._changed()

    async def expire(self, gateway_id: str) -> int:
        """Close ``gateway_id``'s live sockets 4401 ``expired`` (token aged out, not revoked)."""
        return await self._close_all(gateway_id, UNAUTHORIZED, "expired")

    def is_revoked(self, gateway_id: str) -> bool:
        """Whether :meth:`revoke` refused ``gateway_id``."""
        return gateway_id in self._revoked

    def _authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> UpgradeAuth:
        token = bearer_token(headers)
        if token is None and self.allow_unauthenticated:
            return UpgradeAuth("")
        return authenticate(
            token,
            self.secrets_for,
            now=self.clock(),
            is_revoked=self.is_revoked,
            max_lifetime_s=self.max_token_lifetime_s,
        )

    def _reject_record(self, gateway_id: str | None, reason: str, status: int, path: str) -> None:
        self._rejections.append(Rejection(gateway_id, reason, status, path))
        self._changed()
        log.info("refused an upgrade (%s, %d)", reason, status)

    async def _close_all(self, gateway_id: str, code: int, reason: str) -> int:
        conns = [c for c in self._connections if c.open and c.gateway_id == gateway_id]
        for conn in conns:
            await self._drop(conn, code, reason)
        return len(conns)
