"""What the WebSocket side of the connector needs from the HTTP control plane.

``relay_runtime.connector._control_plane`` (written separately) keeps the gateways it has
provisioned or enrolled: their secrets, declared relevance policies and wake URLs, and can
poke a wake URL. The WebSocket server only needs the shapes below, so either side can be
built and tested alone; any object with these methods fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ControlPlaneLike(Protocol):
    """The registry the control plane fills: secrets, policies, wake URLs per gateway."""

    def secrets_for(self, gateway_id: str) -> Sequence[str] | None:
        """The gateway's verify list (primary first), or ``None``/empty if unknown."""
        ...

    def policy_for(self, gateway_id: str, platform: str) -> object:
        """The relevance policy the gateway declared for ``platform``, or ``None``."""
        ...

    def wake_url_for(self, gateway_id: str, instance_id: str | None) -> str | None:
        """The wake URL registered for that gateway (instance), or ``None``."""
        ...


class WakePokerLike(Protocol):
    """Sends the payload-free ``GET <wakeUrl>`` (best effort; failures are swallowed)."""

    async def poke(self, key: str, url: str) -> object:
        """Poke ``url`` for instance ``key`` (the poker applies its own cooldown per key)."""
        ...
