"""Gateway configuration: one frozen :class:`GatewayConfig`, loaded with one precedence rule.

Every setting of RC §10 has a field here (snake case, the relay URL as ``relay_url``). A value
comes from, in order: an explicit argument, the environment (``GATEWAY_RELAY_<NAME>``,
``RELAY_TRUST``, ``RELAY_STATE_DIR``), ``<state dir>/relay.env`` (written by ``enroll``; the
process environment wins over it), the YAML config file (``gateway.relay_<name>`` and the
``platforms.relay.*`` spellings), then the default. An empty value counts as unset.

A bad value raises :class:`ConfigError` naming the variable or key and what is wrong with the
value, secrets shown as ``<hidden>``; there is no silent fallback except for the two
*degrade* settings (``GATEWAY_RELAY_BOT_IDS`` and ``<PLATFORM>_ALLOW_BOTS``), which log a
WARNING and fall back to empty/false.
"""

from __future__ import annotations

from relay_runtime.config._gateway import GatewayConfig as GatewayConfig
from relay_runtime.config._gateway import warn_if_plain_text as warn_if_plain_text
from relay_runtime.config._sources import read_env_file as read_env_file
from relay_runtime.config._values import ENV_FILE_NAME as ENV_FILE_NAME
from relay_runtime.config._values import HIDDEN as HIDDEN
from relay_runtime.config._values import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from relay_runtime.config._values import MAX_CONFIG_DEPTH as MAX_CONFIG_DEPTH
from relay_runtime.config._values import BotIdEntry as BotIdEntry
from relay_runtime.config._values import ConfigError as ConfigError
from relay_runtime.config._values import bool_word as bool_word
from relay_runtime.config._values import mask as mask
from relay_runtime.config._values import metrics_address as metrics_address
from relay_runtime.config._values import string_list as string_list
from relay_runtime.config._vars import default_state_dir as default_state_dir

__all__ = [
    "HIDDEN",
    "BotIdEntry",
    "ConfigError",
    "GatewayConfig",
    "bool_word",
    "default_state_dir",
    "mask",
    "metrics_address",
    "read_env_file",
    "string_list",
    "warn_if_plain_text",
]
