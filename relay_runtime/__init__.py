"""relay-runtime: a trio-native runtime that lets a chat agent live behind a relay connector.

The public surface (architecture §3)::

    gateway = await nursery.start(run_gateway, GatewayConfig(relay_url=...), agent)
"""

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
