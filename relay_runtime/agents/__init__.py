"""Agents that ship with relay-runtime: ``echo`` and ``openai_chat``.

An agent is any ``async def (turn) -> str | None``; a returned string is sent with
``turn.reply``. Each is imported on first use: ``--agent relay_runtime.agents:echo`` does
not load ``openai_chat`` and its HTTP client (a gateway's start-up time).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay_runtime.agents._echo import echo as echo
    from relay_runtime.agents._openai_chat import openai_chat as openai_chat

__all__ = ["echo", "openai_chat"]

_HOMES = {
    "echo": "relay_runtime.agents._echo",
    "openai_chat": "relay_runtime.agents._openai_chat",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'relay_runtime.agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
