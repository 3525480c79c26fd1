"""What the supervisor reads and reports: its config fields, its counters, its refusal line.

Kept apart from :mod:`relay_runtime._supervisor` so that module holds the loop only.
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs

from protocol._events import Identity
from protocol._lifecycle import CredentialsRefused


class RelayConfig(Protocol):
    """The :class:`relay_runtime.config.GatewayConfig` fields the supervisor reads.

    Every member is a read-only property, so a frozen attrs class satisfies it.
    """

    @property
    def relay_url(self) -> str | None: ...

    @property
    def gateway_id(self) -> str | None: ...

    @property
    def secret(self) -> str | None: ...

    @property
    def max_frame_bytes(self) -> int: ...

    @property
    def handshake_timeout_s(self) -> float: ...

    @property
    def outbound_timeout_s(self) -> float: ...

    @property
    def idle_ack_timeout_s(self) -> float: ...

    @property
    def ping_interval_s(self) -> float: ...

    @property
    def ping_timeout_s(self) -> float: ...

    @property
    def backoff_base_s(self) -> float: ...

    @property
    def backoff_cap_s(self) -> float: ...

    @property
    def stable_after_s(self) -> float: ...

    @property
    def identities(self) -> tuple[Identity, ...]:
        """The ordered identity set, first = primary."""


@attrs.define
class SupervisorStats:
    """Counters for status pages and tests."""

    dials: int = 0
    dial_failures: int = 0
    handshakes: int = 0
    drops: int = 0
    frames_in: int = 0
    frames_out: int = 0
    malformed_frames: int = 0
    inbound_stalls: int = 0
    inbound_stalled_frames: int = 0
    last_backoff_s: float | None = None
    last_close: tuple[int, str] | None = None


def log_credentials_refused(
    logger: logging.Logger, gateway_id: str, action: CredentialsRefused
) -> None:
    """The one ERROR line for a streak of refused dials (RC §6.5), with what to check."""
    then = (
        "exiting (--exit-on-refused)"
        if action.exiting
        else f"still retrying; reported again after {2 * action.refusals} refusals"
    )
    logger.error(
        "relay: the connector refuses these credentials: %d dials in a row refused "
        "(HTTP 401 / close 4401) without a handshake for gateway id %s; check that %s "
        "is enrolled (relay-runtime enroll) or provisioned (relay-runtime provision) "
        "with this connector and that GATEWAY_RELAY_SECRET is its current secret; %s",
        action.refusals,
        gateway_id,
        gateway_id,
        then,
        extra={"event": "credentials_refused", "refusals": action.refusals},
    )
