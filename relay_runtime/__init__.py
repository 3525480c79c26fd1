"""relay-runtime: a trio-native runtime that lets a chat agent live behind a relay connector.

The public surface (AR §3)::

    gateway = await nursery.start(run_gateway, GatewayConfig(relay_url=...), agent)

The names are imported on first use, so that ``python -m relay_runtime`` can install its
signal handling before anything heavy (trio, the gateway) is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.results import SendResult as SendResult
    from relay_runtime.config import ConfigError as ConfigError
    from relay_runtime.config import GatewayConfig as GatewayConfig
    from relay_runtime.errors import RelayDisabled as RelayDisabled
    from relay_runtime.gateway import Gateway as Gateway
    from relay_runtime.gateway import run_gateway as run_gateway
    from relay_runtime.turn import Turn as Turn

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "RelayDisabled",
    "SendResult",
    "Turn",
    "run_gateway",
]

_HOMES = {
    "ConfigError": "relay_runtime.config",
    "Gateway": "relay_runtime.gateway",
    "GatewayConfig": "relay_runtime.config",
    "RelayDisabled": "relay_runtime.errors",
    "SendResult": "protocol.results",
    "Turn": "relay_runtime.turn",
    "run_gateway": "relay_runtime.gateway",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'relay_runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
