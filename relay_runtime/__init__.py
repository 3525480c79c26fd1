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
    from protocol._results import SendResult as SendResult
    from relay_runtime._cli.serving import serve_until_signalled as serve_until_signalled
    from relay_runtime._errors import RelayDisabled as RelayDisabled
    from relay_runtime._gateway import AdmitAll as AdmitAll
    from relay_runtime._gateway import Gateway as Gateway
    from relay_runtime._gateway import run_gateway as run_gateway
    from relay_runtime._logs import configure_logging as configure_logging
    from relay_runtime._logs import reset_logging as reset_logging
    from relay_runtime._outbound import OutboundRouter as OutboundRouter
    from relay_runtime._transport import Dialer as Dialer
    from relay_runtime._turn import Turn as Turn
    from relay_runtime._websocket import WebSocketClient as WebSocketClient
    from relay_runtime._websocket import wrap_client_stream as wrap_client_stream
    from relay_runtime.config import ConfigError as ConfigError
    from relay_runtime.config import GatewayConfig as GatewayConfig

__all__ = [
    "AdmitAll",
    "ConfigError",
    "Dialer",
    "Gateway",
    "GatewayConfig",
    "OutboundRouter",
    "RelayDisabled",
    "SendResult",
    "Turn",
    "WebSocketClient",
    "configure_logging",
    "reset_logging",
    "run_gateway",
    "serve_until_signalled",
    "wrap_client_stream",
]

_HOMES = {
    "AdmitAll": "relay_runtime._gateway",
    "ConfigError": "relay_runtime.config",
    "Dialer": "relay_runtime._transport",
    "Gateway": "relay_runtime._gateway",
    "GatewayConfig": "relay_runtime.config",
    "OutboundRouter": "relay_runtime._outbound",
    "RelayDisabled": "relay_runtime._errors",
    "SendResult": "protocol._results",
    "Turn": "relay_runtime._turn",
    "WebSocketClient": "relay_runtime._websocket",
    "configure_logging": "relay_runtime._logs",
    "reset_logging": "relay_runtime._logs",
    "run_gateway": "relay_runtime._gateway",
    "serve_until_signalled": "relay_runtime._cli.serving",
    "wrap_client_stream": "relay_runtime._websocket",
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
